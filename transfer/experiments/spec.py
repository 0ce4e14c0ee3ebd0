"""scripts/compare.sh's environment (OUT, ARMS, SEEDS, SWEEP, TUNE, TUNE_SEEDS, SUITE, JOBS, GPUS,
EXECUTOR, CLUSTER, PRINT_JOBS, OVERWRITE, PYTHON, LAUNCH, TARGET_HALF_WIDTH), read as strictly as the YAML: an
unreadable value is one line naming the variable (exit 2), never a silent default."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .arms import ARMS, arm_config
from .cluster import ClusterSpec
from .grid import Grid
from .plan import Base, bases
from .suites import Suite

# compare.sh without SEEDS: the fewest seeds whose gain has a valid interval (intervals.MIN_SEEDS); 5 for a claim
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TUNE_SEEDS = (1000,)  # TUNE chooses on seeds that are not reported (tuning.py)
DEFAULT_TARGET_HALF_WIDTH = 2.0  # points: the report says how many seeds would bring the gain's interval to +-this
BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


def visible_gpus(env: dict) -> tuple[str, ...]:
    """GPUS="0 1": the devices the runs get, one each (CUDA_VISIBLE_DEVICES values). Counted from 0
    within an inherited CUDA_VISIBLE_DEVICES (a SLURM allocation's, say), as CUDA counts them: with
    CUDA_VISIBLE_DEVICES=4,5, GPUS="0 1" means devices 4 and 5, and GPUS="2" is refused."""
    ids = env.get("GPUS", "").split()
    if not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"GPUS={env.get('GPUS')!r} is invalid; expected distinct device numbers, e.g. GPUS=\"0 1\"")
    inherited = env.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return tuple(ids)
    visible = [d.strip() for d in inherited.split(",") if d.strip()]
    missing = [i for i in ids if int(i) >= len(visible)]
    if missing:
        raise ConfigError(f"GPUS={env['GPUS']!r} names device {missing[0]}, but CUDA_VISIBLE_DEVICES={inherited!r} "
                          f"makes {len(visible)} visible; GPUS counts from 0 within them")
    return tuple(visible[int(i)] for i in ids)


def accelerate_processes(launch: tuple[str, ...], gpus: int, cluster: bool = False) -> tuple[str, ...]:
    """accelerate launch with one process a GPU the run has: GPUS gives a run one GPU, and an
    accelerate config for several processes would start them all on it; on SLURM a run gets
    CLUSTER's gpus_per_run of a node (several: one process each, DDP, on a port free on that node:
    two runs on one node would both take 29500). On SLURM a one-process run starts without a
    launcher: nothing stands between the scheduler's signals and the run. Another launcher is the
    user's to set."""
    if "accelerate.commands.launch" not in launch:
        return launch
    if cluster and gpus <= 1:
        return launch[:1]  # python -m transfer
    return (*launch, "--num_processes", str(max(gpus, 1)),
            *(["--multi_gpu", "--main_process_port", "0"] if gpus > 1 else []))


def _boolean(env: dict, name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text not in BOOLEANS:
        raise ConfigError(f"{name}={env[name]!r} is invalid; use 1, true or yes (on) or 0, false or no (off)")
    return BOOLEANS[text]

def target_half_width(env: dict) -> float:
    """TARGET_HALF_WIDTH: the gain's interval half-width, in points, that the report plans seeds for."""
    text = env.get("TARGET_HALF_WIDTH", "").strip()
    if not text:
        return DEFAULT_TARGET_HALF_WIDTH
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 100:
        raise ConfigError(f"TARGET_HALF_WIDTH={env['TARGET_HALF_WIDTH']!r} is invalid; expected points of accuracy "
                          f"between 0 and 100, e.g. TARGET_HALF_WIDTH=2")
    return value


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
    gpus: tuple[str, ...] = ()  # one run per GPU (its CUDA_VISIBLE_DEVICES value); sets jobs to their number
    print_jobs: bool = False  # print the runs as shell commands instead of running them
    overwrite: bool = False  # retrain finished runs
    launch: tuple[str, ...] = ()  # the launcher command; () = PYTHON -m accelerate.commands.launch --quiet
    tune_seeds: tuple[int, ...] = DEFAULT_TUNE_SEEDS  # TUNE_SEEDS: the tuning runs' seeds, never among `seeds`
    cluster: ClusterSpec | None = None  # EXECUTOR=slurm: CLUSTER's settings (cluster.py); None: this machine
    target_half_width: float = DEFAULT_TARGET_HALF_WIDTH  # TARGET_HALF_WIDTH: the report plans seeds for it
    action: str = "run"  # ACTION: run, or (EXECUTOR=slurm) status or cancel of a comparison's jobs
    runs_per_gpu: int = 1  # RUNS_PER_GPU: runs at a time on each GPU that GPUS names

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
        # --quiet: a run that stops (an error, a preemption) says why in one line, without the launcher's traceback
        launch = tuple(shlex.split(env.get("LAUNCH", ""))) or (env.get("PYTHON") or python, "-m",
                                                                 "accelerate.commands.launch", "--quiet")
        executor = env.get("EXECUTOR", "local").strip() or "local"
        if executor not in ("local", "slurm"):
            raise ConfigError(f"EXECUTOR={executor!r} is invalid; use local (this machine: JOBS, GPUS) or slurm "
                              f"(SLURM array jobs through submitit, set with CLUSTER)")
        if executor == "local" and env.get("CLUSTER", "").strip():
            raise ConfigError("CLUSTER is set but EXECUTOR is not slurm; add EXECUTOR=slurm, or unset CLUSTER")
        cluster = ClusterSpec.parse(env.get("CLUSTER", "")) if executor == "slurm" else None
        per_gpu = _integers(env, "RUNS_PER_GPU") or [1]
        if len(per_gpu) != 1 or per_gpu[0] < 1:
            raise ConfigError(f"RUNS_PER_GPU={env.get('RUNS_PER_GPU')!r} is invalid; expected one whole number >= 1")
        if per_gpu[0] > 1 and not env.get("GPUS", "").strip():
            raise ConfigError(f"RUNS_PER_GPU={per_gpu[0]} places runs on the GPUs that GPUS names; add GPUS (e.g. "
                              f"GPUS=\"0\" for this machine's first GPU)")
        if cluster and (env.get("GPUS", "").strip() or env.get("JOBS", "").strip()):
            raise ConfigError("GPUS and JOBS place runs on this machine; with EXECUTOR=slurm, CLUSTER says what each "
                              "run gets (gpus_per_run) and how many run at a time (array_parallelism)")
        action = env.get("ACTION", "").strip() or "run"
        if action not in ("run", "status", "cancel"):
            raise ConfigError(f"ACTION={action!r} is invalid; use run (the default), status or cancel")
        if action != "run" and cluster is None:
            raise ConfigError(f"ACTION={action} is for a comparison on SLURM: add EXECUTOR=slurm (and its OUT)")
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
                   visible_gpus(env), _boolean(env, "PRINT_JOBS"), _boolean(env, "OVERWRITE"),
                   launch if env.get("LAUNCH") else accelerate_processes(
                       launch, cluster.gpus_per_run if cluster else 1, cluster is not None)
                   if cluster or env.get("GPUS", "").strip()
                   else launch, tune_seeds=tuple(tune_seeds), cluster=cluster,
                   target_half_width=target_half_width(env), action=action, runs_per_gpu=per_gpu[0])
