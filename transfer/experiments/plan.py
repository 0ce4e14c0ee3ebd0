"""What an experiment runs and where each run lives: the arms, the sweep, the seeds, and the
folder layout that the runner writes and the report reads.

    OUT/<arm>[/seed<N>]                      without a sweep
    OUT/<key>=<value>/<arm>[/seed<N>]        with SWEEP='key=v1,v2,...', plus OUT/sweep.json
    <base>/tune/<k>=<v>[/<k2>=<v2>]/<arm>[/seed<N>]   with TUNE (tuning.py), in each of the above bases

An arm is a config shipped with the package (transfer/configs/<arm>.yaml; configs/ holds the
same files, to read and copy), so the arms work from any folder and from a non-editable install.
"""
from __future__ import annotations

import itertools
import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..config import dump_yaml, load_config
from ..errors import ConfigError
from ..records import is_finished

ARMS = ("pretrained", "pretrained_strong", "scratch", "scratch_strong", "probe")  # the shipped arms, in report order
SWEEP_FILE = "sweep.json"


def arm_config(arm: str) -> Path:
    """The shipped config of an arm (a file inside the installed package)."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r} in ARMS; choose from: {', '.join(ARMS)}")
    return Path(str(resources.files("transfer") / "configs" / f"{arm}.yaml"))


def value_text(value) -> str:
    return "null" if value is None else str(value)


def value_folder(out: Path, key: str, value) -> Path:
    return Path(out) / f"{key}={value_text(value)}"


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
class Sweep:
    key: str
    values: list  # typed as YAML

    @classmethod
    def parse(cls, text: str) -> "Sweep":
        """'data.train_per_class=5,20,null' -> Sweep('data.train_per_class', [5, 20, None])."""
        return cls(*_axis(text, "SWEEP", "data.train_per_class=5,20,null"))


@dataclass(frozen=True)
class Grid:
    """TUNE='optim.lr=1e-4,1e-3;optim.weight_decay=0,1e-4': every combination of the keys' values,
    the last key varying fastest."""
    axes: tuple[tuple[str, tuple], ...]

    @classmethod
    def parse(cls, text: str, name: str = "TUNE") -> "Grid":
        axes = [_axis(part, name, "optim.lr=1e-4,3e-4,1e-3") for part in text.split(";") if part.strip()]
        if not axes:
            raise ConfigError(f"{name}={text!r} names no key; e.g. {name}='optim.lr=1e-4,3e-4,1e-3'")
        keys = [k for k, _ in axes]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{name}={text!r} names a key twice")
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


def read_sweep(out: Path) -> dict | None:
    """OUT/sweep.json: {"key", "values", "arms", "seeds"}, or None for a plain comparison."""
    path = Path(out) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True, eq=False)
class Job:
    arm: str
    value: object  # the swept value, or None without a sweep
    seed: int | None
    folder: Path
    args: tuple[str, ...]  # the training command line's arguments (after `-m transfer`)
    settings: dict  # the run's config.yaml, as it will be written (nested, YAML types)
    tuning: dict | None = None  # a tuning run: its grid point

    def label(self, key: str | None) -> str:
        parts = ([f"tuning {', '.join(setting_args(self.tuning))}"] if self.tuning is not None else []) + [self.arm] + (
            [f"{key}={value_text(self.value)}"] if key else []) + ([f"seed {self.seed}"] if self.seed is not None else [])
        return ", ".join(parts)


def bases(out: Path, sweep: Sweep | None) -> list[tuple[object, Path, list[str]]]:
    """(swept value, its folder, its setting) per point of the sweep; one (None, out, []) without."""
    if sweep is None:
        return [(None, Path(out), [])]
    return [(v, value_folder(out, sweep.key, v), [f"{sweep.key}={value_text(v)}"]) for v in sweep.values]


def make_job(arm: str, value, seed: int | None, folder: Path, run_args: list[str], tuning: dict | None = None) -> Job:
    """One run; its settings are loaded (and so checked) now, once, not when it starts."""
    config = arm_config(arm)
    run_args = [*run_args, *([f"train.seed={seed}"] if seed is not None else [])]
    settings = yaml.safe_load(dump_yaml(load_config(config, [*run_args, f"output_dir={folder}"])))
    return Job(arm, value, seed, folder, ("--config", str(config), *run_args, f"output_dir={folder}",
                                          "train.resume=auto"), settings, tuning)


def plan(out: Path, arms: list[str], seeds: list[int], overrides: list[str], sweep: Sweep | None,
         chosen: dict | None = None) -> list[Job]:
    """Every reported run, with its folder and arguments; the settings of every run are checked
    here, before any run starts. `chosen` (TUNE): base folder -> arm -> the settings tuning chose
    for it; an arm without a choice there is not planned."""
    jobs = []
    for value, base, extra in bases(out, sweep):
        for arm in arms:
            if chosen is not None and arm not in chosen.get(base, {}):
                continue
            tuned = setting_args(chosen[base][arm]) if chosen is not None else []
            jobs += [make_job(arm, value, seed, run_folder(base, arm, seed), [*overrides, *extra, *tuned])
                     for seed in seeds or [None]]
    return jobs


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
    seeds: tuple[int, ...] = ()  # empty: each arm's config seed, one run per arm
    sweep: Sweep | None = None
    tune: Grid | None = None  # TUNE: the grid every arm is tuned over, on the selection split
    jobs: int = 1  # runs at a time
    gpus: tuple[str, ...] = ()  # one run per GPU (CUDA_VISIBLE_DEVICES); sets jobs to their number
    print_jobs: bool = False  # print the runs as shell commands instead of running them
    overwrite: bool = False  # retrain finished runs
    launch: tuple[str, ...] = ()  # the launcher command; () = PYTHON -m accelerate.commands.launch

    @classmethod
    def from_environ(cls, env: dict, python: str) -> "CompareSpec":
        arms = tuple(env.get("ARMS", "pretrained scratch").split())
        if not arms:
            raise ConfigError("ARMS is empty; name one or more of: " + ", ".join(ARMS))
        for arm in arms:
            arm_config(arm)
        seeds = _integers(env, "SEEDS")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"SEEDS={env['SEEDS']!r} repeats a seed")
        jobs = _integers(env, "JOBS") or [1]
        if len(jobs) != 1 or jobs[0] < 1:
            raise ConfigError(f"JOBS={env.get('JOBS')!r} is invalid; expected one whole number >= 1")
        launch = tuple(shlex.split(env.get("LAUNCH", ""))) or (env.get("PYTHON") or python, "-m",
                                                                 "accelerate.commands.launch")
        return cls(Path(env.get("OUT") or "runs/compare").absolute(), arms, tuple(seeds),
                   Sweep.parse(env["SWEEP"]) if env.get("SWEEP") else None,
                   Grid.parse(env["TUNE"]) if env.get("TUNE", "").strip() else None, jobs[0], tuple(env.get("GPUS", "").split()),
                   _boolean(env, "PRINT_JOBS"), _boolean(env, "OVERWRITE"), launch)
