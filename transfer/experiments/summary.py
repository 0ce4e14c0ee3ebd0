"""The numbers of a comparison, from finished runs alone (records.load_run): per arm, mean and
standard deviation over seeds, the settings that differ, and the gain of pretraining with its
interval (intervals.py), as the typed records of experiments/records.py. Shared by the report of
one comparison (report.py) and of a sweep (sweep_report.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..records import EpochRecord, FinishedRun, load_run
from .intervals import headline, paired_gain, seed_of
from .layout import find_runs
from .records import FRACTIONS, ArmSummary, Gain, Summary
from .tuning import choices

# (pretrained side, scratch side): the plain recipes, then the strong ones; "gain" is the first present
GAIN_PAIRS = (("pretrained", "scratch"), ("pretrained_strong", "scratch_strong"))


def time_to_reach(history: list[EpochRecord], target: float) -> float | None:
    """Wall-clock seconds (training + evaluation) until val_acc first reaches `target`."""
    elapsed = 0.0
    for h in history:
        elapsed += h.epoch_seconds
        if h.val_acc >= target:
            return elapsed
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _spread(values: list[float]) -> dict[str, float]:
    mean, std = _mean_std(values)
    return {"": mean, "_std": std, "_min": min(values), "_max": max(values)}


def summarize_arm(runs: list[FinishedRun]) -> ArmSummary:
    metrics = [r.metrics for r in runs]
    best_mean = float(np.mean([m.best_val_acc for m in metrics]))
    spreads = {key + suffix: value for key in ("best_val_acc", "final_val_acc")
               for suffix, value in _spread([getattr(m, key) for m in metrics]).items()}
    eces = [m.final_val_ece for m in metrics]
    ece, ece_std = _mean_std(eces) if None not in eces else (None, None)
    rates = [h.train_images_per_s for m in metrics for h in m.history]
    unseen = [m.val_subsets.get("unseen_by_imagenet") for m in metrics]
    unseen_acc = _mean_std([u["val_acc"] for u in unseen]) if all(unseen) else (None, None)
    times = {f: [time_to_reach(m.history, f * best_mean) for m in metrics] for f in FRACTIONS}  # vs the arm's mean best
    return ArmSummary(
        runs=[str(r.folder) for r in runs], seeds=len(runs),
        seed_values=sorted(s for s in (seed_of(r) for r in runs) if s is not None),
        **spreads, **dict(zip(("train_seconds", "train_seconds_std"), _mean_std([m.train_seconds for m in metrics]))),
        epochs=float(np.mean([m.epochs for m in metrics])),
        weights=sorted({m.weights for m in metrics if m.weights}),
        best_chosen_on=sorted({m.best_chosen_on for m in metrics}),
        final_val_ece=ece, final_val_ece_std=ece_std,
        peak_lr=[m.peak_lr for m in metrics if m.peak_lr is not None],  # the value used: typed in, or found
        lr_found=any(m.lr_find for m in metrics),
        train_images_per_s=float(np.mean(rates)) if rates else None,
        **{f"seconds_to_{int(f * 100)}pct_of_best": float(np.mean(t)) if all(x is not None for x in t) else None
           for f, t in times.items()},
        unseen_by_imagenet_val_acc=unseen_acc[0], unseen_by_imagenet_val_acc_std=unseen_acc[1],
        unseen_by_imagenet_samples=unseen[0]["samples"] if all(unseen) else None,
        train_samples=float(np.mean([m.train_samples for m in metrics])) if all(m.train_samples for m in metrics)
        else None, executions=sorted({execution(m) for m in metrics}))


def execution(metrics) -> str:
    """What a run ran on, as the report compares runs by it."""
    n = metrics.num_processes
    return f"{metrics.device_name or metrics.device}, {metrics.mixed_precision}, {n} process{'es' * (n != 1)}"


def differing_settings(arms: dict[str, list[FinishedRun]]) -> dict[str, dict[str, object]]:
    """Settings whose values differ between arms (seed and output_dir aside): key -> arm -> value."""
    configs = {arm: runs[0].flat_settings for arm, runs in arms.items()}
    keys = sorted(set().union(*configs.values()) - {"output_dir", "train.seed"})
    return {k: {arm: c.get(k) for arm, c in configs.items()} for k in keys
            if len({repr(c.get(k)) for c in configs.values()}) > 1}


def gain_of(runs: dict[str, list[FinishedRun]], arms: dict[str, ArmSummary], pretrained: str, scratch: str) -> Gain:
    """The gain of pretraining between two arms: `pretrained` minus `scratch`, with its interval."""
    p, s = arms[pretrained], arms[scratch]
    gain = paired_gain(runs[pretrained], runs[scratch])
    unseen = gain.unseen_by_imagenet_val_acc_points  # paired by image; else (unpaired) from the arms' means
    if unseen is None and p.unseen_by_imagenet_val_acc is not None and s.unseen_by_imagenet_val_acc is not None:
        unseen = 100 * (p.unseen_by_imagenet_val_acc - s.unseen_by_imagenet_val_acc)
    gain = dataclasses.replace(gain, arms=[pretrained, scratch], best_val_acc_points=100 * (p.best_val_acc - s.best_val_acc),
                               unseen_by_imagenet_val_acc_points=unseen)
    return dataclasses.replace(gain, headline=headline(gain, arms))


def summarize(folder: Path) -> tuple[dict[str, list[FinishedRun]], Summary]:
    """The finished runs under `folder` and their summary (arms, gains, differing settings)."""
    runs = {arm: [load_run(r) for r in found] for arm, found in find_runs(folder).items()} if Path(
        folder).is_dir() else {}
    arms = {arm: summarize_arm(found) for arm, found in runs.items()}
    tuned = choices(folder) if Path(folder).is_dir() else None
    for arm, part in (tuned or {}).items():  # TUNE: the grid, each point's selection accuracy, the choice
        if arm in arms:
            arms[arm] = dataclasses.replace(arms[arm], tuned=part)
    gains = [gain_of(runs, arms, p, s) for p, s in GAIN_PAIRS if {p, s} <= set(runs)]
    return runs, Summary(arms=arms, differing_settings=differing_settings(runs) if runs else {}, gains=gains,
                         gain=gains[0] if gains else None)
