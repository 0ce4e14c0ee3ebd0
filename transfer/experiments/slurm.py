"""SLURM itself, for EXECUTOR=slurm (cluster.py drives): what a job runs (`RunCommand`, submitit's
job function), how jobs are submitted (one array a stage, cut below MaxArraySize; an sbatch that
refuses is one line naming the CLUSTER key to change) and how their states are read (squeue for
this driver's own jobs while they are queued or running, with why they wait; sacct only for jobs
that left the queue; a job that left it while the accounting has no end for it, as on clusters
without slurmdbd (at once there) or for LEFT_AFTER_S, is "LEFT": judged by the run folder it wrote)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from ..errors import ConfigError
from ..processes import become_subreaper
from .prefetch import OFFLINE_ENV

LOGS = ".slurm"  # OUT/.slurm/<job id>: submitit's pickles and logs of each job
# states of a job that is still on its way (sacct's names); any other is the end of it. PREEMPTED is
# an end once the job has left the queue (PreemptMode=CANCEL); while squeue still lists it, SLURM may
# requeue it, so it reads REQUEUED there
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "CONFIGURING",
          "COMPLETING", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"}
LEFT = "LEFT"  # gone from the queue, and the accounting has no end for it (none kept, lagging too long, or
# a task cancelled before it started)
LEFT_AFTER_S = 30.0  # how long the accounting may lag behind the queue before a job counts as LEFT
# sbatch's refusals, by what they say, and the CLUSTER key that changes them
REFUSALS = (("submit", "array_parallelism, or wait: a limit on the jobs you may have submitted"),
            ("gres", "gpus_per_run=0 on a cluster without GPUs, or the number its nodes have"),
            ("account", "account= one of yours (sacctmgr show assoc user=$USER)"),
            ("qos", "qos= one your account may use"),
            ("node configuration is not available", "cpus_per_run, mem_gb or gpus_per_run: more than a node has"),
            ("time limit", "timeout_min: within the partition's limit (sinfo -o '%P %l')"),
            ("feature", "constraint= a feature the nodes have (sinfo -o '%f')"),
            ("partition", "partition= one of sinfo's partitions"))  # in this order: the first word found names it


class SubmitRefused(ConfigError):
    """sbatch said no: its reason and the CLUSTER key to change, in one line (exit 2). `submitted`:
    the job ids of the arrays that went in before it (their records are kept)."""

    def __init__(self, message: str, submitted: list[str]):
        super().__init__(message)
        self.submitted = submitted


def refusal(text: str) -> str:
    """sbatch's own words (its `error:` lines) and what to change, from submitit's error text."""
    said = [line.split("error:", 1)[1].strip() for line in str(text).splitlines() if "error:" in line]
    reason = "; ".join(dict.fromkeys(said)) or str(text).strip().splitlines()[-1]
    hint = next((h for word, h in REFUSALS if word in reason.lower()), "the CLUSTER settings it names")
    return f"sbatch refused the jobs: {reason}; change CLUSTER's {hint}"


class RunCommand:
    """One run as a job's function: the shell command of the run (as PRINT_JOBS prints it). submitit
    calls `checkpoint` at the warning signal of a preemption or a time limit: the run is asked to
    stop (it writes a checkpoint and exits), and the job is requeued with the same function, which
    runs the command again: it resumes. (submitit's Checkpointable, whose `checkpoint` this
    overrides.) It is requeued only when the run made progress: a checkpoint newer than this job's
    start (`folder`); a run that wrote none in a whole time slot (hung, or a slot shorter than its
    start-up) ends instead, and the driver counts the attempt.

    Signals: SLURM sends its warning (--signal) and, at a preemption, SIGTERM to every process of
    the job; only the run knows what to do with them, so the shell and a launcher ignore them (a
    launcher that took SIGTERM would kill the run before its checkpoint is written: torch-elastic
    does, 30 s later). Every process the run starts stays below this one (a child subreaper), also
    a launcher's workers in their own sessions: `checkpoint` signals them all, and whatever is left
    when the run's shell has ended is ended too."""

    def __init__(self, command: str, grace_s: float = 110.0, folder: str | None = None, env: dict | None = None):
        self.command, self.grace_s, self.folder, self.env = command, grace_s, folder, dict(env or {})
        self._pid: int | None = None
        self._started = time.time()

    def __getstate__(self) -> dict:
        return {"command": self.command, "grace_s": self.grace_s, "folder": self.folder, "env": self.env,
                "_pid": None, "_started": 0.0}

    def __call__(self) -> None:
        self._started, self._terminated = time.time(), False
        become_subreaper()
        # `env` (the driver's offline switches) under what the job inherited; the launcher leaves SIGTERM to the run
        env = {**os.environ, **self.env, "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGINT,SIGHUP,SIGQUIT"}
        before = signal.signal(signal.SIGTERM, self._on_sigterm)  # over submitit's, which only logs it
        try:
            process = subprocess.Popen(["bash", "-c", "trap '' TERM USR1 USR2; " + self.command], env=env,
                                       start_new_session=True)
            self._pid = process.pid
            code = process.wait()
            if not _wait_for_descendants(self.grace_s):  # a process of the run that outlived the shell
                _signal_descendants(signal.SIGKILL)
                _wait_for_descendants(10)
            _reap()
            self._pid = None
        finally:
            signal.signal(signal.SIGTERM, before)
        if code != 0 and self._terminated and self.progressed() and _requeue_this_job():
            return  # queued again: the run resumes from its checkpoint when the job runs again
        if code != 0:
            raise RuntimeError(f"the run exited with code {code}; see its train.log")

    def _on_sigterm(self, signum, frame) -> None:
        """SLURM's SIGTERM at a preemption (or a time limit, or scancel): every process of the job has
        it; passed on to the run's in case only this one had it (`scancel --batch`). The run
        checkpoints and exits; then the job asks to be queued again, since a job that ends by
        itself within the grace time counts as ended, not preempted (seen on SLURM 22.05 with
        PreemptMode=REQUEUE: FAILED, never requeued)."""
        self._terminated = True
        _signal_descendants(signal.SIGTERM)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        if self._pid is not None:
            # the run has had SLURM's signal too, or not (a signal to the job's shell only): SIGUSR2 again is harmless
            _signal_descendants(signal.SIGUSR2)  # the run writes a checkpoint at its next step, then exits
            if not _wait_for_descendants(self.grace_s):
                _signal_descendants(signal.SIGKILL)  # the last complete checkpoint is intact: resume from it
        if not self.progressed():
            return None  # not requeued: the driver sees the job end without a result
        return DelayedSubmission(RunCommand(self.command, self.grace_s, self.folder, self.env), *args, **kwargs)

    def progressed(self) -> bool:
        """A checkpoint written since this job started (True without a folder to look in)."""
        if self.folder is None:
            return True
        from ..training.checkpoint import STATE_FILE, list_checkpoints  # torch: here, in the job only

        return any((c / STATE_FILE).stat().st_mtime >= self._started for c in list_checkpoints(Path(self.folder)))


def _requeue_this_job() -> bool:
    """scontrol requeue of the job this process runs in (an array task by its own id); False when
    not under SLURM or refused (then the job fails, and the driver submits it again uncounted:
    the run's last line says it was stopped by a signal)."""
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{task}" if task and "SLURM_ARRAY_JOB_ID" in os.environ \
        else os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        return subprocess.run(["scontrol", "requeue", job], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _descendants() -> list[int]:
    """This process's live descendants (zombies aside)."""
    children, alive = {}, set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    state, parent = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            children.setdefault(int(parent), []).append(int(entry.name))
            if state != "Z":
                alive.add(int(entry.name))
    found, frontier = [], [os.getpid()]
    while frontier:
        for child in children.get(frontier.pop(), []):
            frontier.append(child)
            if child in alive:
                found.append(child)
    return found


def _signal_descendants(signum: int) -> None:
    for pid in _descendants():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _wait_for_descendants(seconds: float) -> bool:
    """Wait until no descendant is alive; False if some still are after `seconds`."""
    deadline = time.monotonic() + seconds
    while _descendants():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _reap() -> None:
    """Collect the exits of the orphans this subreaper adopted (once the run's shell is waited for:
    its own exit is Popen's to collect)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


class SubmititBackend:
    """Jobs on SLURM through submitit; cluster.Backend."""

    def __init__(self, out: Path, cluster):
        import submitit  # only for EXECUTOR=slurm

        self.cluster, self.submitit = cluster, submitit
        self.executor = submitit.AutoExecutor(folder=Path(out) / LOGS / "%j", cluster="slurm",
                                              slurm_max_num_timeout=cluster.max_requeues)
        # --requeue: sites with JobRequeue=0 refuse a requeue not asked for
        extra = {**{k: v for k in ("account", "qos", "constraint") if (v := getattr(cluster, k))}, "requeue": True,
                 **cluster.sbatch_options()}
        self.executor.update_parameters(
            name=f"transfer-{Path(out).name}", timeout_min=cluster.timeout_min, nodes=1, tasks_per_node=1,
            cpus_per_task=cluster.cpus_per_run, slurm_array_parallelism=cluster.array_parallelism,
            slurm_signal_delay_s=cluster.signal_delay_s, slurm_additional_parameters=extra,
            # srun does not inherit sbatch's --cpus-per-task on SLURM 22.05-23.02: the run would get one core
            slurm_srun_args=["--cpus-per-task", str(cluster.cpus_per_run)],
            **({"slurm_setup": [cluster.setup]} if cluster.setup else {}),
            **({"gpus_per_node": cluster.gpus_per_run} if cluster.gpus_per_run else {}),
            **({"slurm_partition": cluster.partition} if cluster.partition else {}),
            **({"mem_gb": cluster.mem_gb} if cluster.mem_gb else {}))
        self.watcher = submitit.SlurmJob.watcher
        self.reasons: dict[str, str] = {}  # why each queued job waits (squeue's %r), as of the last look
        self._gone: dict[str, float] = {}  # job -> when it was first seen gone from the queue without an end
        self._accounting: bool | None = None  # whether the cluster keeps any (asked once, when first needed)

    def max_array_size(self) -> int:
        """The cluster's MaxArraySize (an array's indices go up to one less)."""
        try:
            config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
            return int(re.search(r"MaxArraySize\s*=\s*(\d+)", config).group(1))
        except (OSError, AttributeError, ValueError, subprocess.TimeoutExpired):
            return 1001  # SLURM's default

    def submit(self, runs: list[tuple[str, Path]]) -> list[str]:
        """(command, run folder) each: the job ids, in order. SubmitRefused when sbatch says no."""
        grace = max(self.cluster.signal_delay_s - 10, 10)
        size, ids = max(self.max_array_size() - 1, 1), []
        for first in range(0, len(runs), size):
            jobs = []
            try:
                with self.executor.batch():
                    for command, folder in runs[first:first + size]:
                        jobs.append(self.executor.submit(RunCommand(command, grace, str(folder), OFFLINE_ENV)))
            except self.submitit.core.utils.FailedJobError as e:
                raise SubmitRefused(refusal(str(e)), ids) from None
            ids += [job.job_id for job in jobs]
        return ids

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """Each job's state: the controller's (squeue) while it is queued or running, then the
        accounting's (sacct, through submitit's watcher) for how it ended. sacct alone lags: a
        requeued job can read FAILED there for a few seconds before it is PENDING again; and without
        accounting it never says: a job gone from the queue for LEFT_AFTER_S with no end there is
        LEFT."""
        live = self._queue(job_ids)
        states = {j: live[j] for j in job_ids if live is not None and j in live}
        ended = [j for j in job_ids if j not in states]
        if ended:
            for job_id in ended:
                self.watcher.register_job(job_id)
            try:
                self.watcher.update()  # one sacct call for all
            except Exception:  # no accounting: submitit bypasses sacct's error, or raises it
                pass
            now = time.monotonic()
            for job_id in ended:
                state = (self.watcher.get_state(job_id, mode="cache") or "UNKNOWN").split()[0].upper()
                if live is None or state not in ACTIVE:
                    states[job_id] = state
                    continue
                # gone from the queue, not ended in the accounting: that lags a little behind a job that ran, and
                # never records an array task cancelled before it started (PENDING in a range, or nothing); a
                # cluster without accounting has no end to wait for
                since = self._gone.setdefault(job_id, now)
                left = state == "PENDING" or now - since >= LEFT_AFTER_S or not self.accounting(job_id)
                states[job_id] = LEFT if left else "COMPLETING"
        return states

    def accounting(self, job_id: str) -> bool:
        """Whether the cluster keeps accounting: sacct says "accounting storage is disabled" on
        one without (AccountingStorageType=accounting_storage/none). Asked once."""
        if self._accounting is None:
            try:
                result = subprocess.run(["sacct", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True,
                                        text=True, timeout=60)
                self._accounting = "accounting storage is disabled" not in (result.stdout + result.stderr).lower()
            except (OSError, subprocess.TimeoutExpired):
                return True  # not known: wait for it as for a lagging one
        return self._accounting

    def _queue(self, job_ids: list[str]) -> dict[str, str] | None:
        """These jobs' states while queued or running (array tasks one a line; a task not started
        yet is listed under its array's pending line), their reasons in self.reasons; None if squeue
        failed."""
        arrays = sorted({j.split("_")[0] for j in job_ids})
        if not arrays:
            return {}
        try:
            result = subprocess.run(["squeue", "--noheader", "--array", "--jobs", ",".join(arrays),
                                     "--format", "%i %T %r"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode != 0:
            # squeue refuses ids it no longer knows ("Invalid job id specified") once all have left
            return {} if "invalid job id" in result.stderr.lower() else None
        live = {}
        for line in result.stdout.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) >= 2:
                live[parts[0]] = "REQUEUED" if parts[1] == "PREEMPTED" else parts[1]
                self.reasons[parts[0]] = parts[2] if len(parts) > 2 else ""
        return live
