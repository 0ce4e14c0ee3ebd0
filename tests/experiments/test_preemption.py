"""A run preempted through submitit ends as an uninterrupted one: submitit's local executor runs the
job's function (slurm.RunCommand) as SLURM would, and its `_interrupt` sends the signal SLURM
sends before a preemption; the function stops the run (it writes a checkpoint), the job is requeued,
the run resumes. The real scheduler: test_slurm.py."""
import os
import signal
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_command

SETTINGS = ["--config", "configs/smoke.yaml", "train.epochs=8", "train.keep_checkpoints=20"]


def children(pid: int) -> list[int]:
    return [int(c) for t in os.listdir(f"/proc/{pid}/task") for c in open(f"/proc/{pid}/task/{t}/children").read().split()]


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for c in found for d in descendants(c)]


def command(root, out) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "-m", "transfer", *SETTINGS,
            f"data.root={root}", f"output_dir={out}", "train.resume=auto"]


@pytest.mark.slow
def test_a_run_preempted_through_submitit_is_requeued_and_ends_as_an_uninterrupted_one(image_folder, tmp_path):
    import shlex

    import submitit

    from transfer.experiments.slurm import RunCommand

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same sums in both runs
    reference = tmp_path / "reference"
    assert run_command(command(image_folder, reference), env=env, capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "preempted"
    out.mkdir()
    line = (f"cd {shlex.quote(os.getcwd())} && OMP_NUM_THREADS=1 " + " ".join(shlex.quote(a) for a in command(
        image_folder, out)) + f" >> {shlex.quote(str(out / 'train.log'))} 2>&1")
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(RunCommand(line, grace_s=120))
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "epoch_002").is_dir():  # well into the run: then the preemption warning
        assert time.monotonic() < deadline and job.state == "RUNNING", job.state
        time.sleep(0.1)
    # what SLURM's --signal does ahead of a preemption: SIGUSR2 to every process of the job's step,
    # here the task (submitit's local controller, its parent, would not pass it on), the run's shell,
    # accelerate's launcher, the run
    task = children(job._process.pid)
    assert len(task) == 1
    step = descendants(task[0])
    assert len(step) >= 3, step  # bash, accelerate's launcher, the run
    for pid in [*task, *step]:
        os.kill(pid, signal.SIGUSR2)
    job.result()  # waits for the requeued job; raises if it failed
    log = (out / "train.log").read_text()
    assert "stopped by SIGUSR2" in log and "resumed from" in log, log[-3000:]
    wa, wb = (load_file(f / "model" / "model.safetensors") for f in (reference, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
