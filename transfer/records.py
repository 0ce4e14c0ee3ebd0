"""What a finished run leaves for its readers, typed, without torch: the report, the sweep, the
demo and the model card read runs through `load_run(folder)` alone, cheaply, and a key renamed
on one side fails loudly on the other.

    folder/metrics.json   RunMetrics (written last: a run is finished when it exists)
    folder/config.yaml    the resolved settings (`--config folder/config.yaml` reruns it)
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import flat_config
from .errors import DataError
from .files import write_json

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
# Imagewoof's validation files named so come from ImageNet's own validation set; the others are
# ImageNet *training* images, which ImageNet-pretrained weights have already seen.
UNSEEN_PREFIX = "ILSVRC2012_val_"


class RecordError(ValueError):
    """A JSON record that does not fit its dataclass; the message names the key path."""


def typed(cls, raw, path: str = ""):
    """`raw` (parsed JSON) as an instance of `cls`, a dataclass whose fields may be dataclasses,
    lists, tuples, dicts or optionals of them: strictly, so a key renamed on one side fails here,
    naming it, instead of when a report reads it. (What is not a dataclass is taken as it is.)"""
    if raw is None:
        return None
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return typed(kinds[0], raw, path) if len(kinds) == 1 else raw
    if origin is list:
        return [typed(args[0], v, f"{path}[{i}]") for i, v in enumerate(raw)] if args else list(raw)
    if origin is tuple:
        return tuple(typed(args[0], v, f"{path}[{i}]") for i, v in enumerate(raw)) if args else tuple(raw)
    if origin is dict:
        return {k: typed(args[1], v, f"{path}.{k}") for k, v in raw.items()} if args else dict(raw)
    if not dataclasses.is_dataclass(cls):
        return raw
    if not isinstance(raw, dict):
        raise RecordError(f"{path or 'the file'} should be an object ({cls.__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if unknown or missing:
        where = f" in {path}" if path else ""
        raise RecordError("; ".join(part for part in (
            f"unknown keys {', '.join(unknown)}{where}" if unknown else "",
            f"missing keys {', '.join(missing)}{where}" if missing else "") if part))
    return cls(**{k: typed(hints[k], v, f"{path}.{k}" if path else k) for k, v in raw.items()})


def read_record(cls, path: Path, what: str):
    """The JSON file at `path` as `cls` (typed; `cls` may also be a function of the parsed JSON
    that returns the class); a file that cannot be read or does not fit is a DataError naming it
    and saying what to do."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read ({e}); rerun what wrote it, or move it out of the folder") from None
    try:
        return typed(cls if isinstance(cls, type) else cls(raw), raw)
    except RecordError as e:
        raise DataError(f"{path} is not {what} of this version ({e}); rerun what wrote it, or move it out of the "
                        f"folder") from None


@dataclass(frozen=True)
class EpochRecord:
    """One evaluated epoch: an entry of metrics.json's `history` (and of a checkpoint's)."""
    epoch: float  # epochs done: whole, or a fraction when a time budget ended the run mid-epoch
    lr: float  # the rate of the epoch's last optimizer step (the head's): the article's last_lr
    train_loss: float  # the loss optimised (label smoothing, mixing included), mean over the epoch's images
    val_loss: float  # plain cross-entropy, whatever training optimises
    val_acc: float
    epoch_seconds: float  # training and evaluation
    train_images_per_s: float
    frozen: bool = False  # the backbone was frozen (train.freeze_epochs)
    select_acc: float | None = None  # data.select_fraction: the selection split's
    select_loss: float | None = None
    ema_val_acc: float | None = None  # train.ema_decay: the weight average's
    ema_val_loss: float | None = None


@dataclass(frozen=True)
class LrFindRecord:
    """The LR range test (optim.lr=find): its curve and every rule's pick."""
    rule: str  # the rule used, in words (training.lr_find.RULES)
    suggested_lr: float  # the pick: the one-cycle peak the run trains with
    picks: dict[str, float]  # every rule's pick on this curve
    valley_lrs: list[float]  # where the longest falling stretch of the smoothed loss starts and ends
    lowest_loss_lr: float
    steps: int
    start_lr: float
    end_lr: float
    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json. Accuracies are fractions; `history` has one record per evaluated epoch."""
    history: list[EpochRecord]
    best_val_acc: float  # the validation accuracy of the best epoch (chosen as best_chosen_on says)
    best_epoch: float
    final_val_acc: float  # after the fixed schedule: the headline
    final_val_loss: float
    val_samples: int
    train_seconds: float  # training and per-epoch evaluation
    best_chosen_on: str = "val"  # "select": the epoch was chosen on data.select_fraction's images
    final_val_ece: float | None = None  # expected calibration error, 15 equal-mass bins (training.metrics)
    final_val_nll: float | None = None  # mean negative log-likelihood of the true class (nats)
    final_val_brier: float | None = None  # mean Brier score
    final_ema_val_acc: float | None = None  # train.ema_decay: the weight average's, at the last epoch
    per_class_val_acc: dict = field(default_factory=dict)  # class -> accuracy (None without images)
    val_subsets: dict = field(default_factory=dict)  # e.g. unseen_by_imagenet: {prefix, samples, val_acc}
    num_processes: int = 1
    device: str = "cpu"
    device_name: str | None = None  # the GPU's model ("NVIDIA H100 80GB HBM3"), or the device type (cpu)
    # a GPU run's peak memory held by torch's allocator (the main process's): what another run on the same
    # GPU cannot have (RUNS_PER_GPU); None on a CPU
    peak_device_memory_mb: float | None = None
    mixed_precision: str = "no"  # as resolved from `auto`
    steps_per_epoch: int = 0  # optimizer steps per epoch, per process
    optimizer_steps: int = 0
    startup_seconds: float = 0.0
    decoded_cache: bool = False
    stopped_by_time_budget: bool = False
    skipped_images: int = 0
    train_samples: int = 0
    resumes: list = field(default_factory=list)
    lr_per_step: list = field(default_factory=list)
    weights: str | None = None  # what the run started from: timm's architecture.tag, a file's name, or random
    peak_lr: float | None = None  # the one-cycle peak used (the head's): typed in, or found
    peak_lr_per_group: dict = field(default_factory=dict)  # optimizer group -> its peak (optim.layer_decay)
    lr_find: LrFindRecord | None = None  # the LR range test's record (optim.lr=find)
    objective: dict = field(default_factory=dict)
    speed_settings: dict = field(default_factory=dict)
    phase_seconds: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    @property
    def epochs(self) -> float:
        return self.history[-1].epoch if self.history else 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    metrics: RunMetrics
    settings: dict  # config.yaml, nested as in the YAML

    @property
    def flat_settings(self) -> dict:
        return flat_config(self.settings)


def is_finished(folder: Path) -> bool:
    return (Path(folder) / METRICS_FILE).is_file()


def last_error(folder: Path) -> str:
    """Why a run in `folder` did not finish: the last `error:` or `stopped:` line of its train.log
    (or its last line)."""
    log = Path(folder) / "train.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    found = [line for line in lines if line.startswith(("error: ", "stopped: "))]
    return found[-1] if found else (lines[-1] if lines else "no output")


def read_metrics(folder: Path) -> RunMetrics:
    return read_record(RunMetrics, Path(folder) / METRICS_FILE, "a metrics file")


def load_run(folder: Path) -> FinishedRun:
    """A finished run's metrics and settings; a broken file is a DataError naming it."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        settings = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path} cannot be read ({e}); rerun that run, or move it out of the folder") from None
    return FinishedRun(folder, read_metrics(folder), settings or {})


def write_metrics(folder: Path, metrics: RunMetrics) -> None:
    write_json(Path(folder) / METRICS_FILE, metrics.to_json())
