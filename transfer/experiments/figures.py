"""The experiments' figures, drawn from their typed records (records.py), so each can be redrawn
from saved runs: comparison.png (the arms' curves), sweep.png (accuracy and gain against a swept
setting) and suite.png (the gain per dataset)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..records import EpochRecord
from ..results.plots import save_figure
from .records import Sweep


def plot_comparison(histories: dict[str, list[list[EpochRecord]]], path: Path) -> None:
    """Accuracy and loss against epoch and against wall-clock seconds: mean line, min-max band.
    `histories`: arm -> each seed's history."""
    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(2, 2)
    for arm, runs in histories.items():
        length = min(len(h) for h in runs)
        if length == 0:
            continue
        epochs = [h.epoch for h in runs[0][:length]]
        seconds = np.mean([np.cumsum([e.epoch_seconds for e in h[:length]]) for h in runs], axis=0)
        for row, key in enumerate(("val_acc", "val_loss")):
            values = np.array([[getattr(e, key) for e in h[:length]] for h in runs])
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


def value_label(value) -> str:
    """How a swept value reads on an axis or in a table: null (the setting off) reads 'all'."""
    return "all" if value is None else str(value)


def _positions(values: list) -> tuple[list[float], list[str], bool]:
    """x positions, tick labels and whether to use a log axis. Numbers sit at their value (null,
    'all', to the right of the largest); a log axis when they span more than 10x; anything else
    is categorical."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) + values.count(None) == len(values) and min(numbers) > 0:
        log = max(numbers) / min(numbers) > 10
        right = max(numbers) * (2 if log else 1) + (0 if log else max(1.0, (max(numbers) - min(numbers)) / 4))
        return [right if v is None else float(v) for v in values], [value_label(v) for v in values], log
    return list(range(len(values))), [value_label(v) for v in values], False


def _value_axis(ax, x: list[float], labels: list[str], log: bool) -> None:
    """A swept setting's x axis, as _positions laid it out."""
    if log:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(x, labels)


def _setting_label(setting: dict) -> str:
    return ", ".join(f"{k}={value_label(v)}" for k, v in setting.items())


def plot_sweep(sweep: Sweep, path: Path) -> None:
    """Final validation accuracy of each arm (mean, min-max band over seeds) and the gain of
    pretraining in points with its 95% interval as a band, against the first swept key; a line
    per combination of the other swept keys' values (one line without other keys)."""
    x, labels, log = _positions(list(sweep.values))
    at = {repr(v): xi for v, xi in zip(sweep.values, x)}
    fig = Figure(figsize=(11, 4.2))
    acc_ax, gain_ax = fig.subplots(1, 2)
    arms = list(dict.fromkeys(a for p in sweep.points for a in p.arms))
    styles = ["-o", "--s", ":^", "-.D", "-v", "--P"]
    lines = sweep.curves()
    for n, (others, pts) in enumerate(lines):
        style, suffix = styles[n % len(styles)], f" ({_setting_label(others)})" if others else ""
        for arm in arms:
            have = [(at[repr(p.value)], p.arms[arm]) for p in pts if arm in p.arms]
            if not have:
                continue
            xs = [h[0] for h in have]
            (line,) = acc_ax.plot(xs, [100 * a.final_val_acc for _, a in have], style, ms=4, label=arm + suffix)
            acc_ax.fill_between(xs, [100 * a.final_val_acc_min for _, a in have],
                                [100 * a.final_val_acc_max for _, a in have], color=line.get_color(), alpha=0.2)
        gains = [(at[repr(p.value)], p.gain) for p in pts if p.gain]
        if gains:
            (line,) = gain_ax.plot([xi for xi, _ in gains], [g.final_val_acc_points for _, g in gains], style,
                                   ms=4, color="tab:green" if len(lines) == 1 else None,
                                   label=_setting_label(others) if others else None)
            marks = {repr(v.value): v.verdict for line_ in sweep.lines if line_.others == others for v in line_.verdicts}
            for xi, p in ((at[repr(p.value)], p) for p in pts if p.gain):
                if marks.get(repr(p.value), "not tested") != "not tested":
                    words = {"behind": "scratch behind", "caught up": "scratch caught up"}.get(marks[repr(p.value)],
                                                                                             marks[repr(p.value)])
                    gain_ax.annotate(words, (xi, p.gain.final_val_acc_points), fontsize=7,
                                     textcoords="offset points", xytext=(0, 6), ha="center", color=line.get_color())
            banded = [(xi, g.final_val_acc_ci95) for xi, g in gains if g.final_val_acc_ci95]
            if banded:
                gain_ax.fill_between([xi for xi, _ in banded], [ci[0] for _, ci in banded],
                                     [ci[1] for _, ci in banded], color=line.get_color(), alpha=0.2,
                                     label="95% interval" if not others else None)
    if gain_ax.lines:
        gain_ax.axhline(0, color="grey", lw=0.8)
        gain_ax.legend()
    for ax, ylabel in ((acc_ax, "final validation accuracy (%)"), (gain_ax, "gain of pretraining (points)")):
        _value_axis(ax, x, labels, log)
        ax.set(xlabel=sweep.key, ylabel=ylabel)
        ax.grid(alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize="small")
    seeds = max((a.seeds for p in sweep.points for a in p.arms.values()), default=0)
    fig.suptitle(f"Pretrained vs scratch against {sweep.key} (mean of {seeds} seed(s); bands: min-max, "
                 f"the gain's 95% interval)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_suite(rows: list[dict], path: Path, xlabel: str | None = None, summary_rows: tuple = ()) -> None:
    """The gain of pretraining per dataset with its 95% interval. `rows`: {"dataset", "points":
    [{"x" (a swept value, or None), "gain", "low", "high"}]}. Without a sweep (one point a dataset):
    one row per dataset, sorted by gain; with one: the gain against the swept value, a line a dataset.
    Rows named in `summary_rows` (the aggregates over datasets) go at the bottom, in black."""
    fig = Figure(figsize=(9, max(3.0, 0.5 * len(rows) + 1.5)) if xlabel is None else (9, 4.5))
    ax = fig.subplots()
    if xlabel is None:  # the means at the bottom, in black; the datasets above them, sorted by gain
        means = [r for r in rows if r["dataset"].startswith(tuple(summary_rows))]
        rows = means + sorted((r for r in rows if r not in means),
                              key=lambda r: r["points"][0]["gain"] if r["points"] else float("-inf"))
        for y, row in enumerate(rows):
            for p in row["points"]:
                err = None if p["low"] is None else [[p["gain"] - p["low"]], [p["high"] - p["gain"]]]
                mean = row in means
                ax.errorbar([p["gain"]], [y], xerr=err, fmt="s" if mean else "o", color="black" if mean else "tab:green",
                            capsize=4)
        if means:
            ax.axhline(len(means) - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_yticks(range(len(rows)), [r["dataset"] for r in rows])
        ax.axvline(0, color="grey", lw=0.8)
        ax.set(xlabel="gain of pretraining (points of final validation accuracy; bars: 95% interval)")
        ax.grid(alpha=0.3, axis="x")
    else:
        values = list(dict.fromkeys(p["x"] for r in rows for p in r["points"]))
        x, labels, log = _positions(values)
        at = {repr(v): xi for v, xi in zip(values, x)}
        for row in rows:
            pts = row["points"]
            if not pts:
                continue
            xs = [at[repr(p["x"])] for p in pts]
            (line,) = ax.plot(xs, [p["gain"] for p in pts], "-o", ms=4, label=row["dataset"])
            banded = [(xi, p) for xi, p in zip(xs, pts) if p["low"] is not None]
            if banded:
                ax.fill_between([xi for xi, _ in banded], [p["low"] for _, p in banded], [p["high"] for _, p in banded],
                                color=line.get_color(), alpha=0.15)
        _value_axis(ax, x, labels, log)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="gain of pretraining (points; bands: 95% interval)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle("Gain of pretraining per dataset")
    fig.tight_layout()
    save_figure(fig, path)
