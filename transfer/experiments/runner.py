"""The runs behind `scripts/compare.sh`: every planned run (plan.py), one after another or
several at once, each in its own folder, then the report.

With SUITE, every dataset of the suite is a comparison of its own (OUT/<dataset>/), and the
report adds the table over datasets (suite_report.py). With TUNE (tuning.py), the tuning runs come first; the reported runs are planned from their
choice. Finished runs (metrics.json) are reused unless OVERWRITE=1 (a finished run whose settings
differ from the planned ones is refused, never silently reported); interrupted ones resume
(train.resume=auto). A failed run is named with its error and the others go on; the exit code
is 1 at the end and the report marks what is missing. With JOBS=N, N runs at a time;
GPUS="0 1 2 3" gives each concurrent run its own GPU (CUDA_VISIBLE_DEVICES) and sets JOBS to their
number, so a GPU is never shared by two runs of one sweep. PRINT_JOBS=1 prints the runs as shell
commands, one a line, for any scheduler (a SLURM array takes line $SLURM_ARRAY_TASK_ID).
"""
from __future__ import annotations

import contextlib
import functools
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ConfigError, RunError
from ..files import write_json
from ..processes import die_with_parent
from ..records import is_finished, last_error, load_run, read_metrics
from ..training.rundir import NEUTRAL, setting_changes
from .arms import ARMS
from .grid import setting_args
from .layout import SUITE_FILE, SWEEP_FILE, sweep_meta
from .plan import Job, check_overrides, plan
from .spec import CompareSpec
from .tuning import choices, grid_edges, plan_tuning, write_grids

TRAIN = ("-m", "transfer")  # the training entry point, under any launcher (python, accelerate launch, torchrun)


def command_line(job: Job, launch: list[str], gpu: str | None = None) -> str:
    """One shell line that runs `job` from anywhere, logging into its folder (appended to: a retry,
    or a requeued cluster job, adds to the log of the attempt before)."""
    env = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
    run = " ".join(shlex.quote(a) for a in [*launch, *TRAIN, *job.args])
    log = shlex.quote(str(job.folder / "train.log"))
    return f"mkdir -p {shlex.quote(str(job.folder))} && cd {shlex.quote(str(Path.cwd()))} && {env}{run} >> {log} 2>&1"


def _result(job: Job) -> str:
    metrics = read_metrics(job.folder)
    return f"val_acc {metrics.final_val_acc:.4f} (best {metrics.best_val_acc:.4f})"


def cores_per_run(workers: int) -> int | None:
    """This process's cores shared out between `workers` concurrent runs (at least 1 each); None
    for one run at a time. Each run's OMP_NUM_THREADS, and its data.num_workers at most."""
    return max(1, len(os.sched_getaffinity(0)) // workers) if workers >= 2 else None


def threads_per_run(workers: int, environ) -> int | None:
    """CPU threads for each of `workers` concurrent runs: their share of the cores, unless
    OMP_NUM_THREADS is set (then the user's). Each run would otherwise take every core: two runs on
    two cores, each with two threads, spin on each other (the fast test tier took 3.5x as long
    beside one single-threaded run)."""
    return None if environ.get("OMP_NUM_THREADS") else cores_per_run(workers)


class Runner:
    """Runs on this machine: JOBS at a time, or RUNS_PER_GPU on each GPU of GPUS (each its
    CUDA_VISIBLE_DEVICES, the runs on one GPU sharing it through MPS when it can be started). With
    several at once each gets its share of the cores: OMP_NUM_THREADS and data.num_workers."""

    def __init__(self, launch: list[str], jobs: int, gpus: list[str], echo: bool, runs_per_gpu: int = 1):
        self.launch, self.echo = launch, echo
        self.gpus: queue.Queue = queue.Queue()
        for _ in range(runs_per_gpu):  # round robin: the first runs go to different GPUs
            for gpu in gpus:
                self.gpus.put(gpu)
        self.workers, self.use_gpus = len(gpus) * runs_per_gpu or jobs, bool(gpus)
        self.threads = threads_per_run(self.workers, os.environ)
        self.loader_workers = cores_per_run(self.workers)  # data.num_workers at most (a run's config may ask fewer)
        self.mps_env: dict[str, str] = {}  # the MPS daemon's pipe, for the runs (Mps.start)
        self.lock = threading.Lock()

    def say(self, text: str, stream=sys.stdout) -> None:
        with self.lock:
            print(text, file=stream, flush=True)

    def run(self, job: Job) -> bool:
        gpu = self.gpus.get() if self.use_gpus else None  # as many workers as GPUs: one is always free
        try:
            job.folder.mkdir(parents=True, exist_ok=True)
            self.say(f"started  {job.label()} -> {job.folder}" + (f" (GPU {gpu})" if gpu is not None else ""))
            start = time.monotonic()
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}),
                   **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}), **self.mps_env}
            share = self.loader_workers
            fewer = [f"data.num_workers={share}"] if share and share < job.settings["data"]["num_workers"] else []
            with open(job.folder / "train.log", "ab") as log:  # a retry adds to the attempt before
                process = subprocess.Popen([*self.launch, *TRAIN, *job.args, *fewer], env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT)
                for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
                    log.write(chunk)
                    if self.echo:  # one run at a time: show its progress as it goes
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                code = process.wait()
            seconds = time.monotonic() - start
            if code == 0 and is_finished(job.folder):
                self.say(f"finished {job.label()}: {_result(job)} in {seconds:.0f} s")
                return True
            self.say(f"error: run {job.label()} failed ({last_error(job.folder)}); its log is {job.folder / 'train.log'}",
                     sys.stderr)
            return False
        finally:
            if gpu is not None:
                self.gpus.put(gpu)

    def run_all(self, jobs: list[Job]) -> int:
        """Run `jobs`, `workers` at a time; the number that failed."""
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.run, jobs)).count(False)


MPS_CONTROL = "nvidia-cuda-mps-control"


@contextlib.contextmanager
def mps(runs_per_gpu: int, say=None):
    """NVIDIA's Multi-Process Service for the runs that share a GPU (their kernels run side by side
    instead of taking turns): a daemon of this comparison's own (its pipe in a temporary folder),
    started in the foreground as this process's child and quit at the end; killed with it
    however it ends (parent-death signal). Yields the environment that points the runs at it:
    nothing where it cannot be started (said in one line), or where CUDA_MPS_PIPE_DIRECTORY
    names one already running (used as it is)."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        say(f"note: RUNS_PER_GPU={runs_per_gpu}: using the MPS daemon of CUDA_MPS_PIPE_DIRECTORY="
            f"{os.environ['CUDA_MPS_PIPE_DIRECTORY']}")
        yield {}
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        say(f"note: RUNS_PER_GPU={runs_per_gpu}: MPS is not available here ({MPS_CONTROL} not found), so the runs "
            f"on each GPU take turns on it (time slicing)")
        yield {}
        return
    folder = Path(tempfile.mkdtemp(prefix="transfer-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    daemon = subprocess.Popen([control, "-f"], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE,
                              preexec_fn=functools.partial(die_with_parent, os.getpid()))
    try:
        deadline = time.monotonic() + 10
        while not (folder / "pipe" / "control").exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if daemon.poll() is not None or not (folder / "pipe" / "control").exists():
            error = (daemon.stderr.read().decode(errors="replace").strip().splitlines() or ["no reason given"])[-1] \
                if daemon.poll() is not None else "its pipe did not appear within 10 s"
            say(f"note: RUNS_PER_GPU={runs_per_gpu}: MPS could not be started ({error}), so the runs on each GPU take "
                f"turns on it (time slicing)")
            yield {}
            return
        say(f"RUNS_PER_GPU={runs_per_gpu}: the runs on each GPU share it through MPS (pipe {env['CUDA_MPS_PIPE_DIRECTORY']})")
        yield env
    finally:
        if daemon.poll() is None:
            subprocess.run([control], input=b"quit\n", env={**os.environ, **env}, capture_output=True, timeout=30)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(folder, ignore_errors=True)


def check_reusable(jobs: list[Job]) -> None:
    """A finished run is reused only when it was trained with the settings planned for it now
    (those that change numbers: rundir.NEUTRAL aside); otherwise one line names the run and the
    settings, before anything runs. A run without config.yaml is taken on trust."""
    for job in jobs:
        if is_finished(job.folder) and (job.folder / "config.yaml").is_file():
            changes = {k: v for k, v in setting_changes(load_run(job.folder).settings, job.settings).items()
                       if k not in NEUTRAL}
            if changes:
                listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
                raise ConfigError(f"{job.folder} finished with other settings than planned now ({listed}); "
                                  f"OVERWRITE=1 retrains it, or use another OUT")


def to_run(jobs: list[Job], overwrite: bool) -> list[Job]:
    """The jobs that need training: finished ones are reused, or removed with OVERWRITE=1."""
    if not overwrite:
        check_reusable(jobs)
    todo = []
    for job in jobs:
        if is_finished(job.folder):
            if not overwrite:
                print(f"== {job.folder}: finished before; reusing it (OVERWRITE=1 to retrain)")
                continue
            print(f"== {job.folder}: finished before; OVERWRITE=1, training it again")
            shutil.rmtree(job.folder)
        todo.append(job)
    return todo


def chosen_settings(spec: CompareSpec, say=print) -> tuple[dict, list[str]]:
    """Base folder -> arm -> the grid point tuning chose (tuning.choices), and a line for each arm
    that has no choice (none of its tuning runs finished)."""
    chosen, unchosen = {}, []
    for base in spec.bases():
        where = base.describe()
        for arm, tuned in (choices(base.folder) or {}).items():
            if tuned.chosen is None:
                unchosen.append(f"{arm}{where}: none of its tuning runs finished, so its reported runs did not run")
                continue
            chosen.setdefault(base.folder, {})[arm] = tuned.chosen
            scores = ", ".join(f"{', '.join(setting_args(r.setting))}: "
                               + ("failed" if r.select_acc is None else f"{r.select_acc:.4f}") for r in tuned.points)
            say(f"tuned {arm}{where}: {', '.join(setting_args(tuned.chosen))} (selection accuracy {scores})")
            for edge in grid_edges({arm: tuned}):
                say(f"warning: {edge} is at the edge of the grid; its best may lie beyond it: extend TUNE past it")
    return chosen, unchosen


def write_layout(spec: CompareSpec) -> None:
    """What the report expects to find, written before any run (also when a scheduler runs the
    printed commands): OUT/suite.json, each sweep's sweep.json, each tuned base's grid.json. A
    folder that holds another kind of experiment is refused."""
    out, arms, seeds = spec.out, list(spec.arms), list(spec.seeds)
    if not spec.suite and (out / SUITE_FILE).is_file():
        raise RunError(f"{out} holds a suite ({out / SUITE_FILE}); give the same SUITE, or another OUT")
    if spec.suite and ((out / SWEEP_FILE).is_file() or any((out / arm).is_dir() for arm in ARMS)):
        raise RunError(f"{out} holds a comparison, not a suite; give another OUT for SUITE={spec.suite.file}")
    roots = [out / name for name in spec.suite.datasets] if spec.suite else [out]
    for root in roots:
        if not spec.sweep and (root / SWEEP_FILE).is_file():
            raise RunError(f"{root} holds a sweep ({root / SWEEP_FILE}); give the same SWEEP, or another OUT")
    if spec.suite:
        write_json(out / SUITE_FILE, {**spec.suite.to_json(), "arms": arms, "seeds": seeds,
                                      "sweep": spec.sweep.to_json() if spec.sweep else None})
    if spec.sweep:
        for root in roots:
            write_json(root / SWEEP_FILE, sweep_meta(spec.sweep, arms, seeds))
    if spec.tune:
        write_grids(spec.bases(), arms, list(spec.tune_seeds), spec.tune)


def compare(spec: CompareSpec, overrides: list[str]) -> int:
    """Plan, run (or print) and report; the exit code compare.sh returns: 0, or 1 when a run
    failed. Settings that cannot run raise ConfigError (exit 2) before any run starts."""
    if spec.action != "run":  # ACTION=status|cancel (EXECUTOR=slurm): the jobs OUT's records name
        from .cluster import act
        from .slurm import SubmititBackend

        return act(spec.action, spec.out, SubmititBackend(spec.out, spec.cluster))
    arms, seeds, bases_ = list(spec.arms), list(spec.seeds), spec.bases()
    check_overrides(spec.suite, spec.sweep, overrides)
    tuning = plan_tuning(bases_, arms, list(spec.tune_seeds), overrides, spec.tune) if spec.tune else []
    planned = [] if spec.tune else plan(bases_, arms, seeds, overrides)
    write_layout(spec)
    if spec.print_jobs:
        for job in tuning:
            print(command_line(job, list(spec.launch)))
        if tuning and not all(is_finished(job.folder) for job in tuning):
            print(f"note: the reported runs are planned from the tuning runs' choice: run the {len(tuning)} above "
                  f"first, then PRINT_JOBS=1 again prints the reported runs", file=sys.stderr)
            return 0
        if tuning:
            planned = plan(bases_, arms, seeds, overrides, chosen_settings(spec, say=lambda _: None)[0])
        for job in planned:
            print(command_line(job, list(spec.launch)))
        return 0
    held = contextlib.ExitStack()
    if spec.cluster is not None:  # EXECUTOR=slurm
        from .cluster import CANCEL_MARK, ClusterRunner, driver_lock
        from .prefetch import fetch_inputs
        from .slurm import SubmititBackend

        held.enter_context(driver_lock(spec.out))  # one driver an OUT
        runner = ClusterRunner(SubmititBackend(spec.out, spec.cluster), spec.cluster,
                               lambda job: command_line(job, list(spec.launch)), fetch=fetch_inputs,
                               cancelled=(spec.out / CANCEL_MARK).exists)
    else:
        runner = Runner(list(spec.launch), spec.jobs, list(spec.gpus), echo=spec.jobs == 1 and not spec.gpus,
                        runs_per_gpu=spec.runs_per_gpu)
        if spec.runs_per_gpu > 1:
            runner.mps_env = held.enter_context(mps(spec.runs_per_gpu))
    failed, unchosen = 0, []
    with held:
        if tuning:
            print(f"== tuning {len(spec.arms)} arm(s) over {len(spec.tune.points())} point(s) of "
                  f"{'; '.join(spec.tune.keys)}, chosen on the selection split", flush=True)
            failed += runner.run_all(to_run(tuning, spec.overwrite))
            chosen, unchosen = chosen_settings(spec)
            planned = plan(bases_, arms, seeds, overrides, chosen)
        failed += runner.run_all(to_run(planned, spec.overwrite))
    for line in unchosen:
        print(f"error: {line}", file=sys.stderr)
    total = len(tuning) + len(planned)
    try:
        from . import report  # scipy, statsmodels and matplotlib (1 s): only once there is a report to build

        summary = report.build(spec.out, spec.target_half_width)
    except RunError:
        if not failed:
            raise
        raise RunError(f"{failed} of {total} runs failed (named above) and none has finished: no report",
                       exit_code=1) from None
    print(report.markdown(summary))
    for line in report.headlines(summary):
        print(line)
    print("report: " + ", ".join(str(spec.out / name) for name in report.files(summary))
          + (f"; each dataset's own in {spec.out}/<dataset>/" if spec.suite else ""))
    if failed or unchosen:
        print(f"error: {failed} of {total} runs failed (named above); the report marks them missing",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """compare.sh: its environment (CompareSpec) and the key=value settings for every run."""
    return compare(CompareSpec.from_environ(os.environ, sys.executable), argv)
