"""Scores, through `evaluate`'s Metric API but without its Hub download.

`evaluate.load("accuracy")` fetches a script from the Hugging Face Hub, which fails offline
(tests, clusters without internet). The same metric, defined here, needs no network.

`evaluate` is imported on first use, not with this module: with `transformers` installed it
pulls in its pipelines (about 2 s on 2 cores), which the scripts that only read results
(predict.py, compare, --print-config) need not pay. (Importing it in a background thread during
start-up is not safe: `datasets` inspects a half-imported `transformers` and fails.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """One pass over a split (loop.evaluate): the scores, and per image (in the split's order) the
    predicted class, the true one and the predicted class's probability."""
    val_loss: float  # plain cross-entropy, mean per image
    val_acc: float
    val_samples: int
    predictions: np.ndarray
    references: np.ndarray
    confidence: np.ndarray


@functools.cache
def _accuracy_metric():
    import datasets
    import evaluate  # about 2 s with transformers installed: at the first evaluation (docs/performance.md)

    class Accuracy(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description="Fraction of predictions equal to the references (the Hub's `accuracy`).",
                citation="",
                inputs_description="predictions, references: integer class indices",
                features=datasets.Features({"predictions": datasets.Value("int64"),
                                            "references": datasets.Value("int64")}),
            )

        def _compute(self, predictions, references):
            return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}

    return Accuracy


def accuracy(predictions, references) -> float:
    metric = _accuracy_metric()(keep_in_memory=True)
    return metric.compute(predictions=predictions, references=references)["accuracy"]


def per_class_accuracy(predictions, references, num_classes: int) -> list[float | None]:
    """Accuracy within each true class (None for a class without validation images)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    return [float(np.mean(predictions[references == c] == c)) if np.any(references == c) else None
            for c in range(num_classes)]


def confusion_matrix(predictions, references, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(references), np.asarray(predictions)), 1)
    return counts


ECE_BINS = 15


def calibration_error(confidence, predictions, references, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over `bins` equal-width confidence bins, the share of images
    in each times |accuracy - mean confidence| there (Guo et al. 2017; a bin holds confidences in
    (lower, upper], the first also 0)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(predictions) == np.asarray(references)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)
