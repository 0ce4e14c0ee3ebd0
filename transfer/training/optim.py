"""Optimizer and the one-cycle schedule (pure: no Accelerator, no data)."""
from __future__ import annotations

import inspect
import math

import torch

from ..config import OptimConfig

PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1.0e4  # torch's OneCycleLR defaults
MAX_MOMENTUM, BASE_MOMENTUM = 0.95, 0.85


def build_optimizer(cfg: OptimConfig, params, fused: bool = False) -> torch.optim.Optimizer:
    """Adam with L2 weight decay as in the article; AdamW (decoupled decay) and SGD on request.
    Parameters without a gradient (a frozen backbone) are skipped by all three, decay included.
    The learning rate given here is a placeholder: the schedule (or the LR range test) sets it.
    `fused`: one kernel for the whole update (chosen on CUDA: accel.fuse_optimizer), where this
    torch's optimizer has one (SGD's came in torch 2.3); otherwise torch's default, and the
    argument is not passed at all (torch 2.1's SGD has none)."""
    lr = cfg.lr if isinstance(cfg.lr, float) else 1e-3
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.name]
    options = {"momentum": cfg.momentum, "nesterov": True} if cfg.name == "sgd" else {}
    if fused and "fused" in inspect.signature(kind).parameters:
        options["fused"] = True
    return kind(params, lr=lr, weight_decay=cfg.weight_decay, **options)


def parameter_groups(model: torch.nn.Module, cfg: OptimConfig):
    """What the optimizer updates: every parameter at one rate, or with `optim.layer_decay` timm's
    layer-wise groups (`timm.optim.param_groups_layer_decay`, over the model's `group_matcher`):
    each group's `lr_scale` is layer_decay ** (layers above it), the head's 1, and biases and norm
    weights get no weight decay (timm's rule for these groups). The schedule scales every group's
    whole cycle (peak, warm-up start, final value) by its `lr_scale`."""
    if cfg.layer_decay is None:
        return model.parameters()
    from timm.optim import param_groups_layer_decay  # (timm: imported with the model already)

    groups = param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    scales = sorted({g["lr_scale"] for g in groups})
    for g in groups:  # a name for each depth: layer_0 is the stem, the deepest scale 1.0 is the head
        depth = scales.index(g["lr_scale"])
        g["group_name"] = "head" if depth == len(scales) - 1 else f"layer_{depth}"
    return groups


def hold_in_tensors(optimizer) -> None:
    """Each group's learning rate and Adam's betas as 0-dim tensors of its own, on its parameters'
    device, for an optimizer step that is compiled (accel.compiles_optimizer): torch.compile guards
    on a float's exact value, so a rate that changes every step as a float would recompile every
    step; as a tensor it is an input of the compiled step (under reduce-overhead, of its CUDA
    graph), written in place by `set_rate`. float64: they hold the schedule's values exactly.
    A load of the optimizer's state (a checkpoint's, the LR range test's restore) brings the saved
    values, floats or tensors on the CPU: a post-hook holds them in tensors again."""
    _hold(optimizer)
    optimizer.register_load_state_dict_post_hook(_hold)


def _hold(optimizer) -> None:
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["lr"] = _tensor(group["lr"], device)
        if "betas" in group:
            group["betas"] = tuple(_tensor(beta, device) for beta in group["betas"])


def _tensor(value, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.device == device and value.dtype == torch.float64:
        return value
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def set_rate(group: dict, lr: float, momentum: float | None = None) -> None:
    """A group's learning rate and (when given) its beta1 or SGD momentum: written into the
    group's tensors in place where it holds them (hold_in_tensors), else as floats."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr
    if momentum is None:
        return
    if "betas" not in group:
        group["momentum"] = momentum
    elif isinstance(group["betas"][0], torch.Tensor):
        group["betas"][0].fill_(momentum)
    else:
        group["betas"] = (momentum, group["betas"][1])


def group_scales(optimizer) -> dict[str, float]:
    """Group name -> lr_scale (one group named "all" without layer decay)."""
    return {g.get("group_name", "all"): g.get("lr_scale", 1.0) for g in optimizer.param_groups}


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
    Same values as torch.optim.lr_scheduler.OneCycleLR without a budget (tested).

    With a time budget the cycle must end when the budget does, at any step time. Each step
    moves the position by `stride` (at least 1, so never past the step-count schedule); at each
    synced check `plan(elapsed)` projects how many steps the rest of the budget holds from the
    time per step so far (the first, warm-up step left out), moves the position to where a cycle
    of that many steps in all would be now, and sets the stride so that the last of them uses
    the final value.
    Between checks the schedule follows steps alone, so every process uses the same rate at every
    step. `finished` says the step at the final value has been taken: the run stops there.
    """

    def __init__(self, optimizer, max_lr: float, total_steps: int, time_budget_s: float | None = None):
        self.optimizer, self.max_lr = optimizer, max_lr
        self.total_steps = max(2, total_steps)
        self.time_budget_s = time_budget_s
        self.steps, self.elapsed = 0, 0.0
        self.next_position, self.stride = 0.0, 1.0
        self.warm = None  # (steps, elapsed) at the first plan: the first step pays for warm-up and is left out
        self._used = 0.0  # the position the last step used
        self._apply()

    @property
    def end(self) -> int:
        return self.total_steps - 1

    @property
    def finished(self) -> bool:
        return self.steps > 0 and self._used >= self.end

    def position(self) -> float:
        """Where the next optimizer step sits on the cycle."""
        return self.next_position

    def _apply(self) -> None:
        lr, momentum = one_cycle(self.next_position, self.total_steps, self.max_lr)
        self.last_lr = lr  # the schedule's own value: the head's rate
        for group in self.optimizer.param_groups:
            set_rate(group, lr * group.get("lr_scale", 1.0), momentum)  # the head's (scale 1) is the schedule's

    def step(self) -> None:
        """After an optimizer step."""
        self._used = self.next_position
        self.steps += 1
        self.next_position = min(self.next_position + self.stride, self.end)
        self._apply()

    def plan(self, elapsed: float) -> None:
        """At a check: `elapsed` seconds of the budget are spent (the same on every process)."""
        self.elapsed = elapsed
        if not self.time_budget_s or self.steps == 0:
            return
        if self.warm is None:
            self.warm = (self.steps, elapsed)
        steps, seconds = self.steps - self.warm[0], elapsed - self.warm[1]
        per_step = seconds / steps if steps > 0 else elapsed / self.steps
        left = int((self.time_budget_s - elapsed) / max(per_step, 1e-9))  # steps the budget still holds
        if left <= (1 if steps > 0 else 0):  # (the first step alone: only once it took over half the budget)
            self.stride, self.next_position = 0.0, float(self.end)  # the next step is the last
        elif steps > 0:  # the first step pays for warm-up: its time only ever ends the cycle, never squeezes it
            # where a cycle of (steps so far + steps left) would be now, then evenly to its end
            total = self.steps + left
            self.next_position = max(self.next_position, self.steps * self.end / (total - 1))
            self.stride = max(1.0, (self.end - self.next_position) / (left - 1))
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "elapsed": self.elapsed, "next_position": self.next_position,
                "stride": self.stride, "warm": self.warm, "used": self._used}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.elapsed = state["steps"], state["elapsed"]
        self.next_position = state.get("next_position", float(min(self.steps, self.end)))
        self.stride, self.warm, self._used = state.get("stride", 1.0), state.get("warm"), state.get("used", 0.0)
        self._apply()
