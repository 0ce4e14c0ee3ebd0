"""Side-by-side report of finished runs, from their saved files alone (no training, no GPU).

    python -m transfer.compare runs/compare        # what scripts/compare.sh calls at the end

Reads OUT/<arm>/metrics.json (or OUT/<arm>/seed<N>/metrics.json for several seeds) and each
run's config.yaml, and writes OUT/comparison.png, OUT/report.md and OUT/summary.json. For a sweep
(OUT/sweep.json, see sweep_report.py) it does so for the last swept value and adds OUT/sweep.png
and the sweep's table and curve.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml

from . import sweep_report
from .outputs import write_atomic, write_json
from .report import flat_config, read_metrics

FRACTIONS = (0.5, 0.8, 0.9)  # "time to reach X of the best accuracy"
ARM_ORDER = ("pretrained", "scratch", "scratch_strong", "probe")


def find_runs(out: Path) -> dict[str, list[Path]]:
    """arm -> finished run folders (one per seed), in a stable order."""
    arms = {}
    for arm_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        runs = [arm_dir] if (arm_dir / "metrics.json").is_file() else sorted(
            (p for p in arm_dir.glob("seed*") if (p / "metrics.json").is_file()), key=lambda p: int(p.name[4:]))
        if runs:
            arms[arm_dir.name] = runs
    order = {name: i for i, name in enumerate(ARM_ORDER)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


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


def summarize_arm(runs: list[Path]) -> dict:
    metrics = [read_metrics(r) for r in runs]
    best_mean = float(np.mean([m["best_val_acc"] for m in metrics]))
    summary = {"runs": [str(r) for r in runs], "seeds": len(runs)}
    for key in ("best_val_acc", "final_val_acc", "train_seconds"):
        summary[key], summary[f"{key}_std"] = _mean_std([m[key] for m in metrics])
    summary["epochs"] = float(np.mean([m["history"][-1]["epoch"] if m["history"] else 0 for m in metrics]))
    lrs = [m.get("peak_lr") for m in metrics]  # the value used: typed in, or found (optim.lr=find)
    summary["peak_lr"] = [lr for lr in lrs if lr is not None]
    summary["lr_found"] = any(m.get("lr_find") for m in metrics)
    rates = [h["train_images_per_s"] for m in metrics for h in m["history"]]
    summary["train_images_per_s"] = float(np.mean(rates)) if rates else None
    for fraction in FRACTIONS:  # per seed, against the arm's mean best accuracy
        times = [time_to_reach(m["history"], fraction * best_mean) for m in metrics]
        summary[f"seconds_to_{int(fraction * 100)}pct_of_best"] = (
            float(np.mean(times)) if all(t is not None for t in times) else None)
    unseen = [m.get("val_subsets", {}).get("unseen_by_imagenet") for m in metrics]
    if all(unseen):
        summary["unseen_by_imagenet_val_acc"], summary["unseen_by_imagenet_val_acc_std"] = _mean_std(
            [u["val_acc"] for u in unseen])
        summary["unseen_by_imagenet_samples"] = unseen[0]["samples"]
    return summary


def differing_settings(arms: dict[str, list[Path]]) -> dict[str, dict[str, object]]:
    """Settings whose values differ between arms (seed and output_dir aside): key -> arm -> value."""
    configs = {arm: flat_config(yaml.safe_load((runs[0] / "config.yaml").read_text())) for arm, runs in arms.items()}
    keys = sorted(set().union(*configs.values()) - {"output_dir", "train.seed"})
    return {k: {arm: c.get(k) for arm, c in configs.items()} for k in keys
            if len({repr(c.get(k)) for c in configs.values()}) > 1}


def summarize(folder: Path) -> tuple[dict[str, list[Path]], dict]:
    """The finished runs under `folder` and their summary (arms, gain, differing settings)."""
    arms = find_runs(folder)
    summary = {"arms": {arm: summarize_arm(runs) for arm, runs in arms.items()},
               "differing_settings": differing_settings(arms) if arms else {}}
    if {"pretrained", "scratch"} <= set(arms):
        p, s = summary["arms"]["pretrained"], summary["arms"]["scratch"]
        summary["gain"] = {"best_val_acc_points": 100 * (p["best_val_acc"] - s["best_val_acc"]),
                           "final_val_acc_points": 100 * (p["final_val_acc"] - s["final_val_acc"])}
        if "unseen_by_imagenet_val_acc" in p and "unseen_by_imagenet_val_acc" in s:
            summary["gain"]["unseen_by_imagenet_val_acc_points"] = 100 * (
                p["unseen_by_imagenet_val_acc"] - s["unseen_by_imagenet_val_acc"])
    return arms, summary


def build(out: Path) -> dict:
    out = Path(out)
    meta = sweep_report.read_sweep(out)
    if meta is None:
        arms, summary = summarize(out)
    else:  # the top level describes the last swept value that has runs, as a plain comparison would
        sweep = sweep_report.build(out, meta, summarize)
        values = sweep_report.values_with_runs(sweep)
        arms, summary = summarize(sweep_report.value_folder(out, meta["key"], values[-1])) if values else ({}, {})
        summary["sweep"] = sweep
    if not arms:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {out}")
    write_json(out / "summary.json", summary)
    write_atomic(out / "report.md", markdown(summary))
    plot(arms, out / "comparison.png")
    return summary


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std else "")


def _secs(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def _lrs(arm: dict) -> str:
    text = ", ".join(f"{lr:.3g}" for lr in arm.get("peak_lr", []))
    return f"{text} (found)" if arm.get("lr_found") else text


def markdown(summary: dict) -> str:
    arms = summary["arms"]
    names = list(arms)
    rows = [("runs (seeds)", lambda a: str(a["seeds"])),
            ("best val accuracy", lambda a: _pct(a["best_val_acc"], a["best_val_acc_std"])),
            ("final val accuracy", lambda a: _pct(a["final_val_acc"], a["final_val_acc_std"])),
            ("val accuracy on images unseen by ImageNet",
             lambda a: _pct(a.get("unseen_by_imagenet_val_acc"), a.get("unseen_by_imagenet_val_acc_std"))
             + (f" (n={a['unseen_by_imagenet_samples']})" if "unseen_by_imagenet_samples" in a else "")),
            ("epochs", lambda a: f"{a['epochs']:g}"),
            ("train time (train + eval)", lambda a: _secs(a["train_seconds"])),
            ("training images/s", lambda a: "—" if a["train_images_per_s"] is None else f"{a['train_images_per_s']:.0f}")]
    rows += [(f"time to {int(f * 100)}% of best accuracy",
              lambda a, f=f: _secs(a[f"seconds_to_{int(f * 100)}pct_of_best"])) for f in FRACTIONS]
    lines = ["# Pretrained vs scratch", "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fn(arms[n]) for n in names) + " |" for label, fn in rows]
    lines.append("")
    if "gain" in summary:
        g = summary["gain"]
        lines.append(f"**Gain of pretraining**: {g['best_val_acc_points']:+.1f} points of best validation accuracy, "
                     f"{g['final_val_acc_points']:+.1f} points of final accuracy"
                     + (f", {g['unseen_by_imagenet_val_acc_points']:+.1f} points on the validation images "
                        f"ImageNet's training set does not contain" if "unseen_by_imagenet_val_acc_points" in g
                        else "") + ".")
        lines.append("")
    lines += ["Mean ± standard deviation over seeds. Times to X% are measured against each arm's own mean best "
              "accuracy.", "", "## Settings that differ between the arms", ""]
    diff = dict(summary["differing_settings"])
    if any(a.get("lr_found") for a in arms.values()):  # what `optim.lr: find` picked, per arm (and seed)
        diff["optim.lr (used)"] = {n: _lrs(arms[n]) for n in names}
    if diff:
        lines += ["| setting | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| `{k}` | " + " | ".join(f"`{v.get(n)}`" for n in names) + " |" for k, v in diff.items()]
        if "optim.lr (used)" in diff:
            lines += ["", "`optim.lr (used)`: the one-cycle peak each run trained with, one per seed; \"(found)\": "
                      "picked by the run's LR range test (`optim.lr=find`, see its `plots/lr_find.png`)."]
    else:
        lines.append("None besides the output folder and seed.")
    if "sweep" in summary:
        sweep = summary["sweep"]
        last = sweep_report.values_with_runs(sweep)[-1]
        lines[0] += f" (at `{sweep['key']}={sweep_report.value_text(last)}`, the last value of the sweep)"
        lines += ["", sweep_report.markdown(sweep)]
    return "\n".join(lines) + "\n"


def plot(arms: dict[str, list[Path]], path: Path) -> None:
    """Accuracy and loss against epoch and against wall-clock seconds: mean line, min-max band."""
    from . import plots  # noqa: F401  (selects the file-only backend)
    import matplotlib.pyplot as plt

    from .outputs import save_figure

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for arm, runs in arms.items():
        histories = [read_metrics(r)["history"] for r in runs]
        length = min(len(h) for h in histories)
        if length == 0:
            continue
        epochs = [h["epoch"] for h in histories[0][:length]]
        seconds = np.mean([np.cumsum([e["epoch_seconds"] for e in h[:length]]) for h in histories], axis=0)
        for row, key in enumerate(("val_acc", "val_loss")):
            values = np.array([[e[key] for e in h[:length]] for h in histories])
            for col, x in enumerate((epochs, seconds)):
                ax = axes[row, col]
                (line,) = ax.plot(x, values.mean(axis=0), "-o", ms=3, label=f"{arm} (n={len(runs)})")
                if len(runs) > 1:
                    ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    for row, label in enumerate(("validation accuracy", "validation loss")):
        for col, xlabel in enumerate(("epoch", "wall-clock seconds (training + evaluation)")):
            axes[row, col].set(xlabel=xlabel, ylabel=label)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend()
    fig.suptitle("Pretrained vs scratch: equal epochs (left), equal time (right)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m transfer.compare OUT_DIR", file=sys.stderr)
        return 2
    try:
        summary = build(Path(argv[0]))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
