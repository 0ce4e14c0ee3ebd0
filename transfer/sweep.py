"""The runs behind `scripts/compare.sh`: every arm x swept value x seed, each in its own folder,
one after another or several at once, then the report.

    OUT/<arm>[/seed<N>]                      without a sweep (as compare.py reads it)
    OUT/<key>=<value>/<arm>[/seed<N>]        with SWEEP='key=v1,v2,...', plus OUT/sweep.json

Finished runs (metrics.json) are reused unless OVERWRITE=1; interrupted ones resume
(train.resume=auto). A failed run is named with its error and the others go on; the exit code
is non-zero at the end and the report marks what is missing. With JOBS=N, N runs at a time;
GPUS="0 1 2 3" gives each concurrent run its own GPU (CUDA_VISIBLE_DEVICES) and sets JOBS to their
number, so a GPU is never shared by two runs of one sweep. PRINT_JOBS=1 prints the runs as shell
commands, one a line, for any scheduler (a SLURM array takes line $SLURM_ARRAY_TASK_ID).
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ConfigError
from .outputs import write_json
from .sweep_report import SWEEP_FILE

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"pretrained": "configs/pretrained.yaml", "scratch": "configs/scratch.yaml",
           "scratch_strong": "configs/scratch_strong.yaml", "probe": "configs/pretrained.yaml"}


@dataclass(frozen=True)
class Job:
    arm: str
    value: object  # the swept value (typed as YAML), or None without a sweep
    seed: int | None
    folder: Path
    args: tuple[str, ...]  # run_transfer.py's arguments

    def label(self, key: str | None) -> str:
        parts = [self.arm] + ([f"{key}={_text(self.value)}"] if key else []) + (
            [f"seed {self.seed}"] if self.seed is not None else [])
        return ", ".join(parts)


def _text(value) -> str:
    return "null" if value is None else str(value)


def parse_sweep(text: str) -> tuple[str, list]:
    """'data.train_per_class=5,20,null' -> ('data.train_per_class', [5, 20, None]), typed as YAML."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"SWEEP={text!r} is not of the form key=v1,v2,... (e.g. data.train_per_class=5,20,null)")
    parsed = [yaml.safe_load(v.strip()) if v.strip() else None for v in values.split(",")]
    if len({repr(v) for v in parsed}) != len(parsed):
        raise ConfigError(f"SWEEP={text!r} repeats a value")
    return key.strip(), parsed


def plan(out: Path, arms: list[str], seeds: list[int], overrides: list[str], sweep: tuple[str, list] | None) -> list[Job]:
    """Every run, with its folder and arguments; settings are checked here, before any run."""
    from .config import load_config

    key, values = sweep if sweep else (None, [None])
    jobs = []
    for value in values:
        extra = [f"{key}={_text(value)}"] if key else []
        base = out / f"{key}={_text(value)}" if key else out
        for arm in arms:
            if arm not in CONFIGS:
                raise ConfigError(f"unknown arm {arm!r} in ARMS; choose from: {', '.join(CONFIGS)}")
            settings = [*overrides, *extra]
            if arm == "probe":  # the pretrained arm with its backbone frozen for every epoch
                epochs = load_config(REPO / CONFIGS[arm], settings).train.epochs
                settings.append(f"train.freeze_epochs={epochs}")
            for seed in seeds or [None]:
                folder = base / arm / f"seed{seed}" if seed is not None else base / arm
                run_args = [*settings, *([f"train.seed={seed}"] if seed is not None else [])]
                load_config(REPO / CONFIGS[arm], run_args)  # a bad key fails now, once, not in every run
                jobs.append(Job(arm, value, seed, folder, ("run_transfer.py", "--config", CONFIGS[arm], *run_args,
                                                           f"output_dir={folder}", "train.resume=auto")))
    return jobs


def command_line(job: Job, launch: list[str], gpu: str | None = None) -> str:
    """One shell line that runs `job` from anywhere, logging into its folder."""
    env = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
    run = " ".join(shlex.quote(a) for a in [*launch, *job.args])
    log = shlex.quote(str(job.folder / "train.log"))
    return f"mkdir -p {shlex.quote(str(job.folder))} && cd {shlex.quote(str(REPO))} && {env}{run} > {log} 2>&1"


def _result(job: Job) -> str:
    metrics = json.loads((job.folder / "metrics.json").read_text())
    return f"val_acc {metrics['final_val_acc']:.4f} (best {metrics['best_val_acc']:.4f})"


def _error(job: Job) -> str:
    log = job.folder / "train.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    found = [line for line in lines if line.startswith(("error: ", "stopped: "))]
    return found[-1] if found else (lines[-1] if lines else "no output")


class Runner:
    def __init__(self, launch: list[str], jobs: int, gpus: list[str], key: str | None, echo: bool):
        self.launch, self.key, self.echo = launch, key, echo
        self.gpus: queue.Queue = queue.Queue()
        for gpu in gpus:
            self.gpus.put(gpu)
        self.workers, self.use_gpus = len(gpus) or jobs, bool(gpus)
        self.lock = threading.Lock()

    def say(self, text: str, stream=sys.stdout) -> None:
        with self.lock:
            print(text, file=stream, flush=True)

    def run(self, job: Job) -> bool:
        gpu = self.gpus.get() if self.use_gpus else None  # as many workers as GPUs: one is always free
        try:
            job.folder.mkdir(parents=True, exist_ok=True)
            self.say(f"started  {job.label(self.key)} -> {job.folder}" + (f" (GPU {gpu})" if gpu is not None else ""))
            start = time.monotonic()
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
            with open(job.folder / "train.log", "wb") as log:
                process = subprocess.Popen([*self.launch, *job.args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT)
                for chunk in iter(lambda: process.stdout.read1(1 << 16), b""):
                    log.write(chunk)
                    if self.echo:  # one run at a time: show its progress as it goes
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                code = process.wait()
            seconds = time.monotonic() - start
            if code == 0 and (job.folder / "metrics.json").is_file():
                self.say(f"finished {job.label(self.key)}: {_result(job)} in {seconds:.0f} s")
                return True
            self.say(f"error: run {job.label(self.key)} failed ({_error(job)}); its log is {job.folder / 'train.log'}",
                     sys.stderr)
            return False
        finally:
            if gpu is not None:
                self.gpus.put(gpu)


def compare(out: Path, arms: list[str], seeds: list[int], overrides: list[str], sweep: tuple[str, list] | None = None,
            jobs: int = 1, gpus: list[str] = (), launch: list[str] | None = None, overwrite: bool = False,
            print_jobs: bool = False) -> int:
    """Plan, run (or print) and report; the exit code compare.sh returns."""
    launch = launch or [sys.executable, "-m", "accelerate.commands.launch"]
    try:
        planned = plan(out, arms, seeds, overrides, sweep)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    key = sweep[0] if sweep else None
    if not sweep and (out / SWEEP_FILE).is_file():
        print(f"error: {out} holds a sweep ({out / SWEEP_FILE}); give the same SWEEP, or another OUT", file=sys.stderr)
        return 2
    if sweep:  # what the report expects, also when a scheduler runs the printed commands
        write_json(out / SWEEP_FILE, {"key": key, "values": sweep[1], "arms": arms, "seeds": seeds})
    if print_jobs:
        for job in planned:
            print(command_line(job, launch))
        return 0
    todo = []
    for job in planned:
        if (job.folder / "metrics.json").is_file():
            if overwrite:
                import shutil

                print(f"== {job.folder}: finished before; OVERWRITE=1, training it again")
                shutil.rmtree(job.folder)
            else:
                print(f"== {job.folder}: finished before; reusing it (OVERWRITE=1 to retrain)")
                continue
        todo.append(job)
    runner = Runner(launch, max(1, jobs), list(gpus), key, echo=max(1, jobs) == 1 and not gpus)
    with ThreadPoolExecutor(max_workers=runner.workers) as pool:
        failed = list(pool.map(runner.run, todo)).count(False)
    from .compare import build, markdown

    try:
        summary = build(out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown(summary))
    print(f"report: {out / 'report.md'}, {out / 'comparison.png'}" + (f", {out / 'sweep.png'}" if sweep else "")
          + f", {out / 'summary.json'}")
    if failed:
        print(f"error: {failed} of {len(planned)} runs failed (named above); the report marks them missing",
              file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """compare.sh's environment: OUT, ARMS, SEEDS, SWEEP, JOBS, GPUS, PRINT_JOBS, OVERWRITE, PYTHON, LAUNCH."""
    env = os.environ
    try:
        seeds = [int(s) for s in env.get("SEEDS", "").split()]
        jobs = int(env.get("JOBS", "1"))
        sweep = parse_sweep(env["SWEEP"]) if env.get("SWEEP") else None
    except ValueError as e:  # ConfigError, or a JOBS/SEEDS that is no integer
        print(f"error: {e}", file=sys.stderr)
        return 2
    launch = shlex.split(env.get("LAUNCH", "")) or [env.get("PYTHON", sys.executable), "-m",
                                                      "accelerate.commands.launch"]
    return compare(Path(env.get("OUT", "runs/compare")).absolute(),  # printed commands work from any folder
                   env.get("ARMS", "pretrained scratch").split(), seeds, sys.argv[1:], sweep, jobs,
                   env.get("GPUS", "").split(), launch, env.get("OVERWRITE") == "1", env.get("PRINT_JOBS") == "1")


if __name__ == "__main__":
    raise SystemExit(main())
