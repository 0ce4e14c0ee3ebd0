"""Scores, through `evaluate`'s Metric API but without its Hub download.

`evaluate.load("accuracy")` fetches a script from the Hugging Face Hub, which fails offline
(tests, clusters without internet). The same metric, defined here, needs no network.

`evaluate` is imported on first use, not with this module, and without its task evaluators'
imports (transformers, scipy.stats: see `_evaluator_imports_hidden`): the scripts that only read
results (predict.py, compare, --print-config) need not pay even its 0.1 s. (Importing it in a
background thread during start-up is not safe: `datasets` inspects a half-imported `transformers`
and fails.)
"""
from __future__ import annotations

import contextlib
import functools
import sys
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
    true_probability: np.ndarray  # the probability given to the true class (negative log: the NLL)
    squared_probabilities: np.ndarray  # the sum of the squared probabilities (Brier: 1 - 2 p_true + this)


# what evaluate's task evaluators import inside `try: ... except ImportError` (evaluate/evaluator/
# base.py: transformers and its pipelines, scipy.stats for their bootstrap); no metric needs them
EVALUATOR_ONLY = ("transformers", "transformers.pipelines", "scipy.stats")


@contextlib.contextmanager
def _evaluator_imports_hidden():
    """`import evaluate` imports its task evaluators, which import transformers (and its
    pipelines, 1.9 s) and scipy.stats (0.6 s) where installed: 2.9 s of a run's first evaluation
    on 2 cores, for an API this project never calls. While evaluate is imported they read as not
    installed (evaluate.evaluator.TRANSFORMERS_AVAILABLE and SCIPY_AVAILABLE are False); afterwards
    they import as ever. A module already imported is left alone."""
    if "evaluate" in sys.modules:
        yield
        return
    hidden = [name for name in EVALUATOR_ONLY if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # an import of it raises ImportError, which evaluate catches
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


@functools.cache
def _accuracy_metric():
    import datasets

    with _evaluator_imports_hidden():
        import evaluate  # 0.1 s, at the first evaluation (docs/performance.md)

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
    """expected_calibration_error of the predictions against the references."""
    return expected_calibration_error(confidence, np.asarray(predictions) == np.asarray(references), bins)


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS):
    """Expected calibration error over equal-mass bins: the images sorted by confidence and cut into
    `bins` groups of (nearly) equal size, and the sum over groups of its share times |accuracy - mean
    confidence| there (the adaptive ECE of Nixon et al. 2019). Equal-width bins (Guo et al. 2017)
    leave most bins with a handful of images at a few hundred, where their noise dominates; even so,
    the error of a well-calibrated model is not 0 on a finite set, so compare arms with the interval
    of their difference (the report's), not the values alone.
    Arrays of several rows (`...` x images) give one error per row, computed together (a bootstrap's)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    n = confidence.shape[-1]
    if n == 0:
        return 0.0
    order = np.argsort(confidence, axis=-1, kind="stable")
    # the groups np.array_split makes: sums at their ends from cumulative sums, both sorted by confidence
    ends = np.cumsum([len(g) for g in np.array_split(np.arange(n), min(bins, n))])
    starts = np.concatenate([[0], ends[:-1]])
    cum = [np.concatenate([np.zeros(confidence.shape[:-1] + (1,)), np.cumsum(np.take_along_axis(v, order, -1), -1)],
                          axis=-1) for v in (confidence, correct)]
    gap = np.abs((cum[1][..., ends] - cum[1][..., starts]) - (cum[0][..., ends] - cum[0][..., starts]))
    error = gap.sum(axis=-1) / n  # sum over groups of size x |mean correct - mean confidence|, over n
    return float(error) if np.ndim(error) == 0 else error


def log_loss(true_probability) -> float:
    """Mean negative log-likelihood of the true class (nats)."""
    return float(np.mean(-np.log(np.clip(np.asarray(true_probability, dtype=np.float64), 1e-12, None))))


def brier_score(true_probability, squared_probabilities) -> float:
    """Mean Brier score: the squared distance of the predicted distribution from the one-hot truth."""
    p, q = np.asarray(true_probability, dtype=np.float64), np.asarray(squared_probabilities, dtype=np.float64)
    return float(np.mean(1 - 2 * p + q))
