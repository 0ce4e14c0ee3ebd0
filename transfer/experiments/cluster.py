"""EXECUTOR=slurm: a comparison's runs as SLURM array jobs, through submitit; compare.sh stays the
driver (it submits a stage, waits, chooses the tuned settings, submits the reported runs, writes
the report). What talks to SLURM is slurm.py; this is the driver: its settings, its records, its
loop.

    EXECUTOR=slurm CLUSTER='partition=gpu timeout_min=120 gpus_per_run=1' scripts/compare.sh

- Each run is one array task running exactly the command PRINT_JOBS prints (slurm.RunCommand).
- Each submitted run records its job in its own folder (`slurm_job.json`: the id, the attempt and
  the command it runs), written as soon as sbatch gives the id, so that compare.sh run again after
  its driver died attaches to the jobs still queued or running instead of submitting them again;
  a job that runs another command than the one planned now (other settings) is refused in one line
  naming it (cancel it, or rerun with its settings), never attached. `metrics.json` stays the only
  record of a result: a job that ended without one failed.
- Preemption and time limits: the run checkpoints at SLURM's warning and its job is requeued when
  the run made progress (slurm.RunCommand). A job preempted and not requeued (PreemptMode=CANCEL,
  or its run stopped by the signal and the job read FAILED) is submitted again without counting
  against `max_retries`; one stopped during its start-up (before a first step: no progress) counts.
- A job that left the queue without a result and without the run's own error (cancelled, a node
  failure, out of memory) is submitted again, up to `max_retries` times; a run that failed with its
  own error (a setting, bad data) is named, as on one machine, and the others go on. A job that
  waits for a reason that cannot pass (more CPUs than a node has, a partition's time limit) is
  cancelled and named with the CLUSTER key to change; one that waits long says why once.
- The driver ends: without accounting a job that left the queue is judged by its run folder, and
  `deadline_min` bounds the whole wait (the jobs stay queued: run compare.sh again to attach).
  It looks at its own jobs only, every `poll_s`, backing off to 10 poll_s (at most MAX_POLL_S)
  while nothing changes.
  One driver an OUT: a second is refused in one line.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError, Preempted, RunError, StoppedInStartup
from ..files import write_atomic, write_json
from ..records import is_finished, last_error
from .slurm import ACTIVE, LEFT, LOGS, SubmitRefused

RECORD = "slurm_job.json"
CANCEL_MARK = f"{LOGS}/cancelled"  # ACTION=cancel was run: a driver watching the jobs ends
MAX_POLL_S = 300.0  # the longest wait between looks (at most 10 poll_s), backing off while nothing changes
# why a job waits, when waiting cannot end it: the CLUSTER key to change
HOPELESS = {"PartitionConfig": "cpus_per_run, mem_gb or gpus_per_run: more than the partition's nodes have",
            "PartitionTimeLimit": "timeout_min: more than the partition allows (sinfo -o '%P %l')",
            "PartitionNodeLimit": "the partition's node limit",
            "BadConstraints": "constraint: no node has it",
            "InvalidAccount": "account", "InvalidQOS": "qos",
            "QOSMaxWallDurationPerJobLimit": "timeout_min: more than the qos allows",
            "QOSMaxCpuPerJobLimit": "cpus_per_run: more than the qos allows",
            "QOSMaxGRESPerJob": "gpus_per_run: more than the qos allows",
            "QOSMaxMemoryPerJob": "mem_gb: more than the qos allows"}


# sbatch options CLUSTER's `sbatch` passes on (those the driver sets itself are in OURS: set them there)
SBATCH_OPTIONS = {"exclusive", "exclude", "nodelist", "reservation", "mail-type", "mail-user", "comment", "gres",
                  "gpus-per-task", "gpu-bind", "mem-per-cpu", "mem-per-gpu", "nice", "dependency", "licenses", "hint",
                  "begin", "wckey", "tmp", "switches", "distribution", "core-spec", "clusters", "network"}
OURS = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
        "time": "timeout_min", "cpus-per-task": "cpus_per_run", "gpus-per-node": "gpus_per_run",
        "mem": "mem_gb", "array": "array_parallelism", "signal": "signal_delay_s", "job-name": "(the OUT folder)",
        "requeue": "(always asked for)"}


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
    max_requeues: int = 50  # time limits and preemptions a job is requeued at (each only after progress)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: room to checkpoint
    poll_s: float = 30.0  # seconds between looks at the queue, at first
    pending_note_min: float = 10.0  # a job queued this long says why it waits (squeue's reason), once
    deadline_min: float = 0.0  # stop waiting after this long (0: never); the jobs stay queued
    setup: str | None = None  # shell lines each job runs before the run ("module load cuda; source venv/bin/activate")
    sbatch: str | None = None  # other sbatch options, checked against SBATCH_OPTIONS ("--exclude=n1 --mail-type=END")

    def sbatch_options(self) -> dict:
        """`sbatch` as submitit's additional parameters ({"mail_type": "END", "exclusive": True})."""
        options = {}
        for token in shlex.split(self.sbatch or ""):
            name, sep, value = token.removeprefix("--").partition("=")
            options[name.replace("-", "_")] = value if sep else True
        return options

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
            smallest = 0 if key in ("max_retries", "max_requeues", "gpus_per_run", "deadline_min",
                                    "pending_note_min") else 1
            if kind in ("int", "float") and values[key] < smallest:
                raise ConfigError(f"CLUSTER: {key}={value} is too small")
        for token in shlex.split(values.get("sbatch") or ""):
            name = token.removeprefix("--").partition("=")[0]
            if not token.startswith("--") or name not in SBATCH_OPTIONS:
                ours = OURS.get(name)
                raise ConfigError(f"CLUSTER: sbatch option {token!r} " + (
                    f"is set by CLUSTER's {ours}" if ours else
                    f"is not one passed on; give --name=value with a name of: {', '.join(sorted(SBATCH_OPTIONS))}"))
        return cls(**values)


class Backend(Protocol):
    """Where the jobs go: SLURM through submitit (slurm.SubmititBackend), or a stand-in in the tests.
    `reasons`: why each queued job waits, as of the last `states`."""
    reasons: dict[str, str]
    def submit(self, runs: list[tuple[str, Path]]) -> list[str]: ...
    def states(self, job_ids: list[str]) -> dict[str, str]: ...
    def cancel(self, job_ids: list[str]) -> None: ...


def read_record(folder: Path) -> dict | None:
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def driver_lock(out: Path):
    """One driver an OUT: two would submit every run twice. The lock goes with the process
    (flock), so a driver that was killed leaves none behind."""
    folder = Path(out) / LOGS
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunError(f"another compare.sh is driving {out} ({holder}); wait for it to end, or stop it and run "
                           f"this again (it attaches to the jobs)") from None
        (Path(out) / CANCEL_MARK).unlink(missing_ok=True)  # an ACTION=cancel before: this driver is wanted
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def act(action: str, out: Path, backend: Backend, say=None) -> int:
    """ACTION=status: every recorded job of OUT's runs, its state and why (queued: squeue's reason;
    ended without a result: the run's last error), and the counts. ACTION=cancel: scancel those
    still queued or running, and tell a driver still watching them to end (CANCEL_MARK)."""
    say = say or _say
    found = sorted((p.parent, r) for p in Path(out).rglob(RECORD) if (r := read_record(p.parent)))
    if not found:
        raise ConfigError(f"ACTION={action}: no SLURM job was submitted for {out} (no {RECORD} below it); check OUT")
    states = backend.states([r["job_id"] for _, r in found])
    reasons = getattr(backend, "reasons", {})
    counts, active = {"queued": 0, "running": 0, "done": 0, "failed": 0}, []
    for folder, record in found:
        job_id, name = record["job_id"], folder.relative_to(out).as_posix() if folder != Path(out) else "."
        state = states.get(job_id, "UNKNOWN")
        if is_finished(folder):
            kind, detail = "done", ""
        elif state in ACTIVE:
            active.append(job_id)
            kind = "queued" if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED") else "running"
            detail = f": {reasons[job_id]}" if kind == "queued" and reasons.get(job_id) else ""
        else:
            kind, detail = "failed", f": {last_error(folder) or 'no error in its train.log'}"
        counts[kind] += 1
        if action == "status":
            say(f"{name}: job {job_id} (attempt {record.get('attempt', 1)}) {state.lower()}{detail}")
    if action == "cancel":
        write_atomic(Path(out) / CANCEL_MARK, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        backend.cancel(active)
        say(f"cancelled {len(active)} job(s) of {out}" + (f": {' '.join(active)}" if active else "")
            + "; a driver watching them ends; compare.sh run again submits what has not finished")
        return 0
    say(", ".join(f"{k} {v}" for k, v in counts.items()) + f" ({len(found)} run(s) of {out})")
    return 0


def _say(text: str, stream=None) -> None:
    """A line of the driver's, to `stream` (stdout by default; errors to stderr)."""
    print(text, file=stream or sys.stdout, flush=True)


def _changed(before: str, now: str) -> str:
    """What differs between two run commands, in a few words."""
    a, b = shlex.split(before), shlex.split(now)
    gone, new = [t for t in a if t not in b], [t for t in b if t not in a]
    return ", ".join([*(f"was {t}" for t in gone[:2]), *(f"now {t}" for t in new[:2])]) or "the order of its words"


class ClusterRunner:
    """`run_all(jobs)` as the local Runner's, on SLURM: submit, attach, wait, retry; the count that
    failed. `command_for(job)` is the shell line of a run (runner.command_line)."""

    def __init__(self, backend: Backend, cluster: ClusterSpec, command_for, say=None, progress: bool = True,
                 clock=time.monotonic, sleep=time.sleep, fetch=None, cancelled=None):
        self.backend, self.cluster, self.command_for, self.say = backend, cluster, command_for, say or _say
        self.progress, self.clock, self.sleep = progress, clock, sleep
        self.fetch = fetch  # fetch(jobs): what they download, fetched here before they are submitted (prefetch.py)
        self.cancelled = cancelled or (lambda: False)  # whether ACTION=cancel has been run since this driver started

    def run_all(self, jobs: list) -> int:
        attempts = {id(j): 0 for j in jobs}
        current: dict[int, str] = {}  # run -> its job id
        to_submit = []
        recorded = {id(j): read_record(j.folder) for j in jobs}
        known = [r["job_id"] for r in recorded.values() if r]
        states = self.backend.states(known) if known else {}
        refused = []  # (run, its job, what differs): queued or running with another command than planned now
        for job in jobs:
            record, command = recorded[id(job)], self.command_for(job)
            attempts[id(job)] = record["attempt"] if record else 0
            state = states.get(record["job_id"], "") if record else ""
            if state not in ACTIVE:
                to_submit.append(job)
            elif record.get("command", command) != command:
                refused.append((job, f"{record['job_id']} ({state.lower()})", _changed(record["command"], command)))
            else:
                current[id(job)] = record["job_id"]
                self.say(f"attached {job.label()} to job {record['job_id']} ({state.lower()})"
                         + ("" if "command" in record else " (recorded before commands were: not checked)"))
        if refused:
            (job, its, changed), more = refused[0], len(refused) - 1
            ids = " ".join(recorded[id(j)]["job_id"] for j, _, _ in refused)
            raise RunError(f"run {job.label()} has job {its} from an earlier compare.sh that runs other settings "
                           f"({changed})" + (f", and {more} more" if more else "")
                           + f": cancel them (scancel {ids}) to run these settings, or rerun with the settings they "
                             f"were submitted with; nothing was submitted")
        if to_submit and self.fetch is not None:
            self.fetch(to_submit)  # on the login node, once: the jobs run offline
        self._submit(to_submit, current, attempts)
        return self._wait(jobs, current, attempts)

    def _submit(self, jobs: list, current: dict, attempts: dict) -> None:
        if not jobs:
            return
        for job in jobs:
            job.folder.mkdir(parents=True, exist_ok=True)
        commands = [self.command_for(job) for job in jobs]
        try:
            ids = self.backend.submit(list(zip(commands, [job.folder for job in jobs])))
        except SubmitRefused as e:
            ids, refused = e.submitted, e  # the arrays that went in before sbatch said no: recorded, then stop
        else:
            refused = None
        for job, command, job_id in zip(jobs, commands, ids):
            attempts[id(job)] += 1
            current[id(job)] = job_id
            write_json(job.folder / RECORD, {"job_id": job_id, "attempt": attempts[id(job)], "command": command,
                                             "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.say(f"submitted {job.label()} as job {job_id}" + (
                f" (attempt {attempts[id(job)]})" if attempts[id(job)] > 1 else ""))
        if refused is not None:
            kept = f" ({len(ids)} run(s) submitted before it are recorded: a rerun attaches to them)" if ids else ""
            raise SubmitRefused(f"{refused}{kept}", ids) from None

    def _wait(self, jobs: list, current: dict, attempts: dict) -> int:
        from tqdm.auto import tqdm

        by_id = {id(j): j for j in jobs}
        done, failed, requeued, last = set(), set(), 0, {}
        retries = {id(j): 0 for j in jobs}  # resubmissions that count against max_retries (not preemptions)
        queued_since, noted = {}, set()
        start, poll = self.clock(), self.cluster.poll_s
        bar = tqdm(total=len(jobs), desc="runs", disable=not self.progress, file=sys.stderr)
        while len(done) + len(failed) < len(jobs):
            states = self.backend.states(list(current.values()))
            retry, changed = [], False
            for key, job_id in list(current.items()):
                job, state = by_id[key], states.get(job_id, "UNKNOWN")
                if last.get(key) == "RUNNING" and state in ("PENDING", "REQUEUED"):
                    requeued += 1  # preempted or at its time limit: it resumes when it runs again
                changed |= last.get(key) != state
                last[key] = state
                if state == "PENDING" and self._hopeless(job, job_id, queued_since, noted):
                    del current[key]
                    failed.add(key)
                    continue
                if state in ACTIVE:
                    continue
                del current[key]
                queued_since.pop(key, None)
                said = last_error(job.folder)
                preempted = state == "PREEMPTED" or Preempted.in_line(said)
                if is_finished(job.folder):
                    done.add(key)
                    self.say(f"finished {job.label()} (job {job_id})")
                elif state == "FAILED" and not preempted and not StoppedInStartup.in_line(said):
                    # the run's own error: retrying would repeat it
                    failed.add(key)
                    self.say(f"error: run {job.label()} failed ({last_error(job.folder)}); its log is "
                             f"{job.folder / 'train.log'}", sys.stderr)
                elif preempted or retries[key] < self.cluster.max_retries:
                    retries[key] += not preempted
                    why = "preempted" if preempted else "stopped during its start-up" if StoppedInStartup.in_line(
                        said) else "the accounting has no end for it" if state == LEFT else state.lower()
                    self.say(f"job {job_id} of {job.label()} left the queue without a result ({why}); "
                             f"submitting it again" + ("" if preempted else
                                                       f" (retry {retries[key]} of {self.cluster.max_retries})"))
                    retry.append(job)
                else:
                    failed.add(key)
                    self.say(f"error: run {job.label()} failed: its job left the queue without a result "
                             f"{retries[key] + 1} time(s) ({state.lower()}); its log is {job.folder / 'train.log'}",
                             sys.stderr)
            self._submit(retry, current, attempts)
            counts = {s: sum(1 for k in current if last.get(k) == s) for s in ("PENDING", "RUNNING")}
            bar.n = len(done) + len(failed)
            bar.set_postfix_str(f"queued {counts['PENDING']}, running {counts['RUNNING']}, done {len(done)}, "
                                f"failed {len(failed)}, requeued {requeued}", refresh=False)
            bar.refresh()
            if len(done) + len(failed) >= len(jobs):
                break
            if self.cancelled():
                self.say(f"error: cancelled (ACTION=cancel) with {len(current)} run(s) not finished", sys.stderr)
                failed |= set(current)
                break
            deadline = self.cluster.deadline_min * 60
            if deadline and self.clock() - start >= deadline:
                waiting = [f"{by_id[k].label()} (job {j}, {last.get(k, '?').lower()})" for k, j in current.items()]
                self.say(f"error: deadline_min={self.cluster.deadline_min:g} reached with {len(waiting)} run(s) not "
                         f"finished: {', '.join(waiting)}; their jobs stay queued: run compare.sh again to attach to "
                         f"them, or scancel {' '.join(current.values())}", sys.stderr)
                failed |= set(current)
                break
            most = max(self.cluster.poll_s, min(MAX_POLL_S, 10 * self.cluster.poll_s))
            poll = self.cluster.poll_s if changed else min(poll * 1.5, most)
            self.sleep(poll)
        bar.close()
        return len(failed)

    def _hopeless(self, job, job_id: str, queued_since: dict, noted: set) -> bool:
        """A queued job: says once why it waits when it has waited pending_note_min; cancels it (True)
        when the reason cannot pass, naming the CLUSTER key to change."""
        reason = getattr(self.backend, "reasons", {}).get(job_id, "")
        if reason in HOPELESS:
            self.backend.cancel([job_id])
            self.say(f"error: run {job.label()} cannot start: job {job_id} waits for {reason}, which waiting will not "
                     f"change; cancelled it: change CLUSTER's {HOPELESS[reason]}", sys.stderr)
            return True
        since = queued_since.setdefault(id(job), self.clock())
        if id(job) not in noted and self.clock() - since >= self.cluster.pending_note_min * 60:
            noted.add(id(job))
            self.say(f"job {job_id} of {job.label()} has waited {self.cluster.pending_note_min:g} min in the queue: "
                     f"{reason or 'no reason given'} (squeue -j {job_id} -o '%i %T %r')")
        return False
