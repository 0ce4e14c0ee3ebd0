"""The numbers of a comparison, from finished runs alone (records.load_run): per arm, mean and
standard deviation over seeds, the settings that differ, and the gain of pretraining with its
interval (intervals.py). Shared by
the report of one comparison (report.py) and of a sweep (sweep_report.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..records import FinishedRun, load_run
from .intervals import headline, paired_gain, seed_of
from .plan import find_runs
from .tuning import choices

FRACTIONS = (0.5, 0.8, 0.9)  # "time to reach X of the best accuracy"
# (pretrained side, scratch side): the plain recipes, then the strong ones; "gain" is the first present
GAIN_PAIRS = (("pretrained", "scratch"), ("pretrained_strong", "scratch_strong"))


def time_to_reach(history: list[dict], target: float) -> float | None:
    """Wall-clock seconds (training + evaluation) until val_acc first reaches `target`."""
    elapsed = 0.0
    for h in history:
        elapsed += h["epoch_seconds"]
        if h["val_acc"] >= target:
            return elapsed
    return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize_arm(runs: list[FinishedRun]) -> dict:
    metrics = [r.metrics for r in runs]
    best_mean = float(np.mean([m.best_val_acc for m in metrics]))
    summary = {"runs": [str(r.folder) for r in runs], "seeds": len(runs)}
    for key in ("best_val_acc", "final_val_acc", "train_seconds"):
        summary[key], summary[f"{key}_std"] = _mean_std([getattr(m, key) for m in metrics])
    for key in ("best_val_acc", "final_val_acc"):
        values = [getattr(m, key) for m in metrics]
        summary[f"{key}_min"], summary[f"{key}_max"] = min(values), max(values)
    summary["epochs"] = float(np.mean([m.epochs for m in metrics]))
    summary["weights"] = sorted({m.weights for m in metrics if m.weights})
    summary["best_chosen_on"] = sorted({m.best_chosen_on for m in metrics})
    summary["seed_values"] = sorted(s for s in (seed_of(r) for r in runs) if s is not None)
    eces = [m.final_val_ece for m in metrics]
    summary["final_val_ece"], summary["final_val_ece_std"] = (_mean_std(eces) if None not in eces else (None, None))
    lrs = [m.peak_lr for m in metrics]  # the value used: typed in, or found (optim.lr=find)
    summary["peak_lr"] = [lr for lr in lrs if lr is not None]
    summary["lr_found"] = any(m.lr_find for m in metrics)
    rates = [h["train_images_per_s"] for m in metrics for h in m.history]
    summary["train_images_per_s"] = float(np.mean(rates)) if rates else None
    for fraction in FRACTIONS:  # per seed, against the arm's mean best accuracy
        times = [time_to_reach(m.history, fraction * best_mean) for m in metrics]
        summary[f"seconds_to_{int(fraction * 100)}pct_of_best"] = (
            float(np.mean(times)) if all(t is not None for t in times) else None)
    unseen = [m.val_subsets.get("unseen_by_imagenet") for m in metrics]
    if all(unseen):
        summary["unseen_by_imagenet_val_acc"], summary["unseen_by_imagenet_val_acc_std"] = _mean_std(
            [u["val_acc"] for u in unseen])
        summary["unseen_by_imagenet_samples"] = unseen[0]["samples"]
    return summary


def differing_settings(arms: dict[str, list[FinishedRun]]) -> dict[str, dict[str, object]]:
    """Settings whose values differ between arms (seed and output_dir aside): key -> arm -> value."""
    configs = {arm: runs[0].flat_settings for arm, runs in arms.items()}
    keys = sorted(set().union(*configs.values()) - {"output_dir", "train.seed"})
    return {k: {arm: c.get(k) for arm, c in configs.items()} for k in keys
            if len({repr(c.get(k)) for c in configs.values()}) > 1}


def gain_of(runs: dict[str, list[FinishedRun]], arms: dict[str, dict], pretrained: str, scratch: str) -> dict:
    """The gain of pretraining between two arms: `pretrained` minus `scratch`, with its interval."""
    p, s = arms[pretrained], arms[scratch]
    gain = {"arms": [pretrained, scratch], "best_val_acc_points": 100 * (p["best_val_acc"] - s["best_val_acc"]),
            **paired_gain(runs[pretrained], runs[scratch])}
    gain["headline"] = headline(gain, arms)
    if "unseen_by_imagenet_val_acc" in p and "unseen_by_imagenet_val_acc" in s:
        gain["unseen_by_imagenet_val_acc_points"] = 100 * (p["unseen_by_imagenet_val_acc"] - s["unseen_by_imagenet_val_acc"])
    return gain


def summarize(folder: Path) -> tuple[dict[str, list[FinishedRun]], dict]:
    """The finished runs under `folder` and their summary (arms, gain, differing settings)."""
    arms = {arm: [load_run(r) for r in runs] for arm, runs in find_runs(folder).items()} if Path(folder).is_dir() else {}
    summary = {"arms": {arm: summarize_arm(runs) for arm, runs in arms.items()},
               "differing_settings": differing_settings(arms) if arms else {}}
    tuned = choices(folder) if Path(folder).is_dir() else None
    for arm, part in (tuned or {}).items():  # TUNE: the grid, each point's selection accuracy, the choice
        if arm in summary["arms"]:
            summary["arms"][arm]["tuned"] = part
    gains = [gain_of(arms, summary["arms"], p, s) for p, s in GAIN_PAIRS if {p, s} <= set(arms)]
    if gains:
        summary["gain"], summary["gains"] = gains[0], gains
    return arms, summary
