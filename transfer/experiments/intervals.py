"""How sure the gain of pretraining is: paired by seed, on the same validation images, with a 95%
interval that covers both the training randomness (seeds) and which images the validation set
happened to hold. The headline is the final accuracy of the fixed schedule, never an epoch picked
on the images it is scored on.

The method (`ci_method` in summary.json names the one a report used):
- Per seed, the gain is pretrained minus scratch final accuracy in points, on the same images
  (each run's val_predictions.csv, matched by image id); runs pair up by `train.seed`.
- Image sampling: a paired bootstrap over the validation images (scipy.stats.bootstrap, BCa,
  9,999 resamples, a fixed seed) of the seed-averaged per-image difference: the same resampled
  images for both arms and every seed.
- With one seed that bootstrap is the interval. With several, the seeds' spread adds its own
  variance (s^2/n; independent of the image sampling, which is fixed across seeds), and the
  interval is mean +- t SE with Welch-Satterthwaite's degrees of freedom (scipy.stats.t): the
  two-level decomposition of Bouthillier et al. 2021, "Accounting for variance in machine learning
  benchmarks".
- Per seed, McNemar's exact test (scipy.stats.binomtest) on the images exactly one arm gets right.
- Arms without seeds in common are unpaired: Welch's interval over runs (scipy.stats.ttest_ind)
  when each has two or more, else an unpaired bootstrap over the two runs' images; said so.
"""
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import stats

from ..records import FinishedRun
from .records import Aggregate, ArmSummary, Gain

PREDICTIONS_FILE = "val_predictions.csv"
RESAMPLES = 9_999
BOOTSTRAP_SEED = 0  # the report is a function of the runs: the same runs give the same interval


def correct_by_image(folder: Path) -> dict[str, bool] | None:
    """Image id -> right or wrong at the end of the run, from its val_predictions.csv (None when
    the run has none)."""
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return {row["id"]: row["label"] == row["predicted"] for row in csv.DictReader(f)}


def seed_of(run: FinishedRun):
    return (run.settings.get("train") or {}).get("seed")


def _bootstrap(samples: tuple, statistic, paired: bool):
    def run(method: str):
        return stats.bootstrap(samples, statistic, paired=paired, vectorized=True, n_resamples=RESAMPLES,
                               batch=500, method=method, random_state=np.random.default_rng(BOOTSTRAP_SEED))
    if all(np.all(s == s[0]) for s in samples):  # nothing varies (identical arms): no spread to resample
        value = float(statistic(*samples, axis=-1))
        return SimpleNamespace(confidence_interval=(value, value), standard_error=0.0)
    result = run("BCa")
    if not np.all(np.isfinite(result.confidence_interval)):  # BCa's jackknife can degenerate on 0/1 data
        result = run("percentile")
    return result


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_gain(pretrained: list[FinishedRun], scratch: list[FinishedRun]) -> Gain:
    """The gain of pretraining between two arms' runs, with its interval (see the module's
    docstring); its arms and headline are the caller's to fill in."""
    points = 100 * (np.mean([r.metrics.final_val_acc for r in pretrained])
                    - np.mean([r.metrics.final_val_acc for r in scratch]))
    by_seed = ({seed_of(r): r for r in pretrained}, {seed_of(r): r for r in scratch})
    seeds = sorted((set(by_seed[0]) & set(by_seed[1])) - {None})
    predictions = {id(r): correct_by_image(r.folder) for r in pretrained + scratch}
    if any(v is None for v in predictions.values()):
        return Gain(float(points), ci_method=f"none: a run has no {PREDICTIONS_FILE} to pair images with")
    if seeds and len({frozenset(predictions[id(r)]) for r in pretrained + scratch}) == 1:
        return _paired([(predictions[id(by_seed[0][s])], predictions[id(by_seed[1][s])]) for s in seeds],
                       seeds, unpaired_runs=len(pretrained) + len(scratch) - 2 * len(seeds))
    return _unpaired(float(points), [predictions[id(r)] for r in pretrained], [predictions[id(r)] for r in scratch])


def _paired(pairs: list[tuple[dict, dict]], seeds: list, unpaired_runs: int) -> Gain:
    ids = sorted(pairs[0][0])
    p = np.array([[a[i] for i in ids] for a, _ in pairs], dtype=np.float64)  # seeds x images, 1 = right
    s = np.array([[b[i] for i in ids] for _, b in pairs], dtype=np.float64)
    per_seed = 100 * (p.mean(axis=1) - s.mean(axis=1))
    mean = float(per_seed.mean())
    images = _bootstrap((100 * (p - s).mean(axis=0),), lambda d, axis=-1: np.mean(d, axis=axis), paired=True)
    n = len(seeds)
    if n == 1:
        low, high = images.confidence_interval
        se, df = float(images.standard_error), np.inf
        method = (f"paired bootstrap over the {len(ids)} validation images (scipy.stats.bootstrap, BCa, "
                  f"{RESAMPLES} resamples); one seed, so training randomness is not in it")
    else:
        seed_var, image_var = float(per_seed.var(ddof=1)) / n, float(images.standard_error) ** 2
        total = seed_var + image_var
        df = total ** 2 / (seed_var ** 2 / (n - 1)) if seed_var > 0 else np.inf  # Welch-Satterthwaite
        se = total ** 0.5
        half = float(stats.t.ppf(0.975, df)) * se
        low, high = mean - half, mean + half
        method = (f"mean of {n} paired seeds +- t x SE, SE^2 = seed variance / {n} + image variance from a paired "
                  f"bootstrap over the {len(ids)} validation images (scipy.stats.bootstrap, BCa, {RESAMPLES} "
                  f"resamples); Welch-Satterthwaite degrees of freedom")
    if unpaired_runs:
        method += f"; {unpaired_runs} run(s) without a partner seed left out"
    mcnemar = []
    for a, b in zip(p, s):
        only_p, only_s = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
        mcnemar.append(float(stats.binomtest(only_p, only_p + only_s).pvalue) if only_p + only_s else 1.0)
    return Gain(mean, ci_method=method, final_val_acc_ci95=[float(low), float(high)], standard_error_points=float(se),
                degrees_of_freedom=float(df), per_seed_final_val_acc_points=[float(g) for g in per_seed],
                paired_seeds=seeds, seeds_better=int(np.sum(per_seed > 0)), mcnemar_p=mcnemar, images=len(ids),
                paired=True)


def _unpaired(points: float, pretrained: list[dict], scratch: list[dict]) -> Gain:
    accs = [[100 * np.mean(list(c.values())) for c in arm] for arm in (pretrained, scratch)]
    if min(len(a) for a in accs) >= 2:
        interval = stats.ttest_ind(accs[0], accs[1], equal_var=False).confidence_interval(0.95)
        low, high = interval.low, interval.high
        method = (f"unpaired (the arms share no seed): Welch's interval over {len(accs[0])} and {len(accs[1])} runs "
                  f"(scipy.stats.ttest_ind); image sampling is not in it")
    else:
        a = 100 * np.array(list(pretrained[0].values()), dtype=np.float64)
        b = 100 * np.array(list(scratch[0].values()), dtype=np.float64)
        low, high = _bootstrap((a, b), _mean_difference, paired=False).confidence_interval
        method = ("unpaired (the arms share no seed, or no images): bootstrap over each run's validation images "
                  f"(scipy.stats.bootstrap, BCa, {RESAMPLES} resamples); training randomness is not in it")
    return Gain(points, ci_method=method, final_val_acc_ci95=[float(low), float(high)], images=len(pretrained[0]))


def headline(gain: Gain, arms: dict[str, ArmSummary]) -> str:
    """The comparison in one line, e.g. `gain +12.4 points (95% CI +9.8 to +15.1; 3 seeds x 3,929
    images; pretrained better on 3/3 seeds)`."""
    pretrained, scratch = gain.arms
    text = (f"gain of pretraining {gain.final_val_acc_points:+.1f} points of final validation accuracy"
            + ("" if (pretrained, scratch) == ("pretrained", "scratch") else f" ({pretrained} vs {scratch})"))
    if gain.final_val_acc_ci95 is None:
        return text + f" (no interval: {gain.ci_method.removeprefix('none: ')})"
    low, high = gain.final_val_acc_ci95
    if gain.paired:
        n = len(gain.paired_seeds)
        detail = (f"{n} seed{'s' * (n != 1)} x {gain.images:,} images; pretrained better on "
                  f"{gain.seeds_better}/{n} seed{'s' * (n != 1)}")
    else:
        detail = f"unpaired: {arms[pretrained].seeds} and {arms[scratch].seeds} runs without common seeds"
    return f"{text} (95% CI {low:+.1f} to {high:+.1f}; {detail})"


def _pooled_iqm(*samples, axis=-1):
    return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)


def aggregate(gains: dict[str, Gain | None]) -> Aggregate:
    """The gain over datasets, as rliable sums up scores over tasks (Agarwal et al. 2021): the mean
    over datasets of each one's mean gain, the interquartile mean of every seed's gain pooled over
    datasets (scipy.stats.trim_mean, 25% cut at each end: rliable's aggregate_iqm), the median
    dataset, and on how many datasets the gain's own 95% interval excludes 0. `gains`: dataset ->
    its gain, None where it has none.

    Intervals, the datasets taken as fixed: the mean's combines the datasets' own (each covers its
    seeds and its images): SE^2 = sum of SE_i^2 / k^2, Welch-Satterthwaite degrees of freedom, the
    same two-level method as one dataset's. The IQM's is rliable's stratified bootstrap (each
    dataset's per-seed gains resampled on their own: scipy.stats.bootstrap, one sample per
    dataset), which covers the seeds only, and is too narrow with few: it needs 2 seeds a dataset,
    and is reported with that warning below 5."""
    have = {n: g for n, g in gains.items() if g}
    counts = {"datasets": len(gains), "datasets_with_gain": len(have),
              "datasets_without_gain": sorted(set(gains) - set(have))}
    if not have:
        return Aggregate(**counts, mean_gain_points=None, iqm_gain_points=None, median_gain_points=None,
                         datasets_gain_ci_excludes_0=0, datasets_gain_ci_above_0=0, datasets_gain_ci_below_0=0,
                         ci_method="none: no dataset has a gain")
    scores = [np.asarray(g.per_seed_final_val_acc_points or [g.final_val_acc_points], dtype=np.float64)
              for g in have.values()]
    intervals = [g.final_val_acc_ci95 for g in have.values()]
    above = sum(1 for ci in intervals if ci and ci[0] > 0)
    below = sum(1 for ci in intervals if ci and ci[1] < 0)
    mean = float(np.mean([g.final_val_acc_points for g in have.values()]))
    methods, mean_ci, iqm_ci = [], None, None
    if all(g.standard_error_points is not None for g in have.values()):
        k, parts = len(have), [(g.standard_error_points ** 2, g.degrees_of_freedom) for g in have.values()]
        var = sum(v for v, _ in parts) / k ** 2
        tail = sum((v / k ** 2) ** 2 / d for v, d in parts if np.isfinite(d) and d > 0)
        df = var ** 2 / tail if tail > 0 else np.inf
        half = float(stats.t.ppf(0.975, df)) * var ** 0.5
        mean_ci = [mean - half, mean + half]
        methods.append(f"the mean's: the datasets' own intervals combined (SE^2 = sum of SE_i^2 / {k}^2, "
                       f"Welch-Satterthwaite degrees of freedom; each dataset's seeds and images)")
    else:
        methods.append("the mean's: none (a dataset's gain is unpaired, so it has no standard error to combine)")
    seeds = min(len(s) for s in scores)
    if seeds >= 2:
        low, high = _bootstrap(tuple(scores), _pooled_iqm, paired=False).confidence_interval
        iqm_ci = [float(low), float(high)]
        methods.append(f"the IQM's: rliable's stratified bootstrap over each dataset's seeds (scipy.stats.bootstrap, "
                       f"BCa, {RESAMPLES} resamples), seeds only" + (
                           f", and too narrow with {seeds} seeds a dataset: trust the mean's" if seeds < 5 else ""))
    else:
        methods.append("the IQM's: none (rliable's bootstrap needs two or more paired seeds on every dataset)")
    return Aggregate(**counts, mean_gain_points=mean, iqm_gain_points=float(_pooled_iqm(*scores)),
                     median_gain_points=float(np.median([g.final_val_acc_points for g in have.values()])),
                     datasets_gain_ci_excludes_0=above + below, datasets_gain_ci_above_0=above,
                     datasets_gain_ci_below_0=below, ci_method="; ".join(methods) + "; the datasets are taken as fixed",
                     mean_gain_ci95=mean_ci, iqm_gain_ci95=iqm_ci)
