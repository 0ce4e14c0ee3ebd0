"""What an experiment runs and where each run lives: the arms, the datasets of a suite, the sweep,
the seeds, and the folder layout that the runner writes and the report reads.

    OUT/<arm>[/seed<N>]                                  a plain comparison
    OUT/<key>=<value>[/<key2>=<value2>]/<arm>[/seed<N>]   with SWEEP='key=v1,v2,...[;key2=...]', plus OUT/sweep.json
    OUT/<dataset>/...                                    with SUITE=suites/<name>.yaml: each dataset's folder is one
                                                         of the above (its own sweep.json), plus OUT/suite.json
    <base>/tune/<k>=<v>[/<k2>=<v2>]/<arm>[/seed<N>]       with TUNE (tuning.py), in each base folder above

A base folder is where one set of arms runs: OUT, or one dataset, or one point of the sweep (of
one dataset). An arm is a config shipped with the package (transfer/configs/<arm>.yaml; configs/
holds the same files, to read and copy), so the arms work from any folder and from a non-editable
install.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from ..config import dump_yaml, flatten, load_config
from ..errors import ConfigError
from ..records import is_finished

ARMS = ("pretrained", "pretrained_strong", "scratch", "scratch_strong", "probe")  # the shipped arms, in report order
# compare.sh without SEEDS: the fewest seeds whose gain has a valid interval (intervals.MIN_SEEDS); 5 for a claim
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TUNE_SEEDS = (1000,)  # TUNE chooses on seeds that are not reported (tuning.py)
SWEEP_FILE = "sweep.json"
SUITE_FILE = "suite.json"
# what names a dataset's images: set per dataset by a suite, so not also on the command line
SOURCE_KEYS = ("data.dataset", "data.dataset_config", "data.root", "data.url", "data.sha256", "data.train_split",
               "data.val_split", "data.image_column", "data.label_column")


def arm_config(arm: str) -> Path:
    """The shipped config of an arm (a file inside the installed package)."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r} in ARMS; choose from: {', '.join(ARMS)}")
    return Path(str(resources.files("transfer") / "configs" / f"{arm}.yaml"))


def value_text(value) -> str:
    return "null" if value is None else str(value)


def value_folder(out: Path, key: str, value) -> Path:
    return Path(out) / f"{key}={value_text(value)}"


def point_folder(root: Path, point: dict) -> Path:
    """root/<key>=<value>/<key2>=<value2>/...: where a grid point's runs live under `root`."""
    folder = Path(root)
    for key, value in point.items():
        folder = value_folder(folder, key, value)
    return folder


def run_folder(base: Path, arm: str, seed: int | None) -> Path:
    return base / arm / f"seed{seed}" if seed is not None else base / arm


def find_runs(folder: Path) -> dict[str, list[Path]]:
    """arm -> finished run folders (one per seed), shipped arms first, then by name."""
    arms = {}
    for arm_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        runs = [arm_dir] if is_finished(arm_dir) else sorted(
            (p for p in arm_dir.glob("seed*") if is_finished(p) and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
        if runs:
            arms[arm_dir.name] = runs
    order = {name: i for i, name in enumerate(ARMS)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _axis(text: str, name: str, example: str) -> tuple[str, list]:
    """'data.train_per_class=5,20,null' -> ('data.train_per_class', [5, 20, None]), values typed as YAML."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"{name}={text!r} is not of the form key=v1,v2,... (e.g. {example})")
    parsed = [yaml.safe_load(v.strip()) if v.strip() else None for v in values.split(",")]
    if len({repr(v) for v in parsed}) != len(parsed):
        raise ConfigError(f"{name}={text!r} repeats a value")
    return key.strip(), parsed


@dataclass(frozen=True)
class Grid:
    """TUNE='optim.lr=1e-4,1e-3;optim.weight_decay=0,1e-4' or SWEEP='data.train_per_class=10,100;
    model.name=resnet18,resnet50': every combination of the keys' values, the last key varying
    fastest."""
    axes: tuple[tuple[str, tuple], ...]

    @classmethod
    def parse(cls, text: str, name: str = "TUNE", example: str = "optim.lr=1e-4,3e-4,1e-3") -> "Grid":
        axes = [_axis(part, name, example) for part in text.split(";") if part.strip()]
        if not axes:
            raise ConfigError(f"{name}={text!r} names no key; e.g. {name}='{example}'")
        keys = [k for k, _ in axes]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{name}={text!r} names a key twice")
        return cls(tuple((k, tuple(v)) for k, v in axes))

    @classmethod
    def from_json(cls, axes: list) -> "Grid":
        return cls(tuple((k, tuple(v)) for k, v in axes))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.axes]

    def points(self) -> list[dict]:
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*(v for _, v in self.axes))]

    def to_json(self) -> list:
        return [[k, list(v)] for k, v in self.axes]


def setting_args(point: dict) -> list[str]:
    """{'optim.lr': 0.001} -> ['optim.lr=0.001'], as a command line gives them."""
    return [f"{k}={value_text(v)}" for k, v in point.items()]


def setting_text(value) -> str:
    """A YAML value as a command line's key=value gives it, read back the same by load_config: a
    string that would read as another type ("1", "null") is quoted."""
    if isinstance(value, str):
        try:
            plain = isinstance(yaml.safe_load(value), str)
        except yaml.YAMLError:
            plain = True
        return value if plain else json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value_text(value)


def read_sweep(out: Path) -> dict | None:
    """OUT/sweep.json: {"axes": [[key, values], ...], "key", "values" (the first axis), "arms",
    "seeds"}, or None for a plain comparison. A file from before grids (no "axes") reads as one axis."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    meta.setdefault("axes", [[meta["key"], meta["values"]]])
    return meta


def sweep_meta(grid: Grid, arms: list[str], seeds: list[int]) -> dict:
    return {"axes": grid.to_json(), "key": grid.keys[0], "values": list(grid.axes[0][1]), "arms": list(arms),
            "seeds": list(seeds)}


def read_suite(out: Path) -> dict | None:
    """OUT/suite.json: {"file", "datasets": {name: {key: value}}, "arms", "seeds", "sweep": axes or
    null}, or None when OUT is not a suite."""
    path = Path(out) / SUITE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Suite:
    """SUITE=suites/natural.yaml: datasets by name, each with the settings that point a run at it.

        settings: {data.image_size: 160}               # optional: for every dataset
        datasets:
          pets:    {data.dataset: timm/oxford-iiit-pet, data.val_split: test}
          flowers: {data.dataset: dpdl-benchmark/oxford_flowers102}
    """
    file: Path
    datasets: dict  # name -> {dotted key: YAML value}, the suite's `settings` first

    @classmethod
    def load(cls, file: str | Path) -> "Suite":
        path = Path(file)
        where = f"SUITE={file}"
        if not path.is_file():
            raise ConfigError(f"{where} does not exist; give a suite file (see suites/ for examples)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ConfigError(f"{where} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}: fix the "
                              f"syntax") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), dict) or not raw["datasets"]:
            raise ConfigError(f"{where} must be a mapping with `datasets:`, one entry per dataset "
                              f"(e.g. `pets: {{data.dataset: timm/oxford-iiit-pet}}`)")
        unknown = sorted(set(raw) - {"datasets", "settings"})
        if unknown:
            raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r}; a suite has `datasets:` and, "
                              f"optionally, `settings:` for every dataset")
        common = cls._entry(where, "settings", raw.get("settings"))
        datasets = {}
        for name, entry in raw["datasets"].items():
            name = str(name)
            if not NAME.fullmatch(name) or name in (*ARMS, "tune"):
                raise ConfigError(f"{where}: dataset name {name!r} is not usable as a folder name; use letters, "
                                  f"digits, '_', '-' and '.', not an arm's name nor 'tune'")
            datasets[name] = {**common, **cls._entry(where, f"dataset {name}", entry)}
        return cls(path, datasets)

    @staticmethod
    def _entry(where: str, what: str, entry) -> dict:
        if entry is None:
            return {}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: {what} must be a mapping of key: value (e.g. data.dataset: beans), "
                              f"not {type(entry).__name__}")
        flat = flatten(entry)
        for key, value in flat.items():
            if isinstance(value, (list, tuple, set)):
                raise ConfigError(f"{where}: {what}: {key} must be one value, not a list")
        return flat

    def to_json(self) -> dict:
        return {"file": str(self.file), "datasets": self.datasets}


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


# ---------------------------------------------------------------------------- compare.sh's environment

BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


def _boolean(env: dict, name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text not in BOOLEANS:
        raise ConfigError(f"{name}={env[name]!r} is invalid; use 1, true or yes (on) or 0, false or no (off)")
    return BOOLEANS[text]


def _integers(env: dict, name: str) -> list[int]:
    try:
        return [int(s) for s in env.get(name, "").split()]
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r} is invalid; expected whole numbers separated by spaces") from None


@dataclass(frozen=True)
class CompareSpec:
    """scripts/compare.sh's settings, read from its environment as strictly as the YAML: an
    unreadable value is one line naming the variable (exit 2), never a silent default."""
    out: Path
    arms: tuple[str, ...] = ("pretrained", "scratch")
    seeds: tuple[int, ...] = ()  # empty (SEEDS= set but empty): each arm's config seed, one run per arm, no
    # interval; SEEDS unset: DEFAULT_SEEDS
    sweep: Grid | None = None  # SWEEP: the grid every arm runs at each point of
    tune: Grid | None = None  # TUNE: the grid every arm is tuned over, on the selection split
    suite: Suite | None = None  # SUITE: the datasets, each its own comparison
    jobs: int = 1  # runs at a time
    gpus: tuple[str, ...] = ()  # one run per GPU (CUDA_VISIBLE_DEVICES); sets jobs to their number
    print_jobs: bool = False  # print the runs as shell commands instead of running them
    overwrite: bool = False  # retrain finished runs
    launch: tuple[str, ...] = ()  # the launcher command; () = PYTHON -m accelerate.commands.launch
    tune_seeds: tuple[int, ...] = DEFAULT_TUNE_SEEDS  # TUNE_SEEDS: the tuning runs' seeds, never among `seeds`

    def bases(self) -> list[Base]:
        return bases(self.out, self.sweep, self.suite)

    @classmethod
    def from_environ(cls, env: dict, python: str) -> "CompareSpec":
        arms = tuple(env.get("ARMS", "pretrained scratch").split())
        if not arms:
            raise ConfigError("ARMS is empty; name one or more of: " + ", ".join(ARMS))
        for arm in arms:
            arm_config(arm)
        seeds = _integers(env, "SEEDS") if "SEEDS" in env else list(DEFAULT_SEEDS)  # set but empty: the configs' seed
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"SEEDS={env['SEEDS']!r} repeats a seed")
        jobs = _integers(env, "JOBS") or [1]
        if len(jobs) != 1 or jobs[0] < 1:
            raise ConfigError(f"JOBS={env.get('JOBS')!r} is invalid; expected one whole number >= 1")
        launch = tuple(shlex.split(env.get("LAUNCH", ""))) or (env.get("PYTHON") or python, "-m",
                                                                 "accelerate.commands.launch")
        tune_seeds = _integers(env, "TUNE_SEEDS") if env.get("TUNE_SEEDS", "").strip() else list(DEFAULT_TUNE_SEEDS)
        if set(tune_seeds) & set(seeds) or len(set(tune_seeds)) != len(tune_seeds):
            raise ConfigError(f"TUNE_SEEDS={' '.join(map(str, tune_seeds))!r} repeats a seed or shares one with "
                              f"SEEDS={' '.join(map(str, seeds))!r}; the tuning seeds must not be reported (a choice "
                              f"made on a reported seed flatters it): pick others")
        return cls(Path(env.get("OUT") or "runs/compare").absolute(), arms, tuple(seeds),
                   Grid.parse(env["SWEEP"], "SWEEP", "data.train_per_class=5,20,null") if env.get("SWEEP", "").strip()
                   else None,
                   Grid.parse(env["TUNE"]) if env.get("TUNE", "").strip() else None,
                   Suite.load(env["SUITE"]) if env.get("SUITE", "").strip() else None, jobs[0],
                   tuple(env.get("GPUS", "").split()), _boolean(env, "PRINT_JOBS"), _boolean(env, "OVERWRITE"), launch,
                   tune_seeds=tuple(tune_seeds))
