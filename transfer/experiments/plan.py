"""What an experiment runs: the runs of every arm, seed, dataset of a suite and point of a sweep,
each a Job with its folder (layout.py), command-line arguments and settings, loaded and so checked
before any run starts."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import dump_yaml, load_config
from ..errors import ConfigError
from .arms import arm_config
from .grid import Grid, setting_args, setting_text
from .layout import point_folder, run_folder
from .suites import SOURCE_KEYS, Suite


@dataclass(frozen=True)
class Base:
    """Where one set of arms runs, and what puts its runs there."""
    folder: Path
    dataset: str | None = None  # the suite's dataset
    entry: tuple[str, ...] = ()  # the dataset's settings, as key=value
    point: dict = field(default_factory=dict)  # the swept keys' values

    def describe(self) -> str:
        """' at pets, data.train_per_class=10', or '' for a plain comparison."""
        parts = ([self.dataset] if self.dataset else []) + setting_args(self.point)
        return f" at {', '.join(parts)}" if parts else ""

@dataclass(frozen=True, eq=False)
class Job:
    arm: str
    base: Base  # where it runs: its dataset and swept values
    seed: int | None
    folder: Path
    args: tuple[str, ...]  # the training command line's arguments (after `-m transfer`)
    settings: dict  # the run's config.yaml, as it will be written (nested, YAML types)
    tuning: dict | None = None  # a tuning run: its grid point

    def label(self) -> str:
        parts = ([f"tuning {', '.join(setting_args(self.tuning))}"] if self.tuning is not None else []) + (
            [self.base.dataset] if self.base.dataset else []) + [self.arm] + setting_args(self.base.point) + (
            [f"seed {self.seed}"] if self.seed is not None else [])
        return ", ".join(parts)

def bases(out: Path, sweep: Grid | None, suite: Suite | None = None) -> list[Base]:
    """Every base folder: per dataset of the suite (or OUT alone), per point of the sweep (or once)."""
    result = []
    for name, entry in (suite.datasets.items() if suite else [(None, {})]):
        for point in (sweep.points() if sweep else [{}]):
            folder = point_folder(Path(out) / name if name else Path(out), point)
            result.append(Base(folder, name, tuple(f"{k}={setting_text(v)}" for k, v in entry.items()), point))
    return result

def make_job(arm: str, base: Base, seed: int | None, folder: Path, run_args: list[str], tuning: dict | None = None) -> Job:
    """One run; its settings are loaded (and so checked) now, once, not when it starts. An error
    that the dataset's entry causes is named with the dataset; one from the command line is not."""
    config = arm_config(arm)
    run_args = [*run_args, *([f"train.seed={seed}"] if seed is not None else [])]
    try:
        settings = yaml.safe_load(dump_yaml(load_config(config, [*run_args, f"output_dir={folder}"])))
    except ConfigError as e:
        if base.dataset is None:
            raise
        try:  # the same settings without the dataset's entry: if they load, the entry is what is wrong
            load_config(config, [*(a for a in run_args if a not in base.entry), f"output_dir={folder}"])
        except ConfigError:
            raise e from None
        raise ConfigError(f"dataset {base.dataset} (SUITE): {e}") from None
    return Job(arm, base, seed, folder, ("--config", str(config), *run_args, f"output_dir={folder}",
                                               "train.resume=auto"), settings, tuning)

def run_args(base: Base, overrides: list[str], tuned: list[str] = ()) -> list[str]:
    """A run's key=value: the dataset's entry, the command line's, the swept values, the tuned ones
    (a later one wins)."""
    return [*base.entry, *overrides, *setting_args(base.point), *tuned]

def plan(bases_: list[Base], arms: list[str], seeds: list[int], overrides: list[str], chosen: dict | None = None) -> list[Job]:
    """Every reported run, with its folder and arguments; the settings of every run are checked
    here, before any run starts. `chosen` (TUNE): base folder -> arm -> the settings tuning chose
    for it; an arm without a choice there is not planned."""
    jobs = []
    for base in bases_:
        for arm in arms:
            if chosen is not None and arm not in chosen.get(base.folder, {}):
                continue
            tuned = setting_args(chosen[base.folder][arm]) if chosen is not None else []
            jobs += [make_job(arm, base, seed, run_folder(base.folder, arm, seed), run_args(base, overrides, tuned))
                     for seed in seeds or [None]]
    return jobs

def check_overrides(suite: Suite | None, sweep: Grid | None, overrides: list[str]) -> None:
    """With a suite, a key that names a dataset's images is set per dataset, never for all from the
    command line, and a swept key is not also set by a dataset."""
    if suite is None:
        return
    def setter(key: str) -> str | None:
        return next((name for name, entry in suite.datasets.items() if key in entry), None)

    given = {o.partition("=")[0].strip() for o in overrides}
    for key in [k for k in SOURCE_KEYS if k in given and setter(k)]:
        raise ConfigError(f"{key} is set per dataset by SUITE={suite.file} (dataset {setter(key)}); remove it "
                          f"from the command line, or change it in the suite file")
    for key in [k for k in (sweep.keys if sweep else []) if setter(k)]:
        raise ConfigError(f"SWEEP's {key} is also set by dataset {setter(key)} in SUITE={suite.file}; sweep it, or "
                          f"set it per dataset, not both")
