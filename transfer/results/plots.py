"""Every figure, drawn from saved data only (a history list, arrays, a summary), so each can be
redrawn later: a run's plots/, the comparison and the sweep.

Figures are `matplotlib.figure.Figure` objects written straight to PNG: no pyplot, so no GUI
backend is chosen or needed and importing this module changes no global state."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..files import write_atomic


def save_figure(fig: Figure, path: Path) -> None:
    """Figure -> PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def _epoch_plot(history: list[dict], series: dict[str, str], ylabel: str, title: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    for key, label in series.items():
        ax.plot(epochs, [h[key] for h in history], "-x", label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_accuracy(history: list[dict], path: Path) -> None:
    _epoch_plot(history, {"val_acc": "validation"}, "accuracy", "Accuracy vs. epochs", path)


def plot_loss(history: list[dict], path: Path) -> None:
    _epoch_plot(history, {"train_loss": "train", "val_loss": "validation"}, "loss", "Loss vs. epochs", path)


def plot_lr(lrs: list[float], steps_per_epoch: int, path: Path, stem_scale: float = 1.0) -> None:
    """The head's rate per optimizer step, and the stem's when optim.layer_decay scales it."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    x = np.arange(1, len(lrs) + 1) / max(steps_per_epoch, 1)
    ax.plot(x, lrs, label="head")
    if stem_scale != 1.0:
        ax.plot(x, np.asarray(lrs) * stem_scale, label=f"stem (x{stem_scale:.3g}, optim.layer_decay)")
        ax.set_yscale("log")
        ax.legend()
    ax.set(xlabel="epoch", ylabel="learning rate", title="One-cycle learning rate (per optimizer step)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_image_grid(images: np.ndarray, titles: list[str], path: Path, suptitle: str = "") -> None:
    """uint8 NHWC images (already de-normalised) in a grid with a title each: one mosaic on one
    axes (a subplot per image costs about 3x the drawing time)."""
    n, h, w = images.shape[:3]
    cols = min(8, n)
    rows = max(1, -(-n // cols))
    gap, band = max(2, w // 20), int(h * 0.3)  # between images; above each, room for a two-line title
    mosaic = np.full((rows * (h + band + gap), cols * (w + gap), 3), 255, dtype=np.uint8)
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    ax = fig.subplots()
    for k, (image, title) in enumerate(zip(images, titles)):
        top, left = (k // cols) * (h + band + gap) + band, (k % cols) * (w + gap)
        mosaic[top:top + h, left:left + w] = image
        ax.text(left + w / 2, top - 2, title, ha="center", va="bottom", fontsize=7)
    ax.imshow(mosaic)
    ax.axis("off")
    if suptitle:
        ax.set_title(suptitle)
    save_figure(fig, path)


def plot_confusion(counts: np.ndarray, names: list[str], path: Path) -> None:
    """counts[true, predicted], each row shown as a fraction of that class."""
    n = len(names)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.55 * n + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (validation)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black")
    save_figure(fig, path)


def plot_lr_find(found: dict, path: Path) -> None:
    """The LR range test: loss against learning rate (log axis), raw and smoothed, the pick marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    lrs = found["lrs"]
    ax.plot(lrs, found["losses"], color="0.75", lw=1, label="loss per step")
    ax.plot(lrs[:len(found["smoothed_losses"])], found["smoothed_losses"], label="smoothed")
    ax.axvline(found["suggested_lr"], color="C3", ls="--", label=f"pick {found['suggested_lr']:.2g}")
    ax.axvspan(*found["valley_lrs"], color="C2", alpha=0.1, label="where the loss falls")
    finite = [v for v in found["smoothed_losses"] if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


# ---------------------------------------------------------------------------- experiments

def plot_comparison(histories: dict[str, list[list[dict]]], path: Path) -> None:
    """Accuracy and loss against epoch and against wall-clock seconds: mean line, min-max band.
    `histories`: arm -> each seed's history."""
    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(2, 2)
    for arm, runs in histories.items():
        length = min(len(h) for h in runs)
        if length == 0:
            continue
        epochs = [h["epoch"] for h in runs[0][:length]]
        seconds = np.mean([np.cumsum([e["epoch_seconds"] for e in h[:length]]) for h in runs], axis=0)
        for row, key in enumerate(("val_acc", "val_loss")):
            values = np.array([[e[key] for e in h[:length]] for h in runs])
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


def plot_sweep(sweep: dict, lines: list[tuple[dict, list[dict]]], path: Path) -> None:
    """Final validation accuracy of each arm (mean, min-max band over seeds) and the gain of
    pretraining in points with its 95% interval as a band, against the first swept key; `lines`:
    (the other swept keys' values, their points) per line (one line without other keys)."""
    x, labels, log = _positions(list(sweep["values"]))
    at = {repr(v): xi for v, xi in zip(sweep["values"], x)}
    fig = Figure(figsize=(11, 4.2))
    acc_ax, gain_ax = fig.subplots(1, 2)
    arms = list(dict.fromkeys(a for p in sweep["points"] for a in p["arms"]))
    styles = ["-o", "--s", ":^", "-.D", "-v", "--P"]
    for n, (others, pts) in enumerate(lines):
        style, suffix = styles[n % len(styles)], f" ({_setting_label(others)})" if others else ""
        for arm in arms:
            have = [(at[repr(p["value"])], p["arms"][arm]) for p in pts if arm in p["arms"]]
            if not have:
                continue
            xs = [h[0] for h in have]
            (line,) = acc_ax.plot(xs, [100 * a["final_val_acc"] for _, a in have], style, ms=4, label=arm + suffix)
            acc_ax.fill_between(xs, [100 * a["final_val_acc_min"] for _, a in have],
                                [100 * a["final_val_acc_max"] for _, a in have], color=line.get_color(), alpha=0.2)
        gains = [(at[repr(p["value"])], p["gain"]) for p in pts if p.get("gain")]
        if gains:
            (line,) = gain_ax.plot([xi for xi, _ in gains], [g["final_val_acc_points"] for _, g in gains], style,
                                   ms=4, color="tab:green" if len(lines) == 1 else None,
                                   label=_setting_label(others) if others else None)
            banded = [(xi, g["final_val_acc_ci95"]) for xi, g in gains if g.get("final_val_acc_ci95")]
            if banded:
                gain_ax.fill_between([xi for xi, _ in banded], [ci[0] for _, ci in banded],
                                     [ci[1] for _, ci in banded], color=line.get_color(), alpha=0.2,
                                     label="95% interval" if not others else None)
    if gain_ax.lines:
        gain_ax.axhline(0, color="grey", lw=0.8)
        gain_ax.legend()
    for ax, ylabel in ((acc_ax, "final validation accuracy (%)"), (gain_ax, "gain of pretraining (points)")):
        _value_axis(ax, x, labels, log)
        ax.set(xlabel=sweep["axes"][0][0], ylabel=ylabel)
        ax.grid(alpha=0.3)
    if acc_ax.lines:
        acc_ax.legend(fontsize="small")
    seeds = max((a["seeds"] for p in sweep["points"] for a in p["arms"].values()), default=0)
    fig.suptitle(f"Pretrained vs scratch against {sweep['axes'][0][0]} (mean of {seeds} seed(s); bands: min-max, "
                 f"the gain's 95% interval)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_suite(rows: list[dict], path: Path, xlabel: str | None = None) -> None:
    """The gain of pretraining per dataset with its 95% interval. `rows`: {"dataset", "points":
    [{"x" (a swept value, or None), "gain", "low", "high"}]}. Without a sweep (one point a dataset):
    one row per dataset, sorted by gain; with one: the gain against the swept value, a line a dataset."""
    fig = Figure(figsize=(9, max(3.0, 0.5 * len(rows) + 1.5)) if xlabel is None else (9, 4.5))
    ax = fig.subplots()
    if xlabel is None:
        rows = sorted(rows, key=lambda r: r["points"][0]["gain"] if r["points"] else float("-inf"))
        for y, row in enumerate(rows):
            for p in row["points"]:
                err = None if p["low"] is None else [[p["gain"] - p["low"]], [p["high"] - p["gain"]]]
                ax.errorbar([p["gain"]], [y], xerr=err, fmt="o", color="tab:green", capsize=4)
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
