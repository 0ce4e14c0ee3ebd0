"""How sure the gain of pretraining is, from the runs' per-image predictions alone.

The design: both arms are trained with the same seeds (a seed fixes the labelled subset, the
selection split, the data order and the augmentation: train.seed, data.subset_seed) and scored on
the same validation images, so each seed gives a seeds x images table of paired differences
d[s, i] = 100 (pretrained right - scratch right) on image i. The headline is its mean. Two sources
of randomness are in it (Bouthillier et al. 2021, "Accounting for variance in machine learning
benchmarks", argue for randomising and reporting both): which networks training happened to produce
(the seeds) and which images the validation set happened to hold. They are crossed (every seed is
scored on every image), and a two-way random-effects analysis of variance of the table gives the
standard error of the mean:

    SE^2 = s_seed^2 / n + max(0, MS_img - MS_res) / (n N)

(n seeds, N images; s_seed^2 the variance of the per-seed gains, MS_img and MS_res the image and
residual mean squares; the seed x image interaction is in the seeds' spread already, so it is not
counted again). The interval is mean +- t SE with Satterthwaite's degrees of freedom over the two
parts: the seed part's n - 1, the image part's from its mean squares. On synthetic predictions
(tests/experiments/test_coverage.py) it covers the true gain 95% of the time at 5 seeds whether
seeds, images or pure churn dominate; with the seed part's n - 1 alone it over-covers when images
dominate. Figures at 2, 3 and 5 seeds: docs/experiments.md.

Below MIN_SEEDS seeds there is no interval for the gain: training randomness cannot be bounded from
one or two draws. Each seed's gain then gets its own interval over images alone (a paired t over
the per-image differences), which is conditional on those trained networks, and says so.

The same table, restricted to the images ImageNet's training set does not hold, gives the
unseen-by-ImageNet gain; the per-image log loss and Brier score give their differences; the
calibration error (not a mean over images) gets a pigeonhole bootstrap (seeds and images resampled
independently, Owen 2007). McNemar's exact test per seed asks whether those two trained networks
differ on these images: it says nothing about pretraining in general, and is not in the headline.
Arms without seeds in common are unpaired: Welch's interval over runs, from MIN_SEEDS runs an arm.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..records import UNSEEN_PREFIX, FinishedRun
from ..training.metrics import expected_calibration_error
from .records import Aggregate, ArmSummary, Calibration, Gain

PREDICTIONS_FILE = "val_predictions.csv"
MIN_SEEDS = 3  # fewer: no interval for the gain, only each seed's over images
RESAMPLES = 1_000  # the bootstraps (the calibration error's, the IQM's)
BOOTSTRAP_SEED = 0  # the report is a function of the runs: the same runs give the same interval
CROSSED = ("mean of the seeds x images table of paired differences +- t x SE, SE^2 = seed variance / n + "
           "(image mean square - residual mean square) / (n N) (two-way random effects, seeds crossed with "
           "images), Satterthwaite's degrees of freedom")


@dataclass(frozen=True)
class Predictions:
    """One run's per-image results, in the order of `ids` (sorted)."""
    ids: list[str]
    correct: np.ndarray
    confidence: np.ndarray | None  # None (with the two below): a file without these columns
    true_probability: np.ndarray | None  # None: a run written before these were recorded
    squared_probabilities: np.ndarray | None


def read_predictions(folder: Path) -> Predictions | None:
    """A run's val_predictions.csv, sorted by image id (None when the run has none)."""
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["id"])
    def column(key: str) -> np.ndarray | None:
        return np.array([float(r[key]) for r in rows], dtype=np.float64) if rows and key in rows[0] else None
    return Predictions([r["id"] for r in rows], np.array([r["label"] == r["predicted"] for r in rows], dtype=bool),
                       column("confidence"), column("true_probability"), column("squared_probabilities"))


def seed_of(run: FinishedRun):
    return (run.settings.get("train") or {}).get("seed")


@dataclass(frozen=True)
class Crossed:
    """The mean of a seeds x images table with its standard error and degrees of freedom."""
    mean: float
    standard_error: float
    degrees_of_freedom: float

    def interval(self) -> list[float]:
        half = float(stats.t.ppf(0.975, self.degrees_of_freedom)) * self.standard_error
        return [self.mean - half, self.mean + half]


def crossed(d: np.ndarray) -> Crossed:
    """See the module's docstring; `d` is seeds x images (one seed: the images' paired t)."""
    n, N = d.shape
    rows = d.mean(axis=1)
    if n == 1:
        return Crossed(float(rows[0]), float(d[0].std(ddof=1) / np.sqrt(N)), float(N - 1))
    columns, grand = d.mean(axis=0), float(d.mean())
    ms_img = n * columns.var(ddof=1)
    ms_res = float(((d - rows[:, None] - columns[None, :] + grand) ** 2).sum()) / ((n - 1) * (N - 1))
    seed_part, image_part = rows.var(ddof=1) / n, max(0.0, ms_img - ms_res) / (n * N)
    total = seed_part + image_part
    if total == 0:
        return Crossed(grand, 0.0, float(n - 1))
    df_image = (ms_img - ms_res) ** 2 / (ms_img ** 2 / (N - 1) + ms_res ** 2 / ((n - 1) * (N - 1))) if image_part else 1
    df = total ** 2 / (seed_part ** 2 / (n - 1) + (image_part ** 2 / df_image if image_part else 0.0))
    return Crossed(grand, float(np.sqrt(total)), float(df))


def per_seed_intervals(d: np.ndarray) -> list[list[float]]:
    """Each seed's gain over its images alone: a paired t interval (conditional on that seed's networks)."""
    return [crossed(row[None, :]).interval() for row in d]


def paired_gain(pretrained: list[FinishedRun], scratch: list[FinishedRun]) -> Gain:
    """The gain of pretraining between two arms' runs, with its interval (see the module's
    docstring); its arms and headline are the caller's to fill in."""
    points = float(100 * (np.mean([r.metrics.final_val_acc for r in pretrained])
                          - np.mean([r.metrics.final_val_acc for r in scratch])))
    by_seed = ({seed_of(r): r for r in pretrained}, {seed_of(r): r for r in scratch})
    seeds = sorted((set(by_seed[0]) & set(by_seed[1])) - {None})
    predictions = {id(r): read_predictions(r.folder) for r in pretrained + scratch}
    if any(v is None for v in predictions.values()):
        return Gain(points, ci_method=f"none: a run has no {PREDICTIONS_FILE} to pair images with",
                    interval="none")
    if seeds and len({tuple(predictions[id(r)].ids) for r in pretrained + scratch}) == 1:
        return _paired([(predictions[id(by_seed[0][s])], predictions[id(by_seed[1][s])]) for s in seeds],
                       seeds, unpaired_runs=len(pretrained) + len(scratch) - 2 * len(seeds))
    return _unpaired(points, [r.metrics.final_val_acc for r in pretrained], [r.metrics.final_val_acc for r in scratch])


def _paired(pairs: list[tuple[Predictions, Predictions]], seeds: list, unpaired_runs: int) -> Gain:
    ids = pairs[0][0].ids
    p = np.array([a.correct for a, _ in pairs], dtype=np.float64)  # seeds x images, 1 = right
    s = np.array([b.correct for _, b in pairs], dtype=np.float64)
    d = 100 * (p - s)
    n, N = d.shape
    gain = crossed(d)
    per_seed = d.mean(axis=1)
    valid = n >= MIN_SEEDS
    if valid:
        method = f"{CROSSED} ({n} seeds x {N} images)"
    else:
        method = (f"no interval for the gain: {n} seed{'s' * (n != 1)}, and training randomness needs at least "
                  f"{MIN_SEEDS} to be bounded; each seed's gain has a paired t interval over its {N} images, which is "
                  f"conditional on that seed's trained networks")
    if unpaired_runs:
        method += f"; {unpaired_runs} run(s) without a partner seed left out"
    unseen = np.array([Path(i).name.startswith(UNSEEN_PREFIX) for i in ids])
    unseen_gain = crossed(d[:, unseen]) if unseen.sum() >= 2 else None
    mcnemar = []
    for a, b in zip(p, s):
        only_p, only_s = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        mcnemar.append(float(stats.binomtest(only_p, only_p + only_s).pvalue) if only_p + only_s else 1.0)
    return Gain(gain.mean, ci_method=method, final_val_acc_ci95=gain.interval() if valid else None,
                interval="seeds and images" if valid else "per seed, images only",
                standard_error_points=gain.standard_error, degrees_of_freedom=gain.degrees_of_freedom,
                per_seed_final_val_acc_points=[float(g) for g in per_seed],
                per_seed_image_ci95=per_seed_intervals(d), paired_seeds=seeds,
                seeds_better=int(np.sum(per_seed > 0)), mcnemar_p=mcnemar, images=N, paired=True,
                unseen_by_imagenet_val_acc_points=None if unseen_gain is None else unseen_gain.mean,
                unseen_by_imagenet_ci95=unseen_gain.interval() if unseen_gain is not None and valid else None,
                calibration=_calibration(pairs, valid))


def _calibration(pairs: list[tuple[Predictions, Predictions]], valid: bool) -> Calibration | None:
    """Pretrained minus scratch: log loss and Brier score per image (the crossed interval), and the
    equal-mass calibration error (a pigeonhole bootstrap: seeds and images resampled apart)."""
    if any(r.true_probability is None or r.squared_probabilities is None or r.confidence is None
           for pair in pairs for r in pair):
        return None

    def table(value):
        return np.array([value(a) - value(b) for a, b in pairs])
    nll = crossed(table(lambda r: -np.log(np.clip(r.true_probability, 1e-12, None))))
    brier = crossed(table(lambda r: 1 - 2 * r.true_probability + r.squared_probabilities))
    ece = [expected_calibration_error(a.confidence, a.correct) - expected_calibration_error(b.confidence, b.correct)
           for a, b in pairs]
    ece_ci = None
    if valid:  # seeds and images resampled apart, 100 resamples at a time (the errors of each computed together)
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        n, N = len(pairs), len(pairs[0][0].ids)
        arms = [(np.array([a.confidence for a in side]), np.array([a.correct for a in side])) for side in zip(*pairs)]
        draws = []
        for _ in range(RESAMPLES // 100):
            rows, cols = rng.integers(0, n, (100, n)), rng.integers(0, N, (100, 1, N))
            errors = [expected_calibration_error(conf[rows[..., None], cols], right[rows[..., None], cols])
                      for conf, right in arms]  # 100 x n each
            draws += list((errors[0] - errors[1]).mean(axis=1))
        ece_ci = [float(v) for v in np.percentile(draws, [2.5, 97.5])]
    return Calibration(nll_difference=nll.mean, nll_ci95=nll.interval() if valid else None,
                       brier_difference=brier.mean, brier_ci95=brier.interval() if valid else None,
                       ece_difference=float(np.mean(ece)), ece_ci95=ece_ci)


def _unpaired(points: float, pretrained: list[float], scratch: list[float]) -> Gain:
    if min(len(pretrained), len(scratch)) >= MIN_SEEDS:
        ci = stats.ttest_ind(100 * np.array(pretrained), 100 * np.array(scratch), equal_var=False).confidence_interval()
        return Gain(points, ci_method=(f"unpaired (the arms share no seed): Welch's interval over {len(pretrained)} and "
                                       f"{len(scratch)} runs (scipy.stats.ttest_ind); it covers training randomness, "
                                       f"not which images the validation set holds"),
                    interval="runs", final_val_acc_ci95=[float(ci.low), float(ci.high)])
    return Gain(points, interval="none", ci_method=(
        f"none: the arms share no seed, and an unpaired interval needs {MIN_SEEDS} runs an arm (they have "
        f"{len(pretrained)} and {len(scratch)}); run both arms with the same SEEDS"))


def headline(gain: Gain, arms: dict[str, ArmSummary]) -> str:
    """The comparison in one line, e.g. `gain of pretraining +12.4 points of final validation
    accuracy (95% CI +9.8 to +15.1 over training runs and validation images; 5 seeds x 3,929 images;
    pretrained better on 5/5 seeds)`; with fewer than MIN_SEEDS seeds, each seed's gain over its
    images, said to be conditional on those networks."""
    pretrained, scratch = gain.arms
    text = (f"gain of pretraining {gain.final_val_acc_points:+.1f} points of final validation accuracy"
            + ("" if (pretrained, scratch) == ("pretrained", "scratch") else f" ({pretrained} vs {scratch})"))
    if gain.paired and gain.final_val_acc_ci95 is None:
        n = len(gain.paired_seeds)
        each = ", ".join(f"{g:+.1f} ({low:+.1f} to {high:+.1f})"
                         for g, (low, high) in zip(gain.per_seed_final_val_acc_points, gain.per_seed_image_ci95))
        return (f"{text} with {n} seed{'s' * (n != 1)}: per seed {each} (95% intervals over the {gain.images:,} images "
                f"alone, conditional on these trained networks); training randomness is not bounded below "
                f"{MIN_SEEDS} seeds: run SEEDS with {MIN_SEEDS} or more (5 for a claim)")
    if gain.final_val_acc_ci95 is None:
        return text + f" (no interval: {gain.ci_method.removeprefix('none: ')})"
    low, high = gain.final_val_acc_ci95
    if gain.paired:
        n = len(gain.paired_seeds)
        detail = (f"over training runs and validation images; {n} seeds x {gain.images:,} images; pretrained better "
                  f"on {gain.seeds_better}/{n} seeds")
    else:
        detail = f"over training runs only, unpaired: {arms[pretrained].seeds} and {arms[scratch].seeds} runs"
    return f"{text} (95% CI {low:+.1f} to {high:+.1f} {detail})"


def _pooled_iqm(*samples, axis=-1):
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


MIN_IQM_SEEDS = 5  # the IQM's bootstrap resamples seeds only: below this many a dataset, no interval


def aggregate(gains: dict[str, Gain | None]) -> Aggregate:
    """The gain over datasets (`gains`: dataset -> its gain, None where it has none), two ways:

    - on these datasets (fixed effects): the mean of the datasets' gains, SE^2 = sum SE_i^2 / k^2,
      Satterthwaite's degrees of freedom over the datasets' own: it covers each dataset's seeds and
      images, the datasets taken as given;
    - for a new dataset like these (random effects): DerSimonian and Laird's between-dataset
      variance with Hartung and Knapp's interval (statsmodels' combine_effects; t with k - 1 degrees
      of freedom), which also covers which datasets were chosen. Two datasets give a very wide one.

    Besides: the interquartile mean of every seed's gain pooled over datasets (rliable's IQM,
    scipy.stats.trim_mean) with a stratified bootstrap over seeds, printed from MIN_IQM_SEEDS seeds a
    dataset (it leaves out the images), the median dataset, and on how many datasets the gain is
    above or below 0 after Holm's correction for testing each (statsmodels' multipletests), instead
    of counting intervals that exclude 0."""
    have = {n: g for n, g in gains.items() if g}
    counts = {"datasets": len(gains), "datasets_with_gain": len(have),
              "datasets_without_gain": sorted(set(gains) - set(have))}
    if not have:
        return Aggregate(**counts, mean_gain_points=None, iqm_gain_points=None, median_gain_points=None,
                         ci_method="none: no dataset has a gain")
    values = np.array([g.final_val_acc_points for g in have.values()])
    scores = [np.asarray(g.per_seed_final_val_acc_points or [g.final_val_acc_points], dtype=np.float64)
              for g in have.values()]
    seeds = min(len(s) for s in scores)
    result = {"mean_gain_points": float(values.mean()), "iqm_gain_points": float(_pooled_iqm(*scores)),
              "median_gain_points": float(np.median(values)), "seeds_per_dataset": seeds}
    methods = []
    with_se = all(g.standard_error_points is not None and g.paired for g in have.values())
    if with_se and seeds >= MIN_SEEDS:
        k = len(have)
        se = np.array([g.standard_error_points for g in have.values()])
        dfs = np.array([g.degrees_of_freedom for g in have.values()])
        var = float((se ** 2).sum()) / k ** 2
        df = var ** 2 / float(((se ** 2 / k ** 2) ** 2 / dfs).sum()) if var > 0 else np.inf
        half = float(stats.t.ppf(0.975, df)) * np.sqrt(var)
        result["fixed_effects_ci95"] = [result["mean_gain_points"] - half, result["mean_gain_points"] + half]
        methods.append("on these datasets (fixed effects): each dataset's interval combined, SE^2 = sum SE_i^2 / "
                       f"{k}^2, Satterthwaite's degrees of freedom; it covers seeds and images")
        if k >= 2:
            from statsmodels.stats.meta_analysis import combine_effects

            combined = combine_effects(values, se ** 2, method_re="dl", use_t=True)
            low, high = combined.conf_int(use_t=True)[3]  # random effects, Hartung-Knapp (HKSJ)
            result.update(random_effects_ci95=[float(low), float(high)],
                          between_datasets_sd_points=float(np.sqrt(combined.tau2)))
            methods.append(f"for a new dataset like these (random effects): DerSimonian-Laird between-dataset "
                           f"variance, Hartung-Knapp interval with {k - 1} degree(s) of freedom; it also covers "
                           f"which datasets were chosen")
        p_values = [2 * stats.t.sf(abs(g.final_val_acc_points / g.standard_error_points), g.degrees_of_freedom)
                    if g.standard_error_points else 1.0 for g in have.values()]
        from statsmodels.stats.multitest import multipletests

        reject = multipletests(p_values, alpha=0.05, method="holm")[0]
        result.update(datasets_above_0_holm=int(sum(r and v > 0 for r, v in zip(reject, values))),
                      datasets_below_0_holm=int(sum(r and v < 0 for r, v in zip(reject, values))))
        methods.append("above or below 0: each dataset's t test, Holm-corrected over the datasets (family-wise 5%)")
    else:
        fewest = min((g.paired_seeds and len(g.paired_seeds)) or 0 for g in have.values())
        methods.append(f"no interval over datasets: a dataset has {fewest} paired seed(s) (or unpaired arms), and its "
                       f"own gain needs {MIN_SEEDS} to bound training randomness; its per-seed intervals cover its "
                       f"images only")
    if seeds >= MIN_IQM_SEEDS:
        low, high = stats.bootstrap(tuple(scores), _pooled_iqm, vectorized=True, n_resamples=RESAMPLES, batch=500,
                                    method="percentile",
                                    random_state=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
        result["iqm_gain_ci95"] = [float(low), float(high)]
        methods.append("the IQM's: a stratified bootstrap over each dataset's seeds (rliable's), seeds only")
    else:
        methods.append(f"the IQM's: not given below {MIN_IQM_SEEDS} seeds a dataset (its bootstrap resamples seeds "
                       f"only, and is too narrow with few)")
    return Aggregate(**counts, **result, ci_method="; ".join(methods))
