"""EXECUTOR=slurm: a comparison's runs as SLURM array jobs, through submitit; compare.sh stays the
driver (it submits a stage, waits, chooses the tuned settings, submits the reported runs, writes
the report).

    EXECUTOR=slurm CLUSTER='partition=gpu timeout_min=120 gpus_per_run=1' scripts/compare.sh

- Each run is one array task running exactly the command PRINT_JOBS prints (`RunCommand`); arrays
  are cut below the cluster's MaxArraySize, and `array_parallelism` of a stage run at a time.
- Each submitted run records its job in its own folder (`slurm_job.json`: the id, the attempt):
  compare.sh run again after its driver died attaches to the jobs still queued or running instead
  of submitting them again, and skips the finished runs. `metrics.json` stays the only record of a
  result: a job that ended without one failed.
- Preemption and time limits: SLURM warns the job `signal_delay_s` seconds ahead with SIGUSR2;
  the run writes a checkpoint at its next step and exits, and submitit hands the signal to
  `RunCommand.checkpoint`, which waits for that (at most `signal_delay_s` - 10 s) and has the job
  requeued; the requeued job runs the same
  command, which resumes (`train.resume=auto`) and appends to `train.log`. Not counted as a failure.
- A job that left the queue without a result and without the run's own error (cancelled, a node
  failure, out of memory, its time limit) is submitted again, up to `max_retries` times; a run that
  failed with its own error (a setting, bad data) is named, as on one machine, and the others go on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError, Preempted
from ..files import write_json
from ..records import is_finished, last_error

RECORD = "slurm_job.json"
LOGS = ".slurm"  # OUT/.slurm/<job id>: submitit's pickles and logs of each job
# states of a job that is still on its way (sacct's names); any other is the end of it
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING",
          "COMPLETING", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY", "PREEMPTED"}


@dataclass(frozen=True)
class ClusterSpec:
    """CLUSTER='key=value ...': what each run asks of SLURM, read as strictly as the settings."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    timeout_min: int = 120  # each run's time limit; a longer run is requeued at it and resumes
    gpus_per_run: int = 1  # several: one run over several GPUs of a node (accelerate, one process each)
    cpus_per_run: int = 8  # loader workers and the cache's decoding
    mem_gb: int | None = None  # the cluster's default when unset
    array_parallelism: int = 16  # runs of a stage at a time
    max_retries: int = 2  # times a job that left the queue without a result is submitted again
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: room to checkpoint
    poll_s: float = 15.0  # seconds between looks at the queue

    @classmethod
    def parse(cls, text: str) -> "ClusterSpec":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for part in shlex.split(text or ""):
            key, sep, value = part.partition("=")
            if not sep or key not in fields:
                what = f"unknown key {key!r}" if sep else f"{part!r} is not key=value"
                raise ConfigError(f"CLUSTER: {what}; valid keys: {', '.join(fields)}")
            kind = fields[key].type.split(" |")[0]
            try:
                values[key] = {"int": int, "float": float}.get(kind, str)(value)
            except ValueError:
                kind_name = "an integer" if kind == "int" else "a number"
                raise ConfigError(f"CLUSTER: {key}={value!r} is not {kind_name}") from None
            if kind in ("int", "float") and values[key] < (0 if key in ("max_retries", "gpus_per_run") else 1):
                raise ConfigError(f"CLUSTER: {key}={value} is too small")
        return cls(**values)


class RunCommand:
    """One run as a job's function: the shell command of the run (as PRINT_JOBS prints it), in its
    own process group. submitit calls `checkpoint` at the warning signal of a preemption or a time
    limit: the run is asked to stop (it writes a checkpoint and exits), and the job is requeued
    with the same function, which runs the command again: it resumes. (submitit's Checkpointable,
    whose `checkpoint` this overrides.)"""

    def __init__(self, command: str, grace_s: float = 110.0):
        self.command, self.grace_s = command, grace_s
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {"command": self.command, "grace_s": self.grace_s, "_pid": None}

    def __call__(self) -> None:
        # SLURM's warning signal reaches every process of the job, and only the run knows what to do
        # with it: the shell and accelerate's launcher ignore it (a launcher killed by it would take
        # the run's stderr with it), the run installs its own handler over the inherited SIG_IGN
        process = subprocess.Popen(["bash", "-c", "trap '' USR1 USR2; " + self.command], start_new_session=True)
        self._pid = process.pid
        code = process.wait()
        _wait_for_group(process.pid, self.grace_s)  # a process of the run that outlived the shell
        self._pid = None
        if code != 0:
            raise RuntimeError(f"the run exited with code {code}; see its train.log")

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        group = self._pid
        if group is not None:
            # the run has had SLURM's signal too, or not (a signal to the job's shell only): SIGUSR2 again
            # is harmless, and SIGTERM would make accelerate's launcher kill the run 5 s later
            _signal_group(group, signal.SIGUSR2)  # the run writes a checkpoint at its next step, then exits
            if not _wait_for_group(group, self.grace_s):
                _signal_group(group, signal.SIGKILL)  # the last complete checkpoint is intact: resume from it
        return DelayedSubmission(RunCommand(self.command, self.grace_s), *args, **kwargs)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def _wait_for_group(group: int, seconds: float) -> bool:
    """Wait until no live process (zombies aside) is left in process group `group`; False if some
    still are after `seconds`."""
    deadline = time.monotonic() + seconds
    while _group_members(group):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _group_members(group: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    state, _, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(pgrp) == group and state != "Z":
                members.append(int(entry.name))
    return members


class Backend(Protocol):
    """Where the jobs go: SLURM through submitit (SubmititBackend), or a stand-in in the tests."""
    def submit(self, commands: list[str]) -> list[str]: ...
    def states(self, job_ids: list[str]) -> dict[str, str]: ...


class SubmititBackend:
    def __init__(self, out: Path, cluster: ClusterSpec):
        import submitit  # only for EXECUTOR=slurm

        self.cluster, self.submitit = cluster, submitit
        self.executor = submitit.AutoExecutor(folder=Path(out) / LOGS / "%j", cluster="slurm",
                                              slurm_max_num_timeout=1000)  # time limits are requeued and resumed
        extra = {k: v for k in ("account", "qos", "constraint") if (v := getattr(cluster, k))}
        self.executor.update_parameters(
            name="transfer", timeout_min=cluster.timeout_min, nodes=1, tasks_per_node=1,
            cpus_per_task=cluster.cpus_per_run, slurm_array_parallelism=cluster.array_parallelism,
            slurm_signal_delay_s=cluster.signal_delay_s,
            **({"gpus_per_node": cluster.gpus_per_run} if cluster.gpus_per_run else {}),
            **({"slurm_partition": cluster.partition} if cluster.partition else {}),
            **({"mem_gb": cluster.mem_gb} if cluster.mem_gb else {}),
            **({"slurm_additional_parameters": extra} if extra else {}))
        self.watcher = submitit.SlurmJob.watcher

    def max_array_size(self) -> int:
        """The cluster's MaxArraySize (an array's indices go up to one less)."""
        try:
            config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
            return int(re.search(r"MaxArraySize\s*=\s*(\d+)", config).group(1))
        except (OSError, AttributeError, ValueError, subprocess.TimeoutExpired):
            return 1001  # SLURM's default

    def submit(self, commands: list[str]) -> list[str]:
        grace = max(self.cluster.signal_delay_s - 10, 10)
        size, ids = max(self.max_array_size() - 1, 1), []
        for first in range(0, len(commands), size):
            jobs = []
            with self.executor.batch():
                for command in commands[first:first + size]:
                    jobs.append(self.executor.submit(RunCommand(command, grace)))
            ids += [job.job_id for job in jobs]
        return ids

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """Each job's state: the controller's (squeue) while it is queued or running, then the
        accounting's (sacct, through submitit's watcher) for how it ended. sacct alone lags: a
        requeued job can read FAILED there for a few seconds before it is PENDING again."""
        live = self._queue()
        states = {j: live[j] for j in job_ids if live is not None and j in live}
        ended = [j for j in job_ids if j not in states]
        if ended:
            for job_id in ended:
                self.watcher.register_job(job_id)
            self.watcher.update()  # one sacct call for all
            for job_id in ended:
                state = self.watcher.get_state(job_id, mode="cache").split()[0].upper()
                # gone from the queue but not yet ended in the accounting: ask again at the next look
                states[job_id] = "COMPLETING" if live is not None and state in ACTIVE else state
        return states

    def _queue(self) -> dict[str, str] | None:
        """This user's queued and running jobs, array tasks one a line; None if squeue failed."""
        try:
            result = subprocess.run(["squeue", "--noheader", "--array", "--user", str(os.getuid()),
                                     "--format", "%i %T"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode != 0:
            return None
        return dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)


def read_record(folder: Path) -> dict | None:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ClusterRunner:
    """`run_all(jobs)` as the local Runner's, on SLURM: submit, attach, wait, retry; the count that
    failed. `command_for(job)` is the shell line of a run (runner.command_line)."""

    def __init__(self, backend: Backend, cluster: ClusterSpec, command_for, say=print, progress: bool = True):
        self.backend, self.cluster, self.command_for, self.say = backend, cluster, command_for, say
        self.progress = progress

    def run_all(self, jobs: list) -> int:
        attempts = {id(j): 0 for j in jobs}
        current: dict[int, str] = {}  # run -> its job id
        to_submit = []
        recorded = {id(j): read_record(j.folder) for j in jobs}
        known = [r["job_id"] for r in recorded.values() if r]
        states = self.backend.states(known) if known else {}
        for job in jobs:
            record = recorded[id(job)]
            attempts[id(job)] = record["attempt"] if record else 0
            if record and states.get(record["job_id"], "") in ACTIVE:
                current[id(job)] = record["job_id"]
                self.say(f"attached {job.label()} to job {record['job_id']} ({states[record['job_id']].lower()})")
            else:
                to_submit.append(job)
        self._submit(to_submit, current, attempts)
        return self._wait(jobs, current, attempts)

    def _submit(self, jobs: list, current: dict, attempts: dict) -> None:
        if not jobs:
            return
        for job in jobs:
            job.folder.mkdir(parents=True, exist_ok=True)
        ids = self.backend.submit([self.command_for(job) for job in jobs])
        for job, job_id in zip(jobs, ids):
            attempts[id(job)] += 1
            current[id(job)] = job_id
            write_json(job.folder / RECORD, {"job_id": job_id, "attempt": attempts[id(job)],
                                             "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.say(f"submitted {job.label()} as job {job_id}" + (
                f" (attempt {attempts[id(job)]})" if attempts[id(job)] > 1 else ""))

    def _wait(self, jobs: list, current: dict, attempts: dict) -> int:
        from tqdm.auto import tqdm

        by_id = {id(j): j for j in jobs}
        done, failed, requeued, last = set(), set(), 0, {}
        bar = tqdm(total=len(jobs), desc="runs", disable=not self.progress, file=sys.stderr)
        while len(done) + len(failed) < len(jobs):
            states = self.backend.states(list(current.values()))
            retry = []
            for key, job_id in list(current.items()):
                job, state = by_id[key], states.get(job_id, "UNKNOWN")
                if last.get(key) == "RUNNING" and state in ("PENDING", "REQUEUED"):
                    requeued += 1  # preempted or at its time limit: it resumes when it runs again
                last[key] = state
                if state in ACTIVE:
                    continue
                del current[key]
                if is_finished(job.folder):
                    done.add(key)
                    self.say(f"finished {job.label()} (job {job_id})")
                elif state == "FAILED" and not Preempted.in_line(last_error(job.folder)):
                    # the run's own error: retrying would repeat it
                    failed.add(key)
                    self.say(f"error: run {job.label()} failed ({last_error(job.folder)}); its log is "
                             f"{job.folder / 'train.log'}", sys.stderr)
                elif attempts[key] <= self.cluster.max_retries:
                    self.say(f"job {job_id} of {job.label()} left the queue without a result ({state.lower()}); "
                             f"submitting it again")
                    retry.append(job)
                else:
                    failed.add(key)
                    self.say(f"error: run {job.label()} failed: its job left the queue without a result "
                             f"{attempts[key]} time(s) ({state.lower()}); its log is {job.folder / 'train.log'}",
                             sys.stderr)
            self._submit(retry, current, attempts)
            counts = {s: sum(1 for k in current if last.get(k) == s) for s in ("PENDING", "RUNNING")}
            bar.n = len(done) + len(failed)
            bar.set_postfix_str(f"queued {counts['PENDING']}, running {counts['RUNNING']}, done {len(done)}, "
                                f"failed {len(failed)}, requeued {requeued}", refresh=False)
            bar.refresh()
            if len(done) + len(failed) < len(jobs):
                time.sleep(self.cluster.poll_s)
        bar.close()
        return len(failed)
