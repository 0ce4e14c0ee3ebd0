"""One training step and what it needs (shared by the epoch loop in loop.py and the LR range
test in lr_find.py, so that the test trains exactly as the run will)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator

from .accel import fit_ddp, uncompiled
from .model import set_backbone_frozen, train_mode
from .objective import Objective
from .optim import OneCycle
from .watch import Watch


@dataclass
class Trainer:
    """The prepared model and optimizer, the objective (loss, smoothing, mixing) and clipping.
    `model` is the one name of the model being trained: `set_phase` re-wraps it for DDP when the
    backbone is frozen or unfrozen (accel.fit_ddp)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Accelerator
    objective: Objective
    grad_clip: float | None
    train_bn: bool = False  # train.frozen_bn=train: batch norm trains on while the backbone is frozen
    optimizer_step: Callable[[], object] | None = None  # the optimizer's step compiled (accel.compiles_optimizer)

    @property
    def module(self) -> torch.nn.Module:
        """The model without any wrapper (DDP, torch.compile): what is saved and frozen. Not
        accelerate's default `keep_torch_compile=True`, which puts the bare model inside the
        compiled wrapper in place of its DDP (so several processes would train without DDP's
        gradient sync, and fail at the second step)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    @property
    def evaluation_model(self) -> torch.nn.Module:
        """The model as evaluation runs it: eager, without torch.compile's wrapper (a compiled
        evaluation would compile an inference graph of its own, and again for the last batch's
        smaller shape, at the first evaluation of each phase: compile time that a few eager
        passes over the validation set do not repay in a short run). DDP's wrapper is kept: its
        forward broadcasts the batch-norm statistics, so every process scores the same model."""
        return uncompiled(self.model)

    def set_phase(self, frozen: bool) -> None:
        """Backbone frozen (weights and batch-norm statistics) or not; training mode set."""
        set_backbone_frozen(self.module, frozen, self.train_bn)
        train_mode(self.module, frozen, self.train_bn)
        self.model = fit_ddp(self.accelerator, self.model, frozen)

    def step(self, batch: dict) -> torch.Tensor:
        """Forward, backward, clip and (at an accumulation boundary) an optimizer step; the loss."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            inputs, targets = self.objective.inputs(batch)
            loss = self.objective.loss(self.model(inputs), targets)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.grad_clip is not None:
                accelerator.clip_grad_value_(self.model.parameters(), self.grad_clip)  # unscales fp16 first
            if self.optimizer_step is None:
                self.optimizer.step()
            elif accelerator.sync_gradients:  # (as accelerate's wrapper, which it stands in for, steps)
                self.optimizer_step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss


@dataclass
class Loop:
    """What whole epochs need besides the trainer: the schedule, the watch (signals, non-finite
    losses, the budget clock), the record of each optimizer step's learning rate, and the weight
    average (train.ema_decay; timm's ModelEmaV3), updated after each optimizer step."""
    trainer: Trainer
    scheduler: OneCycle
    watch: Watch
    time_budget: bool = False
    lrs: list = field(default_factory=list)
    ema: object = None
    epoch_start_seconds: float = 0.0  # loader start to first batch, summed over epochs (the loop adds)
