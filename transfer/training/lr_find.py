"""`optim.lr: find`: an LR range test (Smith 2015; fastai's `lr_find`, Lightning's `lr_find`).

Before training, the run's own model, data, transforms, objective, optimizer and precision take
`STEPS` optimizer steps (passing over the training data again when an epoch is shorter, as
fastai and Lightning do: a curve of a dozen noisy points cannot be read) with the learning rate rising
exponentially from `START_LR` to `END_LR`. The loss of each step is averaged over processes (so
every process sees the same curve and picks the same value) and smoothed; the test stops early
once the smoothed loss exceeds `DIVERGED` times its minimum, or is not finite.

The pick (`optim.lr_find_rule`; metrics.json records every rule's pick, `picks`, and which one
was used) is one of fastai's suggestion functions:
- `minimum` (our default: of the three, it landed closest to a tuned grid's choice, measured in
  the README; fastai's own default is `valley`): a tenth of the learning rate at the smoothed loss's
  minimum.
- `valley`: find the longest stretch of the curve over which the smoothed loss
  keeps falling (its longest decreasing subsequence) and pick the learning rate about halfway down
  it: where the loss falls fastest, well before it stops falling.
- `steep`: the learning rate where the smoothed loss falls fastest against log(lr).
`steep` and `minimum` read the curve without its first tenth and last five steps, as fastai
does (its noisy start and its blow-up); `valley` reads it all (its longest falling stretch
already ignores both). Which lands closest to a grid's choice is measured in the README.

Afterwards model, optimizer, gradient scaler, accumulation counter and every random generator
are restored, so the training that follows is the one it would have been with the found value
typed in (tested). A curve that cannot be trusted is an error naming why and what to set.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RunError
from ..records import LrFindRecord
from .optim import PCT_START, set_rate
from .step import Trainer

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
MIN_FALL = 0.05  # along the valley, the smoothed loss must fall at least this fraction for a pick
RULES = {"valley": "valley: halfway down the longest stretch where the smoothed loss falls (fastai)",
         "steep": "steep: where the smoothed loss falls fastest against log(lr) (fastai)",
         "minimum": "minimum: a tenth of the lr at the smoothed loss's minimum (fastai)"}
BY_HAND = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.1}  # a usual starting point, named in the error


@dataclass
class Snapshot:
    """Everything a few optimizer steps change, to put back afterwards."""
    model: dict
    optimizer: dict
    scaler: dict | None
    step: int
    rng: tuple

    @classmethod
    def take(cls, model, optimizer, accelerator) -> "Snapshot":
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        cuda = accelerator.device.type == "cuda"  # (a CPU run on a GPU host creates no CUDA context)
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
               torch.cuda.get_rng_state_all() if cuda else None)
        return cls(weights, copy.deepcopy(optimizer.state_dict()), scaler, accelerator.step, rng)

    def restore(self, model, optimizer, accelerator) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            accelerator.scaler.load_state_dict(self.scaler)
        accelerator.step = self.step
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])
        if self.rng[3] is not None:
            torch.cuda.set_rng_state_all(self.rng[3])


def schedule(steps: int) -> list[float]:
    """Exponentially from START_LR to END_LR in `steps` values."""
    return [START_LR * (END_LR / START_LR) ** (i / max(steps - 1, 1)) for i in range(steps)]


def smooth(losses: list[float], steps: int) -> list[float]:
    """Bias-corrected exponential moving average; beta is fastai's 0.98 for 100 steps, scaled so
    that other step counts smooth over the same share of the range."""
    beta = 0.98 ** (STEPS / max(steps, 1))
    average, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** i))
    return out


def picks(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """Every rule's learning rate on one smoothed curve (`lrs` as long as `smoothed`)."""
    first, last = valley(smoothed)
    length = last - first
    trimmed = slice(len(smoothed) // 10, max(len(smoothed) - 5, len(smoothed) // 10 + 2))  # fastai's trim
    lr, loss = np.log(np.asarray(lrs[trimmed])), np.asarray(smoothed[trimmed])
    slope = np.diff(loss) / np.diff(lr)
    return {"valley": lrs[first + length // 3 + length // 6],  # fastai's point, about halfway down
            "steep": float(np.exp(lr[int(np.argmin(slope))])),
            "minimum": float(np.exp(lr[int(np.argmin(loss))])) / 10}


def suggest(lrs: list[float], losses: list[float], steps: int, optimizer: str, rule: str = "minimum") -> LrFindRecord:
    """The pick from a recorded curve by `rule`, or RunError saying why there is none."""
    by_hand = f"set optim.lr by hand (e.g. optim.lr={BY_HAND[optimizer]:g}, or sweep it: SWEEP='optim.lr=...')"
    if not losses or not math.isfinite(losses[0]):
        raise RunError(f"optim.lr=find: the LR range test was inconclusive: the loss was not finite from the first "
                       f"step (at lr {START_LR:g}), so the model, the data or fp16 is broken; fix that, or {by_hand}")
    finite = [loss for loss in losses if math.isfinite(loss)]
    smoothed = smooth(finite, steps)
    first, last = valley(smoothed)
    if smoothed[last] > smoothed[first] * (1 - MIN_FALL):
        raise RunError(f"optim.lr=find: the LR range test was inconclusive: the loss did not fall between lr "
                       f"{START_LR:g} and {lrs[len(finite) - 1]:.3g} (smoothed: {smoothed[0]:.4f} at the start, "
                       f"lowest {min(smoothed):.4f}); {by_hand}")
    chosen = picks(lrs[:len(finite)], smoothed)
    return LrFindRecord(rule=RULES[rule], suggested_lr=chosen[rule], picks=chosen, valley_lrs=[lrs[first], lrs[last]],
                        lowest_loss_lr=lrs[int(np.argmin(smoothed))], steps=len(losses), start_lr=START_LR,
                        end_lr=END_LR, lrs=lrs[:len(losses)], losses=losses, smoothed_losses=smoothed)


def valley(values: list[float]) -> tuple[int, int]:
    """First and last index of the longest decreasing subsequence of `values` (fastai's valley)."""
    longest = [1] * len(values)
    start = end = 0
    for i in range(1, len(values)):
        for j in range(i):
            if values[i] < values[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
            start = end - longest[end]
    return max(start, 0), end


def find_lr(trainer: Trainer, loader, epochs: int, frozen_epochs: int, optimizer_name: str,
            rule: str = "minimum") -> LrFindRecord:
    """The LR range test, on the model as it trains when the one-cycle schedule peaks (after the
    warm-up, 30% into the run): the whole model when only the first epoch or so freezes the
    backbone, the head alone for a linear probe (frozen throughout)."""
    trainer.set_phase(frozen=int(PCT_START * epochs) < frozen_epochs)
    trainer.objective.set_epoch(0)
    return range_test(trainer, loader, optimizer_name, rule=rule)


def range_test(trainer: Trainer, loader, optimizer_name: str, steps: int = STEPS, rule: str = "minimum") -> LrFindRecord:
    """Run the test with `trainer` set up for the first epoch; return the metrics.json record,
    or raise RunError when inconclusive."""
    accelerator, optimizer = trainer.accelerator, trainer.optimizer
    model = trainer.module
    lrs = schedule(steps)
    snapshot = Snapshot.take(model, optimizer.optimizer, accelerator)
    losses, pending, best = [], [], math.inf
    try:
        _set_lr(optimizer, lrs[0])
        for batch in _cycle(loader):
            pending.append(trainer.step(batch).detach().float())
            if not accelerator.sync_gradients:
                continue
            loss = accelerator.reduce(torch.stack(pending).mean(), "mean").item()  # every process: one curve
            pending = []
            losses.append(loss)
            smoothed = smooth(losses, steps)[-1] if math.isfinite(loss) else math.inf
            best = min(best, smoothed)
            if len(losses) == steps or not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                break
            _set_lr(optimizer, lrs[len(losses)])
    finally:
        snapshot.restore(model, optimizer.optimizer, accelerator)
    found = suggest(lrs, losses, steps, optimizer_name, rule)
    picks = accelerator.gather(torch.tensor([found.suggested_lr], dtype=torch.float64, device=accelerator.device))
    if not bool((picks == picks[0]).all()):  # by construction they agree (one reduced curve); never train apart
        raise RuntimeError(f"LR range test: processes picked different learning rates {picks.tolist()}")
    return found


def _cycle(loader):
    while True:
        yield from loader


def _set_lr(optimizer, lr: float) -> None:
    """The head's rate (with optim.layer_decay the groups below it scaled as in training)."""
    for group in optimizer.param_groups:
        set_rate(group, lr * group.get("lr_scale", 1.0))


def line(found: LrFindRecord) -> str:
    low, high = found.valley_lrs
    return (f"lr range test: {found.steps} steps from lr {found.start_lr:g}; the smoothed loss falls while the "
            f"lr rises from {low:.2g} to {high:.2g}; using optim.lr={found.suggested_lr:.3g} ({found.rule})")
