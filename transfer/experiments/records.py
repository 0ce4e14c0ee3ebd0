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
SUMMARY_VERSION = 2  # 1: before the types (no "version" key), read as 2 (the same keys)
FRACTIONS = (0.5, 0.8, 0.9)  # "time to reach X of the best accuracy"


@dataclass(frozen=True)
class TuningPoint:
    """One point of a tuned grid for one arm: its selection-split score, or None (not finished)."""
    setting: dict
    select_acc: float | None
    select_loss: float | None
    run: str | None  # the tuning run's folder, None when it did not finish


@dataclass(frozen=True)
class ArmTuning:
    """TUNE, for one arm: every point on `seed`, and the setting its reported runs train with."""
    seed: int | None
    keys: list[str]
    points: list[TuningPoint]
    chosen: dict | None  # None: no point of the arm finished


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
    tuned: ArmTuning | None = None

    def seconds_to(self, fraction: float) -> float | None:
        return getattr(self, f"seconds_to_{int(fraction * 100)}pct_of_best")


@dataclass(frozen=True)
class Gain:
    """The gain of pretraining between two arms, in points of final validation accuracy, with how
    sure it is (intervals.py says how each field is computed; `ci_method` says it in words)."""
    final_val_acc_points: float
    ci_method: str
    arms: list[str] = field(default_factory=lambda: ["pretrained", "scratch"])
    headline: str = ""
    best_val_acc_points: float | None = None
    final_val_acc_ci95: list[float] | None = None
    standard_error_points: float | None = None
    degrees_of_freedom: float | None = None
    per_seed_final_val_acc_points: list[float] | None = None
    paired_seeds: list[int] | None = None
    seeds_better: int | None = None
    mcnemar_p: list[float] | None = None
    images: int | None = None
    paired: bool = False
    unseen_by_imagenet_val_acc_points: float | None = None


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
class CatchUp:
    """Along one line of a sweep (the other keys' values): the first value where scratch caught up."""
    others: dict
    at: object


@dataclass(frozen=True)
class Sweep:
    key: str
    values: list
    axes: list  # [[key, [values]], ...]: the grid, first key on the x axis
    points: list[SweepPoint]
    catch_up: list[CatchUp]
    scratch_within_1_point_at: object = None

    def with_runs(self) -> list[SweepPoint]:
        """The points that have at least one finished run, in sweep order."""
        return [p for p in self.points if p.arms]

    def lines(self) -> list[tuple[dict, list[SweepPoint]]]:
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
    """The gain over a suite's datasets (intervals.aggregate says how)."""
    datasets: int
    datasets_with_gain: int
    datasets_without_gain: list[str]
    mean_gain_points: float | None
    iqm_gain_points: float | None
    median_gain_points: float | None
    datasets_gain_ci_excludes_0: int
    datasets_gain_ci_above_0: int
    datasets_gain_ci_below_0: int
    ci_method: str
    mean_gain_ci95: list[float] | None = None
    iqm_gain_ci95: list[float] | None = None


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
    write_json(Path(out) / SUMMARY_FILE, asdict(summary))


def read_summary(out: Path) -> Summary | SuiteSummary:
    """OUT/summary.json, typed; a file of another layout is a DataError naming the key."""
    return read_record(lambda raw: SuiteSummary if isinstance(raw, dict) and "suite" in raw else Summary,
                       Path(out) / SUMMARY_FILE, "a comparison's summary")
