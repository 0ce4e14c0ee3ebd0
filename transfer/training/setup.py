"""A run's pieces, built whole before its first step: data (checked), model, optimizer and
loaders, prepared by the accelerator."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import Config
from ..data.loaders import build_datasets, choose_cache, prepared_loaders, selection_loader, splits_line
from ..data.sources import Source
from ..files import check_space
from . import accel, checkpoint, rundir
from .average import WeightAverage
from .model import build_model, data_config, state_bytes, weights_loaded
from .objective import Objective
from .optim import build_optimizer, hold_in_tensors, parameter_groups
from .phases import Phases
from .step import Trainer


@dataclass(frozen=True)
class Setup:
    """A run's data, model, optimizer and loaders, prepared."""
    train_ds: object
    val_ds: object
    source: Source
    skipped: dict
    trainer: Trainer
    train_dl: object
    val_dl: object
    cached: bool
    checkpoint_size: int
    grad_accum_steps: int
    speed_settings: dict
    select_dl: object = None  # data.select_fraction's loader: the best epoch is chosen on it
    ema: WeightAverage | None = None  # train.ema_decay: the average of the trained module's weights
    weights: str = ""  # what the model started from (model.weights_loaded)

    @property
    def steps_per_epoch(self) -> int:  # per process, after sharding
        return math.ceil(len(self.train_dl) / self.grad_accum_steps)


def build(cfg: Config, accelerator: Accelerator, phases: Phases, out: Path | None = None,
          resume_from: Path | None = None) -> Setup:
    """Data (checked), model, optimizer and loaders, prepared. With `out`: a resumed run's data
    must be the checkpoint's, and a checkpoint and the final model must fit on the disk."""
    set_seed(cfg.train.seed)  # before the model's random init
    with phases("data"), accelerator.main_process_first():  # one download / cache build, the others reuse it
        train_ds, val_ds, source, skipped = build_datasets(cfg.data, cfg.subset_seed)
    for note in source.notes:
        accelerator.print(note)
    accelerator.print(splits_line(len(train_ds), len(val_ds), len(source.classes), skipped))
    if resume_from is not None:
        rundir.check_records(out, source.records())
    with phases("model"):
        model, head_note = build_model(cfg.model, source.classes)
        weights = weights_loaded(cfg.model, model)
        # on its device before the optimizer is built: torch before 2.4 makes fused Adam for CUDA tensors only
        model = model.to(accelerator.device, memory_format=torch.channels_last)
    if head_note:
        accelerator.print(head_note)
    normalization = data_config(model)
    cuda, processes = accel.use_cuda(), accel.local_processes()
    chosen, why = choose_cache(cfg.data, train_ds, val_ds, accelerator.device, cuda, processes)
    cached = accel.on_every_process(chosen, accelerator)  # one decision: near the limit, processes' memory differs
    if chosen and not cached:
        why = "data.cache=auto: not every process has the memory for the decoded set; loading images from files"
    if why:
        accelerator.print(why)
    settings = accel.backend_settings(accelerator.device.type == "cuda")
    accel.apply_backend_settings(settings)
    compile_optimizer = accel.compiles_optimizer(accelerator, cfg.optim.name)
    settings["fused_optimizer"] = not compile_optimizer and accel.fuse_optimizer(settings, cfg.optim.name,
                                                                             accelerator.mixed_precision)
    settings["compiled_optimizer"] = compile_optimizer  # (metrics.json: speed_settings)
    optimizer = build_optimizer(cfg.optim, parameter_groups(model, cfg.optim), fused=settings["fused_optimizer"])
    if compile_optimizer:
        hold_in_tensors(optimizer)
    checkpoint_size = checkpoint.checkpoint_bytes(model, cfg.optim.name)
    if out is not None and accelerator.is_main_process and cfg.train.epochs:
        check_space(out, checkpoint_size + state_bytes(model))  # a new checkpoint lands before the old goes; then model/
    model, optimizer = accelerator.prepare(model, optimizer)
    with phases("cache_decode") if cached else contextlib.nullcontext():
        train_dl, val_dl = prepared_loaders(cfg.data, cfg.train.batch_size, train_ds, val_ds, accelerator, cached,
                                            processes)
    select_dl = selection_loader(source.select, cfg.train.batch_size, cfg.data.num_workers, accelerator)
    objective = Objective(cfg.train.label_smoothing, cfg.data, len(source.classes), normalization)
    trainer = Trainer(model, optimizer, accelerator, objective, cfg.optim.grad_clip, cfg.train.frozen_bn == "train",
                      accel.compiled_step(accelerator, optimizer) if compile_optimizer else None)
    ema = None if cfg.train.ema_decay is None else WeightAverage(trainer.module, cfg.train.ema_decay,
                                                                  accelerator.num_processes)
    return Setup(train_ds, val_ds, source, skipped, trainer, train_dl, val_dl, cached, checkpoint_size,
                 cfg.train.grad_accum_steps, settings, select_dl, ema, weights)
