"""Typed, strict settings: frozen dataclasses mirrored by the YAML configs.

`load_config(path, overrides)` is the only way in. An unknown key, a wrong type or an invalid
value raises `ConfigError` with one line naming the key and the valid choices; the CLI turns
that into exit code 2. Derived values (steps per epoch, device, ...) are never stored here.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    # null: the image folder at `root`; else a `datasets` source: Hub id, parquet/arrow folder, save_to_disk folder
    dataset: Optional[str] = None
    dataset_config: Optional[str] = None  # the Hub config (e.g. "160px")
    train_split: str = "train"
    val_split: Optional[str] = None  # null: the first of validation, val, valid, test
    image_column: Optional[str] = None  # null: the one Image column
    label_column: Optional[str] = None  # null: the one ClassLabel column (or one named label/labels)
    val_fraction: Optional[float] = None  # hold out this fraction of train when the source has no validation split
    select_fraction: Optional[float] = None  # hold out this fraction of train to choose the best epoch on
    split_seed: int = 0  # seeds a held-out validation split (data.val_fraction): every arm and seed scores the same
    # seeds the labelled subset and the selection split; null: train.seed (each seed its own draw, the same for both
    # arms of a seed, so the interval covers which images were labelled); an integer: one draw for every seed
    subset_seed: Optional[int] = None
    train_per_class: Optional[int] = None  # at most N training images per class (nested subsets, drawn by subset_seed)
    train_samples: Optional[int] = None  # N training images in all, stratified by class (nested; VTAB-1k: 1000)
    root: str = "data/imagewoof2-160"  # folder with train/ and val/, one subfolder per class
    url: Optional[str] = None  # archive fetched when `root` does not exist; null never fetches
    sha256: Optional[str] = None  # checksum of the archive at `url`, checked when given
    image_size: int = 160
    hflip: bool = True  # off for data where mirroring changes the class (digits, text)
    num_workers: int = 4
    cache: Literal["auto", "none", "memory"] = "auto"  # memory: decode once, crop on the device; auto: on a GPU
    keep_decoded: bool = True  # with the cache: keep the decoded images on disk for later runs of the same data
    skip_bad_images: bool = False  # false: a corrupt image is an error naming the file
    check_images: bool = True  # decode every image once before training (cached by datasets); false skips it
    # Regularisers for long or from-scratch runs (off by default: the article's recipe)
    mixup: float = 0.0  # mixup's Beta alpha; 0 = off
    cutmix: float = 0.0  # cutmix's Beta alpha; 0 = off (with both on, each batch picks one, half and half)
    mixup_prob: float = 1.0  # share of batches mixed
    mixup_off_epoch: Optional[int] = None  # train epochs from this one on (0-based) unmixed; null: mix throughout

    def __post_init__(self):
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")
        _check(self.train_per_class is None or self.train_per_class >= 1, "data.train_per_class",
               self.train_per_class, "an integer >= 1, or null for all")
        _check(self.train_samples is None or self.train_samples >= 1, "data.train_samples", self.train_samples,
               "an integer >= 1, or null for all")
        _check(self.train_samples is None or self.train_per_class is None, "data.train_samples", self.train_samples,
               "null when data.train_per_class is set (one subset at a time)")
        _check(self.val_fraction is None or 0 < self.val_fraction < 1, "data.val_fraction", self.val_fraction,
               "a fraction between 0 and 1, or null")
        _check(self.select_fraction is None or 0 < self.select_fraction < 1, "data.select_fraction",
               self.select_fraction, "a fraction between 0 and 1, or null")
        _check(self.check_images or not self.skip_bad_images, "data.check_images", self.check_images,
               "true when data.skip_bad_images=true (bad images are found by the check)")
        for key in ("mixup", "cutmix"):
            _check(getattr(self, key) >= 0, f"data.{key}", getattr(self, key), "a Beta alpha >= 0 (0 = off)")
        _check(0 <= self.mixup_prob <= 1, "data.mixup_prob", self.mixup_prob, "a probability in [0, 1]")
        _check(self.mixup_off_epoch is None or self.mixup_off_epoch >= 0, "data.mixup_off_epoch",
               self.mixup_off_epoch, "an epoch number >= 0, or null")
        _check(self.sha256 is None or (len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256)),
               "data.sha256", self.sha256, "64 lower-case hex digits, or null")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet50"  # any timm model name
    pretrained: bool = True  # ImageNet weights (downloaded by timm unless weights_file is set)
    weights_file: Optional[str] = None  # local .safetensors / state dict / model/ folder; used when pretrained
    # the weights file's classifier: auto keeps it only when it comes with label names equal to
    # the data's classes (same order); new: always a fresh head; keep: always keep it
    head: Literal["auto", "new", "keep"] = "auto"
    export: Literal["raw", "ema"] = "raw"  # what model/ holds and the final scores are of: ema needs train.ema_decay


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Union[float, Literal["find"]] = 1.0e-4  # one-cycle peak learning rate; find: an LR range test picks it
    weight_decay: float = 1.0e-4
    momentum: float = 0.9  # sgd only
    grad_clip: Optional[float] = 0.1  # clip gradients by value; null = off
    # layer-wise LR decay: the head gets optim.lr, each of timm's block groups below it this times the one above
    layer_decay: Optional[float] = None
    # optim.lr=find's pick on the range test's curve (training.lr_find.RULES; measured in the README)
    lr_find_rule: Literal["valley", "steep", "minimum"] = "minimum"

    def __post_init__(self):
        _check(self.lr == "find" or self.lr > 0, "optim.lr", self.lr, "a number > 0, or find")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "a number in [0, 1)")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", self.grad_clip,
               "a number > 0, or null for no clipping")
        _check(self.layer_decay is None or 0 < self.layer_decay <= 1, "optim.layer_decay", self.layer_decay,
               "a number in (0, 1], or null for one learning rate for every layer")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # 0 = evaluate the model as loaded, no training
    batch_size: int = 64  # per process
    # backbone frozen (weights and batch-norm statistics) for these first epochs; all: every epoch (a linear probe)
    freeze_epochs: Union[int, Literal["all"]] = 0
    # batch norm while the backbone is frozen: eval = its statistics and weights fixed; train = both
    # keep training (fastai's train_bn)
    frozen_bn: Literal["eval", "train"] = "eval"
    ema_decay: Optional[float] = None  # an average of the weights (timm's ModelEmaV3, with warm-up); null = off
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU, no on CPU
    grad_accum_steps: int = 1
    seed: int = 0
    label_smoothing: float = 0.0  # cross-entropy against (1 - e) one-hot + e / classes; validation loss stays plain
    resume: Optional[str] = None  # null, "auto" (newest checkpoint in output_dir) or a checkpoint path
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch's is always written)
    time_budget_s: Optional[float] = None  # stop training after this many seconds; LR schedule sized to fit
    compile: bool = False  # torch.compile the model and the optimizer step (minutes of compiling on first use)
    # torch.compile's mode: reduce-overhead replays forward, backward and the update as CUDA graphs (on a GPU)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    log_with: Literal["none", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"] = "none"

    def __post_init__(self):
        _check(self.epochs >= 0, "train.epochs", self.epochs, "an integer >= 0 (0 = evaluate only)")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.freeze_epochs == "all" or self.freeze_epochs >= 0, "train.freeze_epochs", self.freeze_epochs,
               "an integer >= 0, or all")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "train.ema_decay", self.ema_decay,
               "a number in (0, 1), e.g. 0.999, or null for no weight average")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "an integer >= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.time_budget_s is None or self.time_budget_s > 0, "train.time_budget_s",
               self.time_budget_s, "a number of seconds > 0, or null")

    @property
    def frozen_epochs(self) -> int:
        """How many of the first epochs train with the backbone frozen."""
        return self.epochs if self.freeze_epochs == "all" else self.freeze_epochs


@dataclass(frozen=True)
class Config:
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _check(self.model.export == "raw" or self.train.ema_decay is not None, "model.export", self.model.export,
               "raw unless train.ema_decay is set (there are no averaged weights to export)")

    @property
    def subset_seed(self) -> int:
        """What draws the labelled subset and the selection split: data.subset_seed, or train.seed."""
        return self.train.seed if self.data.subset_seed is None else self.data.subset_seed


def _check(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {valid}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (optional) and apply dotted `key=value` overrides typed as YAML values."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}: fix the syntax") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(raw).__name__}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and text.strip()[:1] not in ("'", '"'):
            value = text.strip()  # a path stays as typed: YAML would cut `data.root=/d/h #1` at the '#'
        _set_dotted(raw, key.strip(), value)
    return from_dict(raw)


def _set_dotted(tree: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[leaf] = value


def from_dict(raw: dict, cls=Config, prefix: str = "") -> Config:
    """Build a (nested) settings dataclass from plain data, strictly."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            where = f"in {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(f"unknown key {full!r}; valid keys {where}: {', '.join(names)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a section with keys: "
                                  f"{', '.join(f.name for f in dataclasses.fields(kind))}")
            kwargs[key] = from_dict(value, kind, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, kind)
    return cls(**kwargs)  # __post_init__ checks name their keys in full


def _coerce(key: str, value, kind):
    """Check `value` against a type hint; ints become floats, and '1e-4' strings become numbers."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        for kind in inner[:-1]:  # the first that fits (optim.lr: a number, else 'find')
            try:
                return _coerce(key, value, kind)
            except ConfigError:
                pass
        try:
            return _coerce(key, value, inner[-1])
        except ConfigError:
            if len(inner) == 1:
                raise
            raise ConfigError(f"{key}={value!r} is invalid: expected {' or '.join(map(_describe, inner))}") from None
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is invalid; choose one of: {', '.join(map(str, choices))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config type {kind} for {key}")
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {expected}")


def _describe(kind) -> str:
    if typing.get_origin(kind) is Literal:
        return " or ".join(map(str, typing.get_args(kind)))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}: dotted keys, as overrides name them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_config(tree: dict) -> dict:
    """Dotted keys with printable values ('null' for None), for trackers' hyper-parameter tables
    and the reports."""
    return {k: "null" if v is None else v for k, v in flatten(tree).items()}


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
