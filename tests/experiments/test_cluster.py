"""EXECUTOR=slurm's driver against a stand-in for SLURM (scripted job states, no scheduler): submit,
attach after the driver died, wait, resubmit a job that left the queue without a result, name a
run that failed with its own error, count requeues as no failure; and CLUSTER read strictly. The
real cluster: test_slurm.py."""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from transfer.errors import ConfigError
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

    def submit(self, commands):
        ids = []
        for command in commands:
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
            if state == "FAILED:stopped":  # the job failed while its run stopped for a preemption
                (folder / "train.log").write_text("stopped: stopped by SIGUSR2; checkpoint saved in x. Resume ...\n")
                state = "FAILED"
            result[job_id] = state
        return result


def runner(backend, **cluster):
    said = []
    return ClusterRunner(backend, ClusterSpec(poll_s=0, **cluster), lambda run: str(run.folder),
                         say=lambda text, stream=None: said.append(text), progress=False), said


def test_jobs_are_submitted_waited_for_retried_and_failures_named(tmp_path):
    runs = [Run(n, tmp_path / n) for n in ("ok", "preempted", "node", "bad", "lost", "stopping")]
    backend = StandIn({
        str(tmp_path / "ok"): [["PENDING", "RUNNING", "COMPLETED"]],
        str(tmp_path / "preempted"): [["RUNNING", "PENDING", "RUNNING", "COMPLETED"]],  # requeued, resumed
        str(tmp_path / "node"): [["RUNNING", "NODE_FAIL"], ["PENDING", "COMPLETED"]],  # no result: again
        str(tmp_path / "bad"): [["RUNNING", "FAILED"]],  # its own error: not again
        str(tmp_path / "lost"): [["CANCELLED"], ["CANCELLED"], ["CANCELLED"]],  # max_retries=2: 3 attempts
        str(tmp_path / "stopping"): [["RUNNING", "FAILED:stopped"], ["COMPLETED"]],  # not its own error: again
    })
    driver, said = runner(backend, max_retries=2)
    assert driver.run_all(runs) == 2  # bad and lost
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
        (run.folder / RECORD).write_text(json.dumps({"job_id": job_id, "attempt": 1}))

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
    assert spec.launch[-3:] == ("--num_processes", "2", "--multi_gpu")  # one process a GPU of the run's node
    for env, says in (({"EXECUTOR": "pbs"}, "EXECUTOR='pbs' is invalid"),
                      ({"CLUSTER": "partition=gpu"}, "CLUSTER is set but EXECUTOR is not slurm"),
                      ({"EXECUTOR": "slurm", "GPUS": "0"}, "GPUS and JOBS place runs on this machine")):
        with pytest.raises(ConfigError, match=says):
            CompareSpec.from_environ(env, sys.executable)
