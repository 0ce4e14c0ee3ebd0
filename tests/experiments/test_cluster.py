"""EXECUTOR=slurm's driver against a stand-in for SLURM (scripted job states, no scheduler): submit,
attach after the driver died, wait, resubmit a job that left the queue without a result, name a
run that failed with its own error, count requeues as no failure; and CLUSTER read strictly. The
real cluster: test_slurm.py."""
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from transfer.errors import ConfigError, RunError
from transfer.experiments.cluster import RECORD, ClusterRunner, ClusterSpec
from transfer.experiments.spec import CompareSpec


@dataclass(eq=False)
class Run:
    """A planned run as the driver sees it (plan.Job's folder and label)."""
    name: str
    folder: Path

    def label(self) -> str:
        return self.name


@dataclass
class StandIn:
    """SLURM as a script: `timelines[command]` lists the states its job goes through, one a look
    (the last repeats); a job reaching COMPLETED writes the run's metrics.json, FAILED its error."""
    timelines: dict
    submitted: list = field(default_factory=list)
    looks: dict = field(default_factory=dict)
    commands: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    cancelled: list = field(default_factory=list)

    def cancel(self, job_ids):
        self.cancelled += job_ids

    def submit(self, runs):
        ids = []
        for command, _ in runs:
            job_id = f"100_{len(self.submitted)}"
            self.submitted.append(command)
            self.commands[job_id] = command
            ids.append(job_id)
        return ids

    def states(self, job_ids):
        result = {}
        for job_id in job_ids:
            command = self.commands.get(job_id)
            if command is None:
                result[job_id] = "RUNNING"  # a job of an earlier driver, still going
                continue
            timeline = self.timelines[command][sum(c == command for c in self.submitted) - 1]
            step = self.looks.get(job_id, 0)
            self.looks[job_id] = step + 1
            state = timeline[min(step, len(timeline) - 1)]
            folder = Path(command)
            if state == "COMPLETED":
                (folder / "metrics.json").write_text("{}")
            if state == "FAILED":
                (folder / "train.log").write_text("error: data.root /nowhere does not exist\n")
            if state.endswith(":stopped"):  # the job ended while its run stopped for a preemption
                (folder / "train.log").write_text("stopped: stopped by SIGUSR2; checkpoint saved in x. Resume ...\n")
                state = state.split(":")[0]
            if state.endswith(":startup"):  # ... stopped by the signal before its first step: nothing saved
                (folder / "train.log").write_text("stopped: stopped during start-up by SIGUSR2, before the first "
                                                  "step: nothing to save (no checkpoint exists yet); ...\n")
                state = state.split(":")[0]
            if state.startswith("PENDING:"):  # waiting, for this reason
                state, self.reasons[job_id] = state.split(":", 1)
            result[job_id] = state
        return result
        return result


def runner(backend, clock=None, sleep=None, **cluster):
    said = []
    return ClusterRunner(backend, ClusterSpec(**{"poll_s": 1, **cluster}), lambda run: str(run.folder),
                         say=lambda text, stream=None: said.append(text), progress=False,
                         clock=clock or FakeClock(), sleep=sleep or (lambda s: None)), said


class FakeClock:
    """time.monotonic for the driver: `sleep` moves it on."""
    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_jobs_are_submitted_waited_for_retried_and_failures_named(tmp_path):
    runs = [Run(n, tmp_path / n) for n in ("ok", "preempted", "node", "bad", "lost", "stopping", "short")]
    backend = StandIn({
        str(tmp_path / "ok"): [["PENDING", "RUNNING", "COMPLETED"]],
        str(tmp_path / "preempted"): [["RUNNING", "PENDING", "RUNNING", "COMPLETED"]],  # requeued, resumed
        str(tmp_path / "node"): [["RUNNING", "NODE_FAIL"], ["PENDING", "COMPLETED"]],  # no result: again
        str(tmp_path / "bad"): [["RUNNING", "FAILED"]],  # its own error: not again
        str(tmp_path / "lost"): [["CANCELLED"], ["CANCELLED"], ["CANCELLED"]],  # max_retries=2: 3 attempts
        str(tmp_path / "stopping"): [["RUNNING", "FAILED:stopped"], ["COMPLETED"]],  # not its own error: again
        # a time slot shorter than its start-up: stopped before a first step each time, and each time counts
        str(tmp_path / "short"): [["RUNNING", "FAILED:startup"]] * 3,
    })
    driver, said = runner(backend, max_retries=2)
    assert driver.run_all(runs) == 3  # bad, lost and short
    assert backend.submitted.count(str(tmp_path / "short")) == 3
    assert "job 100_6 of short left the queue without a result (stopped during its start-up); submitting it again " \
           "(retry 1 of 2)" in said
    assert backend.submitted.count(str(tmp_path / "node")) == 2 and backend.submitted.count(str(tmp_path / "lost")) == 3
    assert backend.submitted.count(str(tmp_path / "stopping")) == 2
    assert backend.submitted.count(str(tmp_path / "preempted")) == 1  # its requeue is SLURM's, not a resubmission
    assert "error: run bad failed (error: data.root /nowhere does not exist)" in "\n".join(said)
    assert any(line.startswith("error: run lost failed: its job left the queue without a result 3 time(s)")
               for line in said)
    record = json.loads((tmp_path / "node" / RECORD).read_text())
    last = len(backend.submitted) - 1 - backend.submitted[::-1].index(str(tmp_path / "node"))
    assert record["attempt"] == 2 and record["job_id"] == f"100_{last}"  # the second submission's


def test_a_driver_run_again_attaches_to_its_queued_jobs_instead_of_submitting_them(tmp_path):
    runs = [Run(n, tmp_path / n) for n in ("queued", "gone")]
    for run, job_id in zip(runs, ("77_0", "77_1")):
        run.folder.mkdir()
        (run.folder / RECORD).write_text(json.dumps({"job_id": job_id, "attempt": 1, "command": str(run.folder)}))

    class Earlier(StandIn):
        def states(self, job_ids):
            known = {"77_0": "RUNNING", "77_1": "COMPLETED"}  # the earlier driver's: one still running, one ended
            found = super().states([j for j in job_ids if j not in known])
            for j in job_ids:
                if j == "77_0":
                    self.looks[j] = self.looks.get(j, 0) + 1
                    found[j] = "RUNNING" if self.looks[j] < 3 else "COMPLETED"
                    if found[j] == "COMPLETED":
                        (tmp_path / "queued" / "metrics.json").write_text("{}")
                elif j in known:
                    found[j] = known[j]
            return found
    backend = Earlier({str(tmp_path / "gone"): [["RUNNING", "COMPLETED"]]})
    driver, said = runner(backend)
    assert driver.run_all(runs) == 0
    assert backend.submitted == [str(tmp_path / "gone")]  # ended without a result: submitted; the other attached
    assert "attached queued to job 77_0 (running)" in said
    assert json.loads((tmp_path / "gone" / RECORD).read_text())["attempt"] == 2


def test_a_rerun_with_other_settings_never_attaches_to_the_old_jobs(tmp_path):
    run = Run("pretrained seed 0", tmp_path / "p")
    run.folder.mkdir()
    (run.folder / RECORD).write_text(json.dumps({"job_id": "77_0", "attempt": 1,
                                                 "command": f"launch {run.folder} optim.lr=0.001"}))
    backend = StandIn({})  # 77_0: a job of an earlier driver, still running
    driver = ClusterRunner(backend, ClusterSpec(poll_s=1), lambda r: f"launch {r.folder} optim.lr=0.003",
                           say=lambda *a: None, progress=False)
    with pytest.raises(RunError, match=r"run pretrained seed 0 has job 77_0 \(running\) from an earlier compare.sh "
                                       r"that runs other settings \(was optim.lr=0.001, now optim.lr=0.003\): cancel "
                                       r"them \(scancel 77_0\) .* nothing was submitted"):
        driver.run_all([run])
    assert backend.submitted == []


def test_without_accounting_or_when_preempted_the_driver_judges_by_the_run_folder_and_ends(tmp_path):
    runs = [Run(n, tmp_path / n) for n in ("done", "lost", "preempted", "stopped")]
    backend = StandIn({
        str(tmp_path / "done"): [["RUNNING", "LEFT:done"]],  # left the queue, no accounting: metrics.json says done
        str(tmp_path / "lost"): [["RUNNING", "LEFT"], ["COMPLETED"]],  # left without a result: a counted retry
        str(tmp_path / "preempted"): [["RUNNING", "PREEMPTED"], ["COMPLETED"]],  # PreemptMode=CANCEL: not counted
        str(tmp_path / "stopped"): [["RUNNING", "CANCELLED:stopped"], ["COMPLETED"]],  # its run checkpointed: not counted
    })
    original = backend.states

    def states(job_ids):
        found = original(job_ids)
        for job_id, state in found.items():
            if state == "LEFT:done":
                (Path(backend.commands[job_id]) / "metrics.json").write_text("{}")
                found[job_id] = "LEFT"
        return found
    backend.states = states
    driver, said = runner(backend, max_retries=0)
    assert driver.run_all(runs) == 1  # lost: max_retries=0, so its one retry is not allowed
    assert backend.submitted.count(str(tmp_path / "preempted")) == 2 and backend.submitted.count(str(tmp_path / "stopped")) == 2
    assert any("left the queue without a result 1 time(s) (left)" in line for line in said)
    assert "job 100_2 of preempted left the queue without a result (preempted); submitting it again" in said


def test_a_job_that_cannot_start_is_cancelled_and_a_long_wait_is_explained(tmp_path):
    runs = [Run(n, tmp_path / n) for n in ("big", "slow")]
    backend = StandIn({str(tmp_path / "big"): [["PENDING:PartitionConfig"]],
                       str(tmp_path / "slow"): [["PENDING:Priority"] * 30 + ["COMPLETED"]]})
    clock = FakeClock()
    driver, said = runner(backend, clock=clock, sleep=clock.sleep, poll_s=60, pending_note_min=10)
    assert driver.run_all(runs) == 1
    assert backend.cancelled == ["100_0"]
    assert any(line.startswith("error: run big cannot start: job 100_0 waits for PartitionConfig") and
               "change CLUSTER's cpus_per_run, mem_gb or gpus_per_run" in line for line in said)
    notes = [line for line in said if "has waited 10 min in the queue: Priority" in line]
    assert len(notes) == 1  # said once
    # nothing changed while it waited: the looks backed off from poll_s to MAX_POLL_S
    assert clock.slept[0] == 60 and max(clock.slept) == 300 and clock.slept == sorted(clock.slept)


def test_a_deadline_ends_the_wait_and_leaves_the_jobs_to_attach_to(tmp_path):
    runs = [Run("stuck", tmp_path / "stuck")]
    backend = StandIn({str(tmp_path / "stuck"): [["PENDING:JobHeldAdmin"]]})
    clock = FakeClock()
    driver, said = runner(backend, clock=clock, sleep=clock.sleep, poll_s=60, deadline_min=30)
    assert driver.run_all(runs) == 1
    assert backend.cancelled == [] and 30 * 60 <= clock.now < 40 * 60
    assert any(line.startswith("error: deadline_min=30 reached with 1 run(s) not finished: stuck (job 100_0, pending)")
               and "run compare.sh again to attach" in line for line in said)


def test_an_sbatch_refusal_is_one_line_and_what_went_in_before_it_is_recorded(tmp_path):
    from transfer.experiments.slurm import SubmitRefused, refusal

    text = ("Command '['sbatch', '/x/submission_file.sh']' returned non-zero exit status 1.\n"
            "sbatch: error: Invalid generic resource (gres) specification\n")
    assert refusal(text) == ("sbatch refused the jobs: Invalid generic resource (gres) specification; change "
                             "CLUSTER's gpus_per_run=0 on a cluster without GPUs, or the number its nodes have")

    class Refusing(StandIn):
        def submit(self, runs):  # the first array went in, the second was refused
            ids = super().submit(runs[:1])
            raise SubmitRefused(refusal("sbatch: error: QOSMaxSubmitJobPerUserLimit"), ids)
    runs = [Run(n, tmp_path / n) for n in ("a", "b")]
    driver, said = runner(Refusing({}))
    with pytest.raises(SubmitRefused, match=r"^sbatch refused the jobs: QOSMaxSubmitJobPerUserLimit; change CLUSTER's "
                                            r"array_parallelism, or wait.* \(1 run\(s\) submitted before it are "
                                            r"recorded: a rerun attaches to them\)$") as e:
        driver.run_all(runs)
    assert e.value.exit_code == 2
    assert json.loads((tmp_path / "a" / RECORD).read_text())["job_id"] == "100_0" and not (tmp_path / "b" / RECORD).exists()


def test_what_the_runs_download_is_fetched_once_here_before_any_job_is_submitted(image_folder, tmp_path, monkeypatch):
    import tarfile

    from transfer.experiments import prefetch
    from transfer.experiments.plan import bases, plan

    archive = tmp_path / "shapes.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(image_folder, arcname="shapes")
    root = tmp_path / "data" / "shapes"
    jobs = plan(bases(tmp_path / "out", None), ["pretrained", "scratch"], [0, 1],
                [f"data.url={archive}", f"data.root={root}"])
    fetched = []
    monkeypatch.setattr(prefetch, "fetch_weights", lambda model: fetched.append(model.name))
    backend = StandIn({str(job.folder): [["COMPLETED"]] for job in jobs})
    submit = backend.submit
    backend.submit = lambda runs: (assert_there(root), submit(runs))[1]  # the data is there before the first job
    said = []
    driver = ClusterRunner(backend, ClusterSpec(poll_s=1), lambda job: str(job.folder), say=said.append,
                           progress=False, clock=FakeClock(), sleep=lambda s: None,
                           fetch=lambda jobs: prefetch.fetch_inputs(jobs, said.append))
    assert driver.run_all(jobs) == 0 and len(backend.submitted) == 4
    assert fetched == ["resnet50.tv_in1k"]  # the pretrained arm's weights, once for its two seeds
    assert [line for line in said if line.startswith("fetching")] == [
        f"fetching {archive} into {root} (once, here: the jobs read it from there)",
        "fetching the ImageNet weights of resnet50.tv_in1k into the Hugging Face cache (once, here)"]
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]


def assert_there(path):
    assert path.is_dir(), path


def test_weights_that_cannot_be_fetched_are_one_line(monkeypatch):
    from transfer.config import ModelConfig
    from transfer.errors import DataError
    from transfer.experiments.prefetch import fetch_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^model.pretrained: the ImageNet weights of resnet10t could not be downloaded "
                                        r"or found in the Hugging Face cache \(.*\); connect once to the network .*"
                                        r"or give model.weights_file=") as caught:
        fetch_weights(ModelConfig(name="resnet10t"))
    assert "\n" not in str(caught.value)


def test_status_and_cancel_of_a_running_comparison(tmp_path):
    from transfer.experiments.cluster import CANCEL_MARK, act

    runs = [Run(n, tmp_path / "out" / n) for n in ("done", "queued", "running", "failed")]
    backend = StandIn({str(tmp_path / "out" / "done"): [["COMPLETED"]],
                       str(tmp_path / "out" / "queued"): [["PENDING:Priority"]],
                       str(tmp_path / "out" / "running"): [["RUNNING"]],
                       str(tmp_path / "out" / "failed"): [["FAILED"]]})
    looks = []
    driver = ClusterRunner(backend, ClusterSpec(poll_s=1), lambda run: str(run.folder), say=lambda *a: None,
                           progress=False, clock=FakeClock(), sleep=lambda s: None,
                           cancelled=lambda: (looks.append(1), len(looks) > 3)[1])
    assert driver.run_all(runs) == 3  # done; the others not finished when ACTION=cancel came
    said = []
    assert act("status", tmp_path / "out", backend, said.append) == 0
    assert said == ["done: job 100_0 (attempt 1) completed", "failed: job 100_3 (attempt 1) failed: error: data.root "
                    "/nowhere does not exist", "queued: job 100_1 (attempt 1) pending: Priority",
                    "running: job 100_2 (attempt 1) running", f"queued 1, running 1, done 1, failed 1 (4 run(s) of "
                    f"{tmp_path / 'out'})"]
    said.clear()
    assert act("cancel", tmp_path / "out", backend, said.append) == 0
    assert backend.cancelled == ["100_1", "100_2"] and (tmp_path / "out" / CANCEL_MARK).is_file()
    assert said[0].startswith("cancelled 2 job(s) of") and said[0].endswith(": 100_1 100_2; a driver watching them "
                                                                             "ends; compare.sh run again submits what "
                                                                             "has not finished")
    with pytest.raises(ConfigError, match="ACTION=status: no SLURM job was submitted for"):
        act("status", tmp_path / "elsewhere", backend, said.append)
    with pytest.raises(ConfigError, match="ACTION=cancel is for a comparison on SLURM: add EXECUTOR=slurm"):
        CompareSpec.from_environ({"ACTION": "cancel"}, sys.executable)


def test_one_driver_an_out(tmp_path):
    from transfer.experiments.cluster import driver_lock

    with driver_lock(tmp_path):
        with pytest.raises(RunError, match=f"another compare.sh is driving {tmp_path} \\(pid {os.getpid()} on "):
            with driver_lock(tmp_path):
                pass
    with driver_lock(tmp_path):  # released when the first ended
        pass


def test_the_sbatch_script_asks_for_requeue_passes_cpus_to_srun_and_takes_setup_and_checked_options(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from transfer.experiments.slurm import SubmititBackend

    cluster = ClusterSpec.parse("gpus_per_run=0 cpus_per_run=6 setup='module load cuda; source ~/venv/bin/activate' "
                                "sbatch='--exclude=n1,n2 --exclusive --mail-type=END'")
    parameters = SubmititBackend(tmp_path / "out", cluster).executor._executor.parameters
    script = _make_sbatch_string(command="python -m submitit", folder=tmp_path, **parameters)
    for line in ("#SBATCH --requeue", "#SBATCH --exclusive", "#SBATCH --exclude=n1,n2", "#SBATCH --mail-type=END",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --job-name=transfer-out",
                 "module load cuda; source ~/venv/bin/activate"):
        assert line in script, script
    assert "srun --unbuffered --output" in script and "--cpus-per-task 6" in script.split("srun", 1)[1]
    for text, says in (("sbatch='--time=30'", "sbatch option '--time=30' is set by CLUSTER's timeout_min"),
                       ("sbatch='--qos=high'", "is set by CLUSTER's qos"),
                       ("sbatch='--bogus=1'", "sbatch option '--bogus=1' is not one passed on; give --name=value")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            ClusterSpec.parse(text)


@pytest.mark.parametrize("text, says", [
    ("partition=gpu gpus=2", "CLUSTER: unknown key 'gpus'; valid keys: partition, account"),
    ("timeout_min=two", "CLUSTER: timeout_min='two' is not an integer"),
    ("array_parallelism=0", "CLUSTER: array_parallelism=0 is too small"),
    ("partition", "CLUSTER: 'partition' is not key=value")])
def test_cluster_settings_are_read_strictly(text, says):
    with pytest.raises(ConfigError, match=says):
        ClusterSpec.parse(text)


def test_the_executor_and_its_settings_are_checked_together():
    spec = CompareSpec.from_environ({"EXECUTOR": "slurm", "CLUSTER": "partition=gpu gpus_per_run=2 timeout_min=60",
                                     "PYTHON": "py"}, sys.executable)
    assert spec.cluster == ClusterSpec(partition="gpu", gpus_per_run=2, timeout_min=60)
    # one process a GPU of the run's node, on a port free there (two runs on one node)
    assert spec.launch[-5:] == ("--num_processes", "2", "--multi_gpu", "--main_process_port", "0")
    one = CompareSpec.from_environ({"EXECUTOR": "slurm", "CLUSTER": "gpus_per_run=1", "PYTHON": "py"}, sys.executable)
    assert one.launch == ("py",)  # no launcher between SLURM's SIGTERM and the run
    for env, says in (({"EXECUTOR": "pbs"}, "EXECUTOR='pbs' is invalid"),
                      ({"CLUSTER": "partition=gpu"}, "CLUSTER is set but EXECUTOR is not slurm"),
                      ({"EXECUTOR": "slurm", "GPUS": "0"}, "GPUS and JOBS place runs on this machine")):
        with pytest.raises(ConfigError, match=says):
            CompareSpec.from_environ(env, sys.executable)
