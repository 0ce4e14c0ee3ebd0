"""A run's figures (its plots/), drawn from saved data only (a history list, arrays), so each can
be redrawn later; `save_figure` writes any figure (the experiments' are experiments/figures.py).

Figures are `matplotlib.figure.Figure` objects written straight to PNG: no pyplot, so no GUI
backend is chosen or needed and importing this module changes no global state."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..files import write_atomic
from ..records import EpochRecord, LrFindRecord


def save_figure(fig: Figure, path: Path) -> None:
    """Figure -> PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())


def _epoch_plot(history: list[EpochRecord], series: dict[str, str], ylabel: str, title: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    epochs = [h.epoch for h in history]
    for key, label in series.items():
        ax.plot(epochs, [getattr(h, key) for h in history], "-x", label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_accuracy(history: list[EpochRecord], path: Path) -> None:
    _epoch_plot(history, {"val_acc": "validation"}, "accuracy", "Accuracy vs. epochs", path)


def plot_loss(history: list[EpochRecord], path: Path) -> None:
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


def plot_lr_find(found: LrFindRecord, path: Path) -> None:
    """The LR range test: loss against learning rate (log axis), raw and smoothed, the pick marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    lrs = found.lrs
    ax.plot(lrs, found.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(lrs[:len(found.smoothed_losses)], found.smoothed_losses, label="smoothed")
    ax.axvline(found.suggested_lr, color="C3", ls="--", label=f"pick {found.suggested_lr:.2g}")
    ax.axvspan(*found.valley_lrs, color="C2", alpha=0.1, label="where the loss falls")
    finite = [v for v in found.smoothed_losses if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss",
           title="LR range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
