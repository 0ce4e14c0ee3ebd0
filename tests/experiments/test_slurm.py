"""EXECUTOR=slurm on a real SLURM cluster of one node (scripts/slurm_local.sh: slurmctld, slurmd and
slurmdbd with MariaDB, started for this module and stopped after it): a tiny suite submitted as an
array job, one run preempted (SIGUSR2 to its job, as SLURM sends ahead of a preemption or a time
limit) and requeued, one cancelled and submitted again, the driver killed and run again (it attaches
to the jobs instead of submitting them twice); the preempted run ends with the weights of an
uninterrupted one.

Needs root and Debian's packages (.ci/run installs them):
    apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server
Deselect with -m "not slurm" on a machine without them."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, kill_group, run_command, start_command

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SETTINGS = ["data.url=null", "model.name=resnet10t", "data.image_size=32", "train.epochs=16", "train.batch_size=8",
            "data.num_workers=0"]
CLUSTER = "gpus_per_run=0 cpus_per_run=1 timeout_min=30 poll_s=1 signal_delay_s=60 array_parallelism=2"
PACKAGES = "munge slurmctld slurmd slurm-client slurmdbd mariadb-server"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment of a one-node SLURM cluster that this module starts and stops."""
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


@contextlib.contextmanager
def slurm_cluster(state: Path, accounting: str = "slurmdbd"):
    """scripts/slurm_local.sh's cluster, its state in `state`: the environment to reach it."""
    # skipped, with the reason in pytest's summary, where SLURM cannot run; .ci/run sets REQUIRE_SLURM=1
    # (after installing it), so there they fail instead of passing unseen
    give_up = pytest.fail if os.environ.get("REQUIRE_SLURM") == "1" else pytest.skip
    missing = [p for p in ("munged", "mariadbd", "slurmctld", "slurmd", "slurmdbd", "sbatch") if not shutil.which(p)]
    if missing:
        give_up(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install {PACKAGES} "
                f"(what .ci/run does) to run these")
    if os.geteuid() != 0:
        give_up("starting a SLURM cluster needs root (scripts/slurm_local.sh)")
    env = {**os.environ, "STATE": str(state), "SLURM_CONF": str(state / "slurm.conf"), "ACCOUNTING": accounting}
    started = run_command(["scripts/slurm_local.sh", "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        run_command(["scripts/slurm_local.sh", "stop"], env=env, capture_output=True, timeout=120)


def job_of(run: Path) -> dict:
    return json.loads((run / "slurm_job.json").read_text())


def warn(job_id: str, env: dict) -> None:
    """SIGUSR2 to every process of the job's step, once. (scancel retries for ~20 s when the
    controller answers "can not be altered now", which it did here after delivering the signal, and
    a retry would reach the requeued job as it starts again.)"""
    try:
        subprocess.run(["scancel", "--signal=USR2", job_id], env=env, capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        pass


def cluster_state(env: dict) -> str:
    """What the queue and the node say, for a failure message (why a job did not start)."""
    commands = (["squeue", "-o", "%i %T %r %C %N"], ["sinfo", "-N", "-o", "%N %T %C %E"])
    return "\n".join(subprocess.run(c, env=env, capture_output=True, text=True, timeout=30).stdout for c in commands)


def wait_until(condition, seconds: float, what: str, log: Path, env: dict, driver=None):
    """Until condition() holds; fails with the log's tail (and, on a timeout, the queue's and the
    node's state) if `seconds` pass or the driver exits first."""
    tail = lambda: log.read_text(errors="replace")[-3000:] if log.exists() else "no output"  # noqa: E731
    deadline = time.monotonic() + seconds
    while not condition():
        assert driver is None or driver.poll() is None, f"the driver exited while waiting for {what}: {tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {tail()}\n{cluster_state(env)}"
        time.sleep(0.2)


def test_a_suite_on_slurm_survives_preemption_cancellation_and_its_driver(slurm, image_folder, weights, tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(f"datasets:\n  a: {{data.root: '{image_folder}'}}\n"
                     f"  b: {{data.root: '{image_folder}', data.image_size: 40}}\n")
    out = tmp_path / "out"
    env = {**slurm, "OUT": str(out), "SUITE": str(suite), "ARMS": "pretrained scratch", "SEEDS": "1",
           "PYTHON": sys.executable, "EXECUTOR": "slurm", "CLUSTER": CLUSTER, "OMP_NUM_THREADS": "1"}
    overrides = [f"model.weights_file={weights}", *SETTINGS]
    preempted_run, cancelled_run = out / "a" / "scratch" / "seed1", out / "b" / "pretrained" / "seed1"

    # the reference: the preempted run as PRINT_JOBS prints it, run here without interruption
    printed = run_command(["scripts/compare.sh", *overrides], capture_output=True, text=True, timeout=120,
                          env={**env, "EXECUTOR": "local", "CLUSTER": "", "PRINT_JOBS": "1",
                               "OUT": str(tmp_path / "reference")})
    assert printed.returncode == 0, printed.stderr
    [line] = [line for line in printed.stdout.splitlines() if "/a/scratch/seed1" in line]
    assert run_command(["bash", "-c", line], env=env, timeout=300).returncode == 0
    reference = tmp_path / "reference" / "a" / "scratch" / "seed1"

    log = tmp_path / "driver1.log"
    with open(log, "w") as f:
        driver = start_command(["scripts/compare.sh", *overrides], env=env, stdout=f, stderr=subprocess.STDOUT)
    under_way = lambda: any((preempted_run / "checkpoints").glob("epoch_*"))  # noqa: E731  (an epoch done)
    wait_until(lambda: under_way() and (cancelled_run / "slurm_job.json").is_file(), 300,
               "the run to preempt to be under way", log, slurm, driver)
    assert not (preempted_run / "metrics.json").exists(), "the run finished before it could be preempted"
    preempted, cancelled = job_of(preempted_run)["job_id"], job_of(cancelled_run)["job_id"]
    assert preempted.split("_")[0] == cancelled.split("_")[0]  # one array job for the suite's runs
    warn(preempted, slurm)  # SLURM's warning before a preemption or a time limit
    subprocess.run(["scancel", cancelled], env=slurm, check=True)  # as if its node died
    wait_until(lambda: job_of(cancelled_run)["attempt"] == 2, 120, "the cancelled run to be submitted again",
               log, slurm, driver)
    kill_group(driver)  # the driver dies; the jobs go on
    driver.wait()

    again = run_command(["scripts/compare.sh", *overrides], env=env, capture_output=True, text=True, timeout=600)
    first = log.read_text(errors="replace")
    assert again.returncode == 0, first[-3000:] + again.stdout[-3000:] + again.stderr[-3000:]
    assert f"submitted a, scratch, seed 1 as job {preempted}" in first, first[-3000:]
    # cancelled while it ran: (cancelled); while it waited, as an array task not started yet, the accounting
    # keeps no record of it: (the accounting has no end for it)
    assert re.search(f"job {cancelled} of .* left the queue without a result \\((cancelled|the accounting has no end "
                     f"for it)\\); submitting it again", first), first[-3000:]
    assert "submitted" not in again.stdout, again.stdout  # attached to the jobs (or found them finished)
    assert job_of(preempted_run)["attempt"] == 1  # requeued by SLURM under its id, not submitted again

    train_log = (preempted_run / "train.log").read_text()
    assert "stopped by SIGUSR2" in train_log and "resumed from" in train_log, train_log[-3000:]
    assert (cancelled_run / "train.log").read_text().count("train: 48 images") in (1, 2)  # appended, if it had begun
    assert "over 2 datasets" in again.stdout
    for dataset in ("a", "b"):
        assert list(json.loads((out / dataset / "summary.json").read_text())["arms"]) == ["pretrained", "scratch"]
    wa, wb = (load_file(f / "model" / "model.safetensors") for f in (reference, preempted_run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # as if never preempted
    ha, hb = (json.loads((f / "metrics.json").read_text())["history"] for f in (reference, preempted_run))
    assert [(h["train_loss"], h["val_loss"], h["val_acc"]) for h in ha] == \
        [(h["train_loss"], h["val_loss"], h["val_acc"]) for h in hb]
    accounting = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State"], env=slurm, capture_output=True,
                                text=True, check=True).stdout
    started = f"{cancelled}|" in accounting  # a task cancelled before it started has no record of its own
    assert not started or f"{cancelled}|CANCELLED" in accounting, accounting


def test_the_multinode_recipe_requeues_and_resumes_a_run_of_two_processes(slurm, image_folder, tmp_path):
    """scripts/slurm_multinode.sbatch on one node with two processes (the CPU's gloo): the warning
    to the batch script reaches the run, which checkpoints; the script requeues the job; the run
    resumes and ends with the weights of an uninterrupted two-process run."""
    args = ["--config", "configs/smoke.yaml", f"data.root={image_folder}", "train.epochs=16"]
    env = {**slurm, "PYTHON": sys.executable, "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    assert run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), "-m", "transfer", *args, f"output_dir={reference}"], env=env,
                       capture_output=True, timeout=300).returncode == 0
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", f"--output={log}",
                          "scripts/slurm_multinode.sbatch", *args, f"output_dir={out}"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    wait_until(lambda: any((out / "checkpoints").glob("epoch_*")), 300, "the job's first epoch", log, env)
    assert not (out / "metrics.json").exists(), "the run finished before it could be warned"
    try:  # what --signal=B:USR2@120 sends ahead of the time limit (see warn())
        subprocess.run(["scancel", "--batch", "--signal=USR2", job], env=env, capture_output=True, timeout=3)
    except subprocess.TimeoutExpired:
        pass
    wait_until(lambda: not subprocess.run(["squeue", "--noheader", "--jobs", job], env=env, capture_output=True,
                                          text=True).stdout.strip(), 300, "the requeued job to end", log, env)
    text = log.read_text(errors="replace")
    assert "stopped by SIGUSR2" in text and "requeueing job" in text and "resumed from" in text, text[-3000:]
    wa, wb = (load_file(f / "model" / "model.safetensors") for f in (reference, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # as if never stopped


def test_refusals_and_stale_jobs_are_one_line_each(slurm, image_folder, tmp_path):
    """On the real cluster: an sbatch refusal (a GPU on a cluster without GPUs), a job that asks more
    than a node has (it would pend for ever with PartitionConfig), and a rerun with other settings
    while the first driver's job is still queued: each one line naming what to change, exit 2."""
    out = tmp_path / "out"
    env = {**slurm, "OUT": str(out), "ARMS": "scratch", "SEEDS": "1", "PYTHON": sys.executable, "EXECUTOR": "slurm",
           "OMP_NUM_THREADS": "1"}
    settings = [f"data.root={image_folder}", *SETTINGS]
    gpu = run_command(["scripts/compare.sh", *settings], env={**env, "CLUSTER": "timeout_min=5 poll_s=1"},
                      capture_output=True, text=True, timeout=120)
    assert gpu.returncode == 2, gpu.stdout[-2000:] + gpu.stderr[-2000:]
    [line] = [line for line in gpu.stderr.splitlines() if line.startswith("error:")]
    assert "sbatch refused the jobs: " in line and "change CLUSTER's gpus_per_run=0" in line, gpu.stderr
    assert "Traceback" not in gpu.stderr

    big = run_command(["scripts/compare.sh", *settings], capture_output=True, text=True, timeout=120,
                      env={**env, "CLUSTER": "gpus_per_run=0 cpus_per_run=64 timeout_min=5 poll_s=1"})
    assert big.returncode == 1, big.stdout[-2000:] + big.stderr[-2000:]
    assert "waits for PartitionConfig, which waiting will not change; cancelled it: change CLUSTER's cpus_per_run" \
        in big.stderr, big.stderr[-2000:]

    # a job held in the queue (as if the cluster were full), then a rerun with another learning rate
    held = {**env, "OUT": str(tmp_path / "held"), "CLUSTER": "gpus_per_run=0 cpus_per_run=1 timeout_min=5 poll_s=1 "
                                                               "sbatch='--begin=now+1hour'"}
    log = tmp_path / "held.log"
    with open(log, "w") as f:
        driver = start_command(["scripts/compare.sh", *settings], env=held, stdout=f, stderr=subprocess.STDOUT)
    record = tmp_path / "held" / "scratch" / "seed1" / "slurm_job.json"
    wait_until(record.is_file, 60, "the held job to be submitted", log, slurm, driver)
    second = run_command(["scripts/compare.sh", *settings], env=held, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2 and "another compare.sh is driving" in second.stderr, second.stderr[-2000:]
    kill_group(driver)
    driver.wait()
    again = run_command(["scripts/compare.sh", *settings, "optim.lr=3e-3"], env=held, capture_output=True, text=True,
                        timeout=60)
    job = job_of(record.parent)["job_id"]
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"has job {job} (pending) from an earlier compare.sh that runs other settings" in again.stderr
    assert "now optim.lr=3e-3" in again.stderr and f"scancel {job}" in again.stderr
    subprocess.run(["scancel", job], env=slurm, check=True)


def test_a_real_preemption_mid_run_is_requeued_and_ends_as_an_uninterrupted_run(slurm, image_folder, tmp_path):
    """A job in the `urgent` partition (a higher priority tier) takes the node's cores from a
    comparison's run: SLURM sends it SIGCONT and SIGTERM, requeues it after the grace time
    (PreemptMode=REQUEUE), and the run, which checkpointed at the SIGTERM, resumes. No warning
    signal is sent first (as on most sites: PreemptParameters=send_user_signal is rare)."""
    out = tmp_path / "out"
    env = {**slurm, "OUT": str(out), "ARMS": "scratch", "SEEDS": "1", "PYTHON": sys.executable, "EXECUTOR": "slurm",
           "CLUSTER": "gpus_per_run=0 cpus_per_run=2 timeout_min=30 poll_s=1", "OMP_NUM_THREADS": "1"}
    settings = [f"data.root={image_folder}", *SETTINGS, "train.epochs=30"]
    printed = run_command(["scripts/compare.sh", *settings], capture_output=True, text=True, timeout=120,
                          env={**env, "EXECUTOR": "local", "CLUSTER": "", "PRINT_JOBS": "1",
                               "OUT": str(tmp_path / "reference")})
    assert printed.returncode == 0, printed.stderr
    assert run_command(["bash", "-c", printed.stdout.strip()], env=env, timeout=300).returncode == 0
    reference, run = tmp_path / "reference" / "scratch" / "seed1", out / "scratch" / "seed1"

    log = tmp_path / "driver.log"
    with open(log, "w") as f:
        driver = start_command(["scripts/compare.sh", *settings], env=env, stdout=f, stderr=subprocess.STDOUT)
    wait_until(lambda: any((run / "checkpoints").glob("epoch_*")), 300, "the run to be under way", log, slurm, driver)
    assert not (run / "metrics.json").exists(), "the run finished before it could be preempted"
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=2", "--output=/dev/null",
                             "--wrap", "sleep 2"], env=slurm, capture_output=True, text=True, check=True).stdout.strip()
    assert driver.wait(timeout=600) == 0, log.read_text(errors="replace")[-3000:]
    said, train_log = log.read_text(errors="replace"), (run / "train.log").read_text()
    assert "stopped by SIGTERM" in train_log and "resumed from" in train_log, train_log[-3000:]
    assert "submitting it again" not in said and job_of(run)["attempt"] == 1, said[-3000:]  # SLURM's requeue alone
    accounting = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_of(run)["job_id"], "-o", "State"],
                                env=slurm, capture_output=True, text=True).stdout
    assert "PREEMPTED" in accounting or "REQUEUED" in accounting, (accounting, urgent)
    wa, wb = (load_file(f / "model" / "model.safetensors") for f in (reference, run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # as if never preempted
    left = subprocess.run(["pgrep", "-f", f"output_dir={run}"], capture_output=True, text=True).stdout.split()
    assert not left, left  # no process of either attempt outlived its job
    status = run_command(["scripts/compare.sh"], env={**env, "ACTION": "status"}, capture_output=True, text=True,
                         timeout=60)
    assert status.returncode == 0 and status.stdout.splitlines()[-1].startswith("queued 0, running 0, done 1, "
                                                                                 "failed 0"), status.stdout
