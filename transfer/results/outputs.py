"""What a run leaves in output_dir: config.yaml, metrics.json, plots/, model/.

    output_dir/
      config.yaml            resolved settings; `--config output_dir/config.yaml` reruns it
      metrics.json           history per epoch, best/final accuracy, per-class accuracy, versions
      val_predictions.csv    id, label, predicted, confidence, true_probability, squared_probabilities per image
      plots/                 accuracy.png loss.png lr.png samples.png confusion.png mistakes.png
      model/                 timm Hub layout: config.json (labels, mean/std, input size) + model.safetensors
      checkpoints/epoch_NNN  accelerate state of the newest epochs (train.resume)
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from ..config import Config, dump_yaml
from ..data.loaders import class_display_names
from ..files import write_atomic, write_json
from ..records import CONFIG_FILE, UNSEEN_PREFIX, EpochRecord, RunMetrics
from ..training.metrics import Evaluation, confusion_matrix
from ..training.model import save_model
from .card import model_card

GRID_SIZE = 16  # images in samples.png and mistakes.png


def subset_scores(paths: list[str], final: Evaluation) -> dict:
    """Accuracy on the validation images ImageNet's training set does not contain, when there are any."""
    unseen = np.array([Path(p).name.startswith(UNSEEN_PREFIX) for p in paths])
    if not unseen.any():
        return {}
    correct = final.predictions[unseen] == final.references[unseen]
    return {"unseen_by_imagenet": {"prefix": UNSEEN_PREFIX, "samples": int(unseen.sum()),
                                   "val_acc": float(correct.mean())}}


def best_epoch(history: list[EpochRecord]) -> tuple[EpochRecord | None, str]:
    """The best epoch and what it was chosen on: the selection split when there is one
    (data.select_fraction), else the validation images themselves (optimistic: chosen and scored on
    the same images)."""
    chosen_on = "select" if history and all(h.select_acc is not None for h in history) else "val"
    best = max(history, key=lambda h: h.select_acc if chosen_on == "select" else h.val_acc) if history else None
    return best, chosen_on


def write_start(out: Path, cfg: Config, records: dict[str, dict] | None = None) -> None:
    """config.yaml and the records of which images were used (val_split.json,
    train_subset.json), before the first step."""
    write_atomic(out / CONFIG_FILE, dump_yaml(cfg))
    for name, record in (records or {}).items():
        write_json(out / name, record)


def draw_samples(out: Path, train_ds, classes: list[str]) -> None:
    """plots/samples.png: a grid of augmented training images."""
    from . import plots  # matplotlib (0.6 s): only where a figure is drawn, in the drawer process

    # drawing these crops must not shift the training run's random numbers; the CPU's generator only
    # (this runs in the forked drawer, where touching CUDA's would fail: CUDA cannot start in a fork)
    with torch.random.fork_rng(devices=[]):
        batch = train_ds[np.linspace(0, len(train_ds) - 1, min(GRID_SIZE, len(train_ds))).astype(int).tolist()]
    names = class_display_names(classes)
    images = [p.numpy() for p in batch["pixel_values"] if p is not None]
    plots.plot_image_grid(np.stack(images), [names[label] for label in batch["labels"]],
                          out / "plots" / "samples.png", "training samples, as augmented")


def predictions_csv(paths: list[str], final: Evaluation, classes: list[str]) -> str:
    """One row per validation image; quoted as CSV, so any file or class name reads back."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "label", "predicted", "confidence", "true_probability", "squared_probabilities"])
    writer.writerows([p, classes[t], classes[y], f"{c:.4f}", f"{q:.6g}", f"{s:.6g}"] for p, t, y, c, q, s in zip(
        paths, final.references, final.predictions, final.confidence, final.true_probability,
        final.squared_probabilities))
    return text.getvalue()


def write_final(out: Path, metrics_: RunMetrics, final: Evaluation, model, classes: list[str], names: list[str],
                cfg: Config, paths: list[str]) -> None:
    """Predictions and model/ (with its card); the figures are draw_final's, metrics.json is
    records.write_metrics' (last)."""
    write_atomic(out / "val_predictions.csv", predictions_csv(paths, final, classes))
    card = model_card(cfg, metrics_, classes, names, getattr(model, "pretrained_cfg", {}).get("license"))
    save_model(model, out / "model", classes, names, cfg.data.image_size, card)


def draw_final(out: Path, metrics_: RunMetrics, final: Evaluation, names: list[str], val_ds) -> None:
    """plots/: accuracy, loss, lr, lr_find, confusion, mistakes."""
    draw_curves(out, metrics_)
    draw_evaluation(out, final, names, val_ds)


def draw_curves(out: Path, metrics_: RunMetrics) -> None:
    """plots/: accuracy, loss, lr, lr_find: the run's history."""
    from . import plots  # matplotlib (0.6 s): only where a figure is drawn, in the drawer process

    history = metrics_.history
    if history:
        plots.plot_accuracy(history, out / "plots" / "accuracy.png")
        plots.plot_loss(history, out / "plots" / "loss.png")
        peaks = metrics_.peak_lr_per_group
        stem_scale = min(peaks.values()) / max(peaks.values()) if peaks and max(peaks.values()) > 0 else 1.0
        plots.plot_lr(metrics_.lr_per_step, metrics_.steps_per_epoch, out / "plots" / "lr.png", stem_scale)
    if metrics_.lr_find:
        plots.plot_lr_find(metrics_.lr_find, out / "plots" / "lr_find.png")


def draw_evaluation(out: Path, final: Evaluation, names: list[str], val_ds) -> None:
    """plots/: confusion, mistakes: the final evaluation."""
    from . import plots  # (see draw_curves)

    counts = confusion_matrix(final.predictions, final.references, len(names))
    plots.plot_confusion(counts, names, out / "plots" / "confusion.png")
    _plot_mistakes(final, val_ds, names, out / "plots" / "mistakes.png")


def _plot_mistakes(final: Evaluation, val_ds, names: list[str], path: Path) -> None:
    """The most confident wrong predictions, as the model saw them."""
    from . import plots  # (see draw_final)

    wrong = np.flatnonzero(final.predictions != final.references)
    wrong = wrong[np.argsort(-final.confidence[wrong])][:GRID_SIZE]
    if len(wrong) == 0:
        return
    images = [val_ds[int(i)]["pixel_values"].numpy() for i in wrong]
    titles = [f"{names[final.references[i]]}\n→ {names[final.predictions[i]]} "
              f"({final.confidence[i]:.0%})" for i in wrong]
    plots.plot_image_grid(np.stack(images), titles, path, "most confident mistakes (true → predicted)")

