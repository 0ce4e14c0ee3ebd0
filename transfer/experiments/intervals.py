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
(tests/experiments/test_coverage.py) it covers the true gain 94-96% of the time at 3 and 5 seeds
whether seeds, images or pure churn dominate; with the seed part's n - 1 alone it over-covers when
images dominate. The table: docs/experiments.md.

Below MIN_SEEDS seeds there is no interval for the gain: training randomness cannot be bounded from
one or two draws. Each seed's gain then gets its own interval over images alone (a paired t over
the per-image differences), which is conditional on those trained networks, and says so.

The same table, restricted to the images ImageNet's training set does not hold, gives the
unseen-by-ImageNet gain; the per-image log loss and Brier score give their differences; the
calibration error (not a mean over images) gets no interval: no bootstrap we tried covers at 3
seeds. McNemar's exact test per seed asks whether those two trained networks differ on these
images: it says nothing about pretraining in general, and is not in the headline. The two variance
parts also say how many seeds would bring the interval to a target width (`seeds_for`). Over
datasets: `aggregate`. Every interval here is coverage-tested (tests/experiments/test_coverage.py).
Arms without seeds in common are unpaired: Welch's interval over runs, from MIN_SEEDS runs an arm.
"""
from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..records import UNSEEN_PREFIX, FinishedRun
from ..training.metrics import expected_calibration_error
from .records import Aggregate, ArmSummary, Calibration, Gain, SeedsForTarget

PREDICTIONS_FILE = "val_predictions.csv"
MIN_SEEDS = 3  # fewer: no interval for the gain, only each seed's over images
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
    """The mean of a seeds x images table with its standard error and degrees of freedom, and the
    two parts of its variance: SE^2 = seed_variance / n + image_variance (the image part does not
    shrink with more seeds, only with more images), so the standard error at any other number of
    seeds follows (`seeds_for`)."""
    mean: float
    standard_error: float
    degrees_of_freedom: float
    seeds: int = 1
    seed_variance: float = 0.0  # of one seed's gain (the per-seed gains' variance, ddof 1)
    residual_variance: float = 0.0  # MS_res / N: the least a seed's gain varies by, under the model
    image_variance: float = 0.0  # the image part of SE^2: (MS_img - MS_res) / (n N), at least 0
    image_degrees_of_freedom: float = 1.0
    images: int = 0

    def interval(self) -> list[float] | None:
        """The 95% interval; None when the table shows no variation to estimate one from (every
        paired difference the same): a zero-width interval would claim certainty."""
        if not self.standard_error > 0:
            return None
        half = float(stats.t.ppf(0.975, self.degrees_of_freedom)) * self.standard_error
        return [self.mean - half, self.mean + half]

    def floored_variance(self) -> float:
        """SE^2 with the seed part at least its residual noise (MS_res / N a seed): a smaller spread of
        the per-seed gains is chance (three seeds that agree to the image), unbiased for the gain's
        own t interval but, taken as a weight, it makes a dataset count without bound."""
        return max(self.seed_variance, self.residual_variance) / self.seeds + self.image_variance


def crossed(d: np.ndarray) -> Crossed:
    """See the module's docstring; `d` is seeds x images (one seed: the images' paired t)."""
    n, N = d.shape
    rows = d.mean(axis=1)
    if n == 1:
        return Crossed(float(rows[0]), float(d[0].std(ddof=1) / np.sqrt(N)), float(N - 1))
    columns, grand = d.mean(axis=0), float(d.mean())
    ms_img = n * columns.var(ddof=1)
    ms_res = float(((d - rows[:, None] - columns[None, :] + grand) ** 2).sum()) / ((n - 1) * (N - 1))
    seed_variance = float(rows.var(ddof=1))
    seed_part, image_part = seed_variance / n, max(0.0, ms_img - ms_res) / (n * N)
    total = seed_part + image_part
    df_image = _image_df(ms_img, ms_res, n, N) if image_part else 1
    parts = dict(seeds=n, seed_variance=seed_variance, residual_variance=float(ms_res / N),
                 image_variance=float(image_part), image_degrees_of_freedom=float(df_image), images=N)
    if total == 0:
        return Crossed(grand, 0.0, float(n - 1), **parts)
    return Crossed(grand, float(np.sqrt(total)), _satterthwaite(seed_part, n - 1, image_part, df_image), **parts)


def _image_df(ms_img: float, ms_res: float, n: int, N: int) -> float:
    """Satterthwaite's degrees of freedom of the image part, (MS_img - MS_res) / (n N), from its two mean squares."""
    return (ms_img - ms_res) ** 2 / (ms_img ** 2 / (N - 1) + ms_res ** 2 / ((n - 1) * (N - 1)))


def _satterthwaite(seed_part: float, seed_df: float, image_part: float, image_df: float) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of two variance estimates."""
    total = seed_part + image_part
    return float(total ** 2 / (seed_part ** 2 / seed_df + (image_part ** 2 / image_df if image_part else 0.0)))


MAX_SEEDS_PLANNED = 1000  # seeds_for looks no further


def seeds_for(gain: Crossed | None, target: float) -> SeedsForTarget | None:
    """Plug the variance parts measured at n seeds into SE^2(m) = seed_variance / m + image_variance
    and find the fewest m (from MIN_SEEDS) whose t-based half-width is at most `target`, with
    Satterthwaite's degrees of freedom at m seeds: the seed part's m - 1 and the image part's as its
    mean squares would give them at m seeds (E MS_img = s_res^2 + m s_img^2, E MS_res = s_res^2). A
    plug-in figure: with 3 seeds the seed variance is itself known only roughly (a chi-square on 2
    degrees of freedom), so take it as a guide. With endless seeds the images alone leave 1.96 x
    sqrt(image_variance)."""
    if gain is None or gain.seeds < 2 or not gain.standard_error > 0 or gain.images < 2:
        return None
    N, image = gain.images, gain.image_variance
    s_img, s_res = image * N, gain.residual_variance * N  # per-image variance components

    def half(m: int) -> float:
        seed_part = gain.seed_variance / m
        if image > 0:  # the mean squares m seeds would give: E MS_img = s_res^2 + m s_img^2, E MS_res = s_res^2
            df_image = _image_df(s_res + m * s_img, s_res, m, N)
            df = _satterthwaite(seed_part, m - 1, image, df_image) if seed_part else df_image
        else:
            df = m - 1
        return float(stats.t.ppf(0.975, df)) * float(np.sqrt(seed_part + image))
    floor = float(stats.norm.ppf(0.975) * np.sqrt(image))
    current = float(stats.t.ppf(0.975, gain.degrees_of_freedom) * gain.standard_error)
    found = next((m for m in range(MIN_SEEDS, MAX_SEEDS_PLANNED + 1) if half(m) <= target), None) \
        if floor < target else None
    return SeedsForTarget(float(target), found, floor, current, gain.seeds)


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
    gain = table_gain(d, seeds, unpaired_runs)
    valid = gain.final_val_acc_ci95 is not None
    unseen = np.array([Path(i).name.startswith(UNSEEN_PREFIX) for i in ids])
    unseen_gain = crossed(d[:, unseen]) if unseen.sum() >= 2 else None
    mcnemar = []
    for a, b in zip(p, s):
        only_p, only_s = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        mcnemar.append(float(stats.binomtest(only_p, only_p + only_s).pvalue) if only_p + only_s else 1.0)
    return dataclasses.replace(
        gain, mcnemar_p=mcnemar, unseen_by_imagenet_val_acc_points=None if unseen_gain is None else unseen_gain.mean,
        unseen_by_imagenet_ci95=unseen_gain.interval() if unseen_gain is not None and valid else None,
        calibration=_calibration(pairs, valid))


def table_gain(d: np.ndarray, seeds: list, unpaired_runs: int = 0) -> Gain:
    """The gain of a seeds x images table of paired differences (points): its crossed interval from
    MIN_SEEDS seeds, each seed's over its images, the variance parts (what more seeds would buy)."""
    n, N = d.shape
    gain = crossed(d)
    per_seed = d.mean(axis=1)
    valid = n >= MIN_SEEDS and gain.interval() is not None
    if valid:
        method = f"{CROSSED} ({n} seeds x {N} images)"
    elif n >= MIN_SEEDS:
        method = (f"no interval for the gain: the {n} seeds x {N} images table shows no variation to estimate one from "
                  f"(every seed's gain the same, and the images add nothing beyond that); a zero-width interval would "
                  f"claim certainty: run more seeds")
    else:
        method = (f"no interval for the gain: {n} seed{'s' * (n != 1)}, and training randomness needs at least "
                  f"{MIN_SEEDS} to be bounded; each seed's gain has a paired t interval over its {N} images, which is "
                  f"conditional on that seed's trained networks")
    if unpaired_runs:
        method += f"; {unpaired_runs} run(s) without a partner seed left out"
    parts = n > 1
    return Gain(gain.mean, ci_method=method, final_val_acc_ci95=gain.interval() if valid else None,
                interval="seeds and images" if valid else "per seed, images only",
                standard_error_points=gain.standard_error, degrees_of_freedom=gain.degrees_of_freedom,
                seed_variance_points2=gain.seed_variance if parts else None,
                residual_variance_points2=gain.residual_variance if parts else None,
                image_variance_points2=gain.image_variance if parts else None,
                image_degrees_of_freedom=gain.image_degrees_of_freedom if parts else None,
                per_seed_final_val_acc_points=[float(g) for g in per_seed],
                per_seed_image_ci95=per_seed_intervals(d), paired_seeds=list(seeds),
                seeds_better=int(np.sum(per_seed > 0)), images=N, paired=True)


def crossed_of(gain: Gain) -> Crossed | None:
    """The gain's crossed estimate back from its record (None: not a paired gain of 2 seeds or more)."""
    if not gain.paired or gain.seed_variance_points2 is None or gain.standard_error_points is None:
        return None
    return Crossed(gain.final_val_acc_points, gain.standard_error_points, gain.degrees_of_freedom,
                   len(gain.paired_seeds), gain.seed_variance_points2, gain.residual_variance_points2,
                   gain.image_variance_points2, gain.image_degrees_of_freedom, gain.images or 0)


def _calibration(pairs: list[tuple[Predictions, Predictions]], valid: bool) -> Calibration | None:
    """Pretrained minus scratch: log loss and Brier score per image (means over images: the crossed
    interval), and the equal-mass calibration error, without an interval: it is not a mean over
    images, so the crossed design does not apply, and a bootstrap over 3 seeds (resampling seeds
    and images apart or together) covers 75-83% when the seeds dominate (docs/experiments.md)."""
    if any(r.true_probability is None or r.squared_probabilities is None or r.confidence is None
           for pair in pairs for r in pair):
        return None

    def table(value):
        return np.array([value(a) - value(b) for a, b in pairs])
    nll = crossed(table(lambda r: -np.log(np.clip(r.true_probability, 1e-12, None))))
    brier = crossed(table(lambda r: 1 - 2 * r.true_probability + r.squared_probabilities))
    ece = [expected_calibration_error(a.confidence, a.correct) - expected_calibration_error(b.confidence, b.correct)
           for a, b in pairs]
    return Calibration(nll_difference=nll.mean, nll_ci95=nll.interval() if valid else None,
                       brier_difference=brier.mean, brier_ci95=brier.interval() if valid else None,
                       ece_difference=float(np.mean(ece)))


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


def span(ci: list[float] | None) -> str:
    """An interval in points, or why there is none."""
    return f"{ci[0]:+.1f} to {ci[1]:+.1f}" if ci else "no interval: no variation to estimate one from"


def headline(gain: Gain, arms: dict[str, ArmSummary]) -> str:
    """The comparison in one line, e.g. `gain of pretraining +12.4 points of final validation
    accuracy (95% CI +9.8 to +15.1 over training runs and validation images; 5 seeds x 3,929 images;
    pretrained better on 5/5 seeds)`; with fewer than MIN_SEEDS seeds, each seed's gain over its
    images, said to be conditional on those networks."""
    pretrained, scratch = gain.arms
    text = (f"gain of pretraining {gain.final_val_acc_points:+.1f} points of final validation accuracy"
            + ("" if (pretrained, scratch) == ("pretrained", "scratch") else f" ({pretrained} vs {scratch})"))
    if gain.paired and gain.final_val_acc_ci95 is None and len(gain.paired_seeds) < MIN_SEEDS:
        n = len(gain.paired_seeds)
        each = ", ".join(f"{g:+.1f} ({span(ci)})"
                         for g, ci in zip(gain.per_seed_final_val_acc_points, gain.per_seed_image_ci95))
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


MIN_PREDICTION_DATASETS = 3  # a new dataset's prediction interval: not from two


def aggregate(gains: dict[str, Gain | None]) -> Aggregate:
    """The gain over datasets (`gains`: dataset -> its gain, None where it has none): the mean of
    the datasets' gains, with intervals of three different things (their coverage, measured on
    synthetic suites: docs/experiments.md and tests/experiments/test_coverage.py):

    - of these datasets (fixed effects): SE^2 = sum SE_i^2 / k^2, Satterthwaite's degrees of freedom
      over the datasets' own; it covers each dataset's seeds and images, the datasets as given;
    - over datasets like these: each dataset's measured gain taken as a draw from the datasets like
      them (a random-effects model: its own true gain plus its noise), so the interval is Student's
      t over the k gains, k - 1 degrees of freedom, whatever the datasets' own errors, and never
      narrower than the interval of these datasets (gains that agree by chance made it so; the
      same guard as Hartung-Knapp's scale factor >= 1). It covers 97-100% at 2-5 datasets: that
      floor costs width. Not the weighted modified Hartung-Knapp interval: with 3 seeds a dataset
      the inverse-variance weights are noisy (each standard error has 2-3 degrees of freedom), and
      it covered 92% at 5 datasets with unequal errors;
    - a new dataset's gain, from MIN_PREDICTION_DATASETS datasets: the prediction interval of a new
      draw, mean +- t(k - 1) s sqrt(1 + 1/k), never narrower than the mean's. Higgins, Thompson and
      Spiegelhalter's (t with k - 2, tau^2 from the model) covered 91% at 5 datasets that differ.

    `between_datasets_sd_points` is the spread of the datasets' true gains: Paule and Mandel's
    tau^2 (statsmodels' combine_effects), never below 0 (its DerSimonian-Laird is negative whenever
    the datasets agree more than their errors, and then gave NaN).

    Besides, without intervals: the interquartile mean of every seed's gain pooled over datasets
    (rliable's IQM, scipy.stats.trim_mean) and the median dataset; and on how many datasets the gain
    is above or below 0 after Holm's correction for testing each, instead of counting intervals that
    exclude 0. The IQM gets no interval: rliable's bootstrap resamples seeds only and covers 75-88%
    at 5 seeds (it leaves out the images)."""
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
    result = {"mean_gain_points": float(values.mean()), "iqm_gain_points": float(stats.trim_mean(
        np.concatenate(scores), 0.25)), "median_gain_points": float(np.median(values)), "seeds_per_dataset": seeds}
    methods = []
    # a dataset whose 3 seeds agree to the image has no interval of its own (SE 0); here its seed
    # part is taken at its residual noise (Crossed.floored_variance), so one such dataset does not
    # take the suite's intervals away
    tables = [crossed_of(g) for g in have.values()]
    with_interval = all(c is not None and c.seeds >= MIN_SEEDS and c.floored_variance() > 0 for c in tables)
    if with_interval:
        k = len(have)
        se = np.array([c.standard_error if c.standard_error > 0 else np.sqrt(c.floored_variance())
                       for c in tables])
        dfs = np.array([c.degrees_of_freedom for c in tables])
        var = float((se ** 2).sum()) / k ** 2
        df = var ** 2 / float(((se ** 2 / k ** 2) ** 2 / dfs).sum())
        half = float(stats.t.ppf(0.975, df)) * np.sqrt(var)
        result["fixed_effects_ci95"] = [result["mean_gain_points"] - half, result["mean_gain_points"] + half]
        methods.append("the mean of these datasets' gains: each dataset's interval combined, SE^2 = sum SE_i^2 / "
                       f"{k}^2, Satterthwaite's degrees of freedom; it covers seeds and images, the datasets as given")
        if k >= 2:
            result.update(_random_effects(values, np.array([c.floored_variance() for c in tables]), half))
            methods.append(f"over datasets like these (random effects): each dataset's gain a draw, Student's t over "
                           f"the {k} gains ({k - 1} degree(s) of freedom); it also covers which datasets were chosen; "
                           f"the spread between datasets: Paule-Mandel (at least 0)")
            methods.append(f"a new dataset's gain: the prediction interval of a new draw, mean +- t s sqrt(1 + 1/{k})"
                           if k >= MIN_PREDICTION_DATASETS else
                           f"no prediction interval for a new dataset: it needs {MIN_PREDICTION_DATASETS} datasets")
        reject = holm([2 * stats.t.sf(abs(v / e), df) for v, e, df in zip(values, se, dfs)])
        result.update(datasets_above_0_holm=int(sum(r and v > 0 for r, v in zip(reject, values))),
                      datasets_below_0_holm=int(sum(r and v < 0 for r, v in zip(reject, values))))
        methods.append("above or below 0: each dataset's t test, Holm-corrected over the datasets (family-wise 5%)")
    else:
        fewest = min((g.paired_seeds and len(g.paired_seeds)) or 0 for g in have.values())
        methods.append(f"no interval over datasets: a dataset's gain has none ({fewest} paired seed(s) at the fewest, "
                       f"or unpaired arms, or no variation to estimate one from), and {MIN_SEEDS} seeds a dataset are "
                       f"needed to bound training randomness")
    methods.append("the interquartile mean and the median: no interval (a bootstrap over seeds alone under-covers)")
    return Aggregate(**counts, **result, ci_method="; ".join(methods))


def holm(p_values, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down rejections (family-wise error `alpha`). By hand, not statsmodels'
    multipletests: that calls gc.collect() on every call (56 ms; the coverage tests call it 10^4
    times); tests/experiments/test_intervals.py checks the two agree."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    passed = np.cumprod(p[order] <= alpha / (len(p) - np.arange(len(p)))).astype(bool)  # stops at the first failure
    reject = np.zeros(len(p), dtype=bool)
    reject[order] = passed
    return reject


def _random_effects(values: np.ndarray, variances: np.ndarray, these: float) -> dict:
    """Over datasets like these: the interval of the mean, tau, and (from MIN_PREDICTION_DATASETS)
    a new dataset's prediction interval; see `aggregate`. `variances`: each dataset's SE^2 with
    the seed part at least its residual noise (Crossed.floored_variance), for tau^2 alone."""
    from statsmodels.stats.meta_analysis import combine_effects

    k = len(values)
    with np.errstate(divide="ignore"):  # its I^2 divides by zero when the datasets agree; unused here
        tau2 = max(0.0, float(combine_effects(values, variances, method_re="iterated").tau2))  # Paule-Mandel: >= 0
    mean, spread = float(values.mean()), float(values.std(ddof=1))
    # never narrower than the interval of these datasets (`these`, its half-width): gains that agree by
    # chance made it so (the same guard as Hartung-Knapp's scale factor >= 1, and tau^2 >= 0)
    half = max(float(stats.t.ppf(0.975, k - 1)) * spread / np.sqrt(k), these)
    result = {"random_effects_ci95": possible(mean, half), "between_datasets_sd_points": float(np.sqrt(tau2))}
    if k >= MIN_PREDICTION_DATASETS:  # a new dataset's measured gain y_new: y_new - mean ~ s sqrt(1 + 1/k) t(k - 1)
        half = max(float(stats.t.ppf(0.975, k - 1)) * spread * np.sqrt(1 + 1 / k), half)
        result["prediction_interval95"] = possible(mean, half)
    return result


def possible(mean: float, half: float) -> list[float]:
    """mean +- half, within what a gain in accuracy points can be (-100 to +100): t with 1 or 2
    degrees of freedom reaches past it (two datasets whose gains are +40 and 0 gave -234 to +274),
    and cutting off the impossible part takes nothing from its coverage."""
    return [max(mean - half, -100.0), min(mean + half, 100.0)]
