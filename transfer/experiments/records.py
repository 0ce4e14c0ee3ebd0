"""What an experiment's report says, typed: the summary of a comparison (its arms, the gains of
pretraining, a sweep's points, a tuned grid) and of a suite (a row per dataset, the gain over
datasets). summary.json is written from these and read back into them (`read_summary`), so a
renamed field fails at once, naming the key, instead of when a report is rendered. No torch.

    OUT/summary.json   Summary (a comparison or a sweep), or SuiteSummary ({"suite": ...})

The keys are the documented ones of docs/experiments.md; `version` says which layout a file has.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import write_json
from ..records import read_record

SUMMARY_FILE = "summary.json"
SUMMARY_VERSION = 3  # 2: before the suite's prediction interval and the gain's variance parts (rebuild it)
FRACTIONS = (0.5, 0.8, 0.9)  # "time to reach X of the best accuracy"


@dataclass(frozen=True)
class TuningPoint:
    """One point of a tuned grid for one arm: its selection-split score (the mean over the tuning
    seeds that finished), or None (none finished)."""
    setting: dict
    select_acc: float | None
    select_loss: float | None
    run: str | None  # the first tuning run's folder, None when none finished
    runs: list[str] = field(default_factory=list)  # every finished tuning run of the point
    standard_error: float | None = None  # of select_acc: over the tuning seeds, or binomial with one
    indistinguishable: bool = False  # within one standard error of the chosen point's score


@dataclass(frozen=True)
class ArmTuning:
    """TUNE, for one arm: every point on the tuning seeds, and the setting its reported runs train with."""
    seed: int | None  # the first tuning seed
    keys: list[str]
    points: list[TuningPoint]
    chosen: dict | None  # None: no point of the arm finished
    seeds: list[int] = field(default_factory=list)  # the tuning seeds (TUNE_SEEDS): never reported


@dataclass(frozen=True)
class ArmSummary:
    """One arm over its seeds: accuracies are fractions, mean / std (ddof 1) / min / max."""
    runs: list[str]
    seeds: int
    seed_values: list[int]
    best_val_acc: float
    best_val_acc_std: float
    best_val_acc_min: float
    best_val_acc_max: float
    final_val_acc: float
    final_val_acc_std: float
    final_val_acc_min: float
    final_val_acc_max: float
    train_seconds: float
    train_seconds_std: float
    epochs: float
    weights: list[str]
    best_chosen_on: list[str]
    final_val_ece: float | None
    final_val_ece_std: float | None
    peak_lr: list[float]
    lr_found: bool
    train_images_per_s: float | None
    seconds_to_50pct_of_best: float | None
    seconds_to_80pct_of_best: float | None
    seconds_to_90pct_of_best: float | None
    unseen_by_imagenet_val_acc: float | None = None
    unseen_by_imagenet_val_acc_std: float | None = None
    unseen_by_imagenet_samples: int | None = None
    train_samples: float | None = None  # training images a run used, mean over seeds
    tuned: ArmTuning | None = None
    executions: list[str] = field(default_factory=list)  # what its runs ran on: device, precision, processes

    def seconds_to(self, fraction: float) -> float | None:
        return getattr(self, f"seconds_to_{int(fraction * 100)}pct_of_best")


@dataclass(frozen=True)
class Calibration:
    """Pretrained minus scratch (negative: pretrained better calibrated): mean log loss of the true
    class (nats) and mean Brier score, with 95% intervals from MIN_SEEDS paired seeds, and the
    equal-mass expected calibration error (no interval: intervals._calibration says why)."""
    nll_difference: float
    brier_difference: float
    ece_difference: float
    nll_ci95: list[float] | None = None
    brier_ci95: list[float] | None = None


@dataclass(frozen=True)
class SeedsForTarget:
    """How many seeds (at these validation images) would bring the gain's 95% interval to a half-width
    of `half_width_points` (TARGET_HALF_WIDTH): `seeds`, or None when no number would (the images
    alone leave `image_floor_points` with endless seeds). intervals.seeds_for says how."""
    half_width_points: float
    seeds: int | None
    image_floor_points: float
    current_half_width_points: float
    current_seeds: int


@dataclass(frozen=True)
class Gain:
    """The gain of pretraining between two arms, in points of final validation accuracy, with how
    sure it is (intervals.py says how each field is computed; `ci_method` says it in words)."""
    final_val_acc_points: float
    ci_method: str
    interval: str = "none"  # what final_val_acc_ci95 covers: seeds and images / runs / per seed, images only / none
    arms: list[str] = field(default_factory=lambda: ["pretrained", "scratch"])
    headline: str = ""
    best_val_acc_points: float | None = None
    final_val_acc_ci95: list[float] | None = None  # None below MIN_SEEDS paired seeds
    standard_error_points: float | None = None
    degrees_of_freedom: float | None = None
    # SE^2 = seed_variance_points2 / seeds + image_variance_points2 (paired, from 2 seeds): what more seeds would buy
    seed_variance_points2: float | None = None
    residual_variance_points2: float | None = None  # MS_res / images: the least a seed's gain varies by
    image_variance_points2: float | None = None
    image_degrees_of_freedom: float | None = None
    per_seed_final_val_acc_points: list[float] | None = None
    per_seed_image_ci95: list[list[float]] | None = None  # each seed's, over its images alone (conditional)
    paired_seeds: list[int] | None = None
    seeds_better: int | None = None
    mcnemar_p: list[float] | None = None  # per seed: do these two trained networks differ on these images?
    images: int | None = None
    paired: bool = False
    unseen_by_imagenet_val_acc_points: float | None = None
    unseen_by_imagenet_ci95: list[float] | None = None
    calibration: Calibration | None = None
    seeds_for_target: SeedsForTarget | None = None  # set by the report (report.build's target_half_width)


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its settings (`value`: the first swept key's), arms, gain, and the
    planned runs that did not finish."""
    setting: dict
    value: object
    folder: str
    arms: dict[str, ArmSummary]
    gain: Gain | None
    missing: list[str]


@dataclass(frozen=True)
class Verdict:
    """At one value of a data or time axis: has scratch caught up? `verdict`: "caught up" (the gain
    is below the margin), "behind" (above 0), "undetermined" (tested for both, neither shown), or
    "not tested" (the caught-up sequence stopped above it, and it was not shown behind; or it has
    no interval). sweep_report.verdicts says how the error rate is held."""
    value: object
    verdict: str
    smallest_margin_points: float | None  # the smallest margin "caught up" could have been shown within


@dataclass(frozen=True)
class Trend:
    """The points' gains against log10 of the resource: the least-squares slope (points a decade)
    with its 95% CI (None unless every point has an interval)."""
    x: str  # what the slope is against
    slope_points_per_decade: float
    ci95: list[float] | None
    observations: int  # the points it is fitted through


@dataclass(frozen=True)
class SweepLine:
    """One line of a sweep (the other keys' values): verdicts from the largest value down, and the trend."""
    others: dict
    verdicts: list[Verdict]
    trend: Trend | None = None


@dataclass(frozen=True)
class Sweep:
    key: str
    values: list
    axes: list  # [[key, [values]], ...]: the grid, first key on the x axis
    points: list[SweepPoint]
    lines: list[SweepLine] = field(default_factory=list)  # verdicts and trends (data and time axes only)
    margin_points: float = 1.0  # "caught up": the gain's interval lies below this

    def with_runs(self) -> list[SweepPoint]:
        """The points that have at least one finished run, in sweep order."""
        return [p for p in self.points if p.arms]

    def curves(self) -> list[tuple[dict, list[SweepPoint]]]:
        """(the other keys' values, its points in the first key's order) per line of the curve."""
        groups: dict = {}
        for p in self.points:
            others = {k: v for k, v in p.setting.items() if k != self.key}
            groups.setdefault(repr(others), (others, []))[1].append(p)
        return list(groups.values())


@dataclass(frozen=True)
class Summary:
    """A comparison (or a sweep, reported at its last point with runs): summary.json."""
    arms: dict[str, ArmSummary]
    differing_settings: dict[str, dict]
    gains: list[Gain] = field(default_factory=list)
    gain: Gain | None = None  # the first of `gains` (plain arms before the strong ones)
    sweep: Sweep | None = None
    version: int = SUMMARY_VERSION


@dataclass(frozen=True)
class Aggregate:
    """The gain over a suite's datasets (intervals.aggregate says how). Every number is finite or
    None (JSON has no NaN): None where it cannot be computed, `ci_method` says why."""
    datasets: int
    datasets_with_gain: int
    datasets_without_gain: list[str]
    mean_gain_points: float | None  # the plain mean of the datasets' gains
    iqm_gain_points: float | None
    median_gain_points: float | None
    ci_method: str
    seeds_per_dataset: int = 0  # the fewest a dataset has
    fixed_effects_ci95: list[float] | None = None  # mean_gain_points's, of these datasets (their seeds and images)
    random_effects_ci95: list[float] | None = None  # mean_gain_points's, over datasets like these (from 2)
    between_datasets_sd_points: float | None = None  # tau: the spread of datasets' true gains (>= 0)
    prediction_interval95: list[float] | None = None  # a new dataset's gain, from 3 datasets
    datasets_above_0_holm: int | None = None  # gains above 0 after Holm's correction over datasets
    datasets_below_0_holm: int | None = None


@dataclass(frozen=True)
class DatasetResult:
    """One dataset of a suite at one point: its suite entry, arms, gain, missing runs, report."""
    settings: dict  # the suite file's entry for it
    setting: dict  # the swept point ({} without a sweep)
    arms: dict[str, ArmSummary]
    gain: Gain | None
    missing: list[str]
    report: str | None  # its report.md, relative to OUT; None without a finished run


@dataclass(frozen=True)
class SuitePoint:
    setting: dict
    datasets: dict[str, DatasetResult]
    aggregate: Aggregate


@dataclass(frozen=True)
class Suite:
    """A suite, shown at `at` (the last swept point with runs; {} without a sweep)."""
    file: str
    arms: list[str]
    seeds: list[int]
    axes: list | None
    datasets: dict[str, DatasetResult]
    aggregate: Aggregate
    at: dict
    points: list[SuitePoint] | None = None  # with a sweep: every point


@dataclass(frozen=True)
class SuiteSummary:
    suite: Suite
    version: int = SUMMARY_VERSION


def write_summary(out: Path, summary: Summary | SuiteSummary) -> None:
    write_json(Path(out) / SUMMARY_FILE, asdict(summary), allow_nan=False)  # a number it cannot give is None


def read_summary(out: Path) -> Summary | SuiteSummary:
    """OUT/summary.json, typed; a file of another layout is a DataError naming the key."""
    return read_record(lambda raw: SuiteSummary if isinstance(raw, dict) and "suite" in raw else Summary,
                       Path(out) / SUMMARY_FILE, "a comparison's summary")
