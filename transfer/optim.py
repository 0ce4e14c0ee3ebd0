"""Optimizer and the one-cycle schedule (pure: no Accelerator, no data)."""
from __future__ import annotations

import torch

from .config import OptimConfig


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """Adam with L2 weight decay as in the article; AdamW (decoupled decay) and SGD on request.
    Parameters without a gradient (a frozen backbone) are skipped by all three, decay included."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def build_scheduler(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    """One cycle over the whole run, stepped once per optimizer step (torch's defaults:
    30% warm-up from max_lr/25, cosine annealing to max_lr/25e4)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, total_steps))


def schedule_lrs(cfg: OptimConfig, total_steps: int) -> list[float]:
    """The learning rate at each optimizer step, as `build_scheduler` will set it."""
    probe = build_optimizer(cfg, [torch.zeros(1, requires_grad=True)])
    scheduler = build_scheduler(probe, cfg.lr, total_steps)
    lrs = [probe.param_groups[0]["lr"]]
    for _ in range(total_steps - 1):
        probe.step()
        scheduler.step()
        lrs.append(probe.param_groups[0]["lr"])
    return lrs
