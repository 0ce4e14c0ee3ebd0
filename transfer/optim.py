"""Optimizer and the one-cycle schedule (pure: no Accelerator, no data)."""
from __future__ import annotations

import math

import torch

from .config import OptimConfig

PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1.0e4  # torch's OneCycleLR defaults
MAX_MOMENTUM, BASE_MOMENTUM = 0.95, 0.85


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """Adam with L2 weight decay as in the article; AdamW (decoupled decay) and SGD on request.
    Parameters without a gradient (a frozen backbone) are skipped by all three, decay included."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def one_cycle(position: float, total_steps: int, max_lr: float) -> tuple[float, float]:
    """(lr, momentum) at a (possibly fractional) step position: torch's OneCycleLR formulas."""
    initial, final = max_lr / DIV_FACTOR, max_lr / DIV_FACTOR / FINAL_DIV_FACTOR
    warm_end, end = PCT_START * total_steps - 1, total_steps - 1
    if position <= warm_end:
        pct = position / warm_end
        return _cos(initial, max_lr, pct), _cos(MAX_MOMENTUM, BASE_MOMENTUM, pct)
    pct = (position - warm_end) / max(end - warm_end, 1e-12)
    return _cos(max_lr, final, pct), _cos(BASE_MOMENTUM, MAX_MOMENTUM, pct)


class OneCycle:
    """One cycle over the whole run, stepped once per optimizer step: 30% warm-up from max_lr/25,
    cosine annealing to max_lr/25e4, beta1 (or SGD momentum) cycled 0.95 -> 0.85 -> 0.95.

    With a time budget the position is the further of the step count and the fraction of the
    budget spent, so the cycle completes when the budget does, however fast training runs.
    Same values as torch.optim.lr_scheduler.OneCycleLR when there is no budget (tested).
    """

    def __init__(self, optimizer, max_lr: float, total_steps: int, time_budget_s: float | None = None):
        self.optimizer, self.max_lr = optimizer, max_lr
        self.total_steps = max(2, total_steps)
        self.time_budget_s = time_budget_s
        self.steps, self.elapsed = 0, 0.0
        self._apply()

    def position(self) -> float:
        position = float(self.steps)
        if self.time_budget_s:
            position = max(position, self.elapsed / self.time_budget_s * (self.total_steps - 1))
        return min(position, self.total_steps - 1)

    def _apply(self) -> None:
        lr, momentum = one_cycle(self.position(), self.total_steps, self.max_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            else:
                group["momentum"] = momentum

    def step(self, elapsed: float | None = None) -> None:
        """After an optimizer step; `elapsed` (seconds of the budget spent) must agree across processes."""
        self.steps += 1
        if elapsed is not None:
            self.elapsed = elapsed
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "elapsed": self.elapsed}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.elapsed = state["steps"], state["elapsed"]
        self._apply()
