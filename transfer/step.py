"""One training step and what it needs (shared by the epoch loop in train.py and the LR range
test in lr_find.py, so that the test trains exactly as the run will)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from .objective import Objective
from .optim import OneCycle
from .watch import Watch


@dataclass
class Loop:
    """What a training step needs, in one place: the prepared model and optimizer, the objective
    (loss, smoothing, mixing), and, for whole epochs, the schedule, the watch and the LR record."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Accelerator
    objective: Objective
    grad_clip: float | None
    scheduler: OneCycle | None = None
    watch: Watch | None = None
    time_budget: bool = False
    lrs: list = field(default_factory=list)  # each optimizer step's learning rate


def train_step(loop: Loop, batch: dict) -> torch.Tensor:
    """Forward, backward, clip and (at an accumulation boundary) an optimizer step; the loss."""
    accelerator = loop.accelerator
    with accelerator.accumulate(loop.model):
        inputs, targets = loop.objective.inputs(batch)
        loss = loop.objective.loss(loop.model(inputs), targets)
        accelerator.backward(loss)
        if accelerator.sync_gradients and loop.grad_clip is not None:
            accelerator.clip_grad_value_(loop.model.parameters(), loop.grad_clip)  # unscales fp16 first
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
    return loss
