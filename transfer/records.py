"""What a finished run leaves for its readers, typed, without torch: the report, the sweep, the
demo and the model card read runs through `load_run(folder)` alone, cheaply, and a key renamed
on one side fails loudly on the other.

    folder/metrics.json   RunMetrics (written last: a run is finished when it exists)
    folder/config.yaml    the resolved settings (`--config folder/config.yaml` reruns it)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import flat_config
from .errors import DataError
from .files import write_json

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json. Accuracies are fractions; `history` has one record per evaluated epoch:
    epoch, lr, train_loss, val_loss, val_acc, frozen, epoch_seconds, train_images_per_s."""
    history: list[dict]
    best_val_acc: float  # the validation accuracy of the best epoch (chosen as best_chosen_on says)
    best_epoch: float
    final_val_acc: float  # after the fixed schedule: the headline
    final_val_loss: float
    val_samples: int
    train_seconds: float  # training and per-epoch evaluation
    best_chosen_on: str = "val"  # "select": the epoch was chosen on data.select_fraction's images
    final_val_ece: float | None = None  # expected calibration error, 15 bins (training.metrics)
    final_ema_val_acc: float | None = None  # train.ema_decay: the weight average's, at the last epoch
    per_class_val_acc: dict = field(default_factory=dict)  # class -> accuracy (None without images)
    val_subsets: dict = field(default_factory=dict)  # e.g. unseen_by_imagenet: {prefix, samples, val_acc}
    num_processes: int = 1
    device: str = "cpu"
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
    lr_find: dict | None = None  # the LR range test's record (optim.lr=find)
    objective: dict = field(default_factory=dict)
    speed_settings: dict = field(default_factory=dict)
    phase_seconds: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    @property
    def epochs(self) -> float:
        return self.history[-1]["epoch"] if self.history else 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict, where: Path | str = METRICS_FILE) -> "RunMetrics":
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in raw]
        if unknown or missing:
            detail = "; ".join(part for part in (f"unknown keys {', '.join(unknown)}" if unknown else "",
                                                 f"missing keys {', '.join(missing)}" if missing else "") if part)
            raise DataError(f"{where} is not a metrics file of this version ({detail}); rerun that run, or move it "
                            f"out of the folder")
        return cls(**raw)


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


def read_metrics(folder: Path) -> RunMetrics:
    path = Path(folder) / METRICS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read ({e}); rerun that run, or move it out of the folder") from None
    return RunMetrics.from_json(raw, path)


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
