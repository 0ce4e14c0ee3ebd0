"""EXECUTOR=slurm on a cluster that keeps no accounting (no slurmdbd: sacct fails, as on many lab
clusters): the driver judges a job that left the queue by the run folder it wrote, and ends with
the report. Its own one-node cluster (scripts/slurm_local.sh with ACCOUNTING=none)."""
import subprocess
import sys

import pytest

from conftest import run_command
from test_slurm import SETTINGS, slurm_cluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), accounting="none") as env:
        yield env


def test_a_comparison_without_accounting_runs_to_its_report(slurm, image_folder, weights, tmp_path):
    assert subprocess.run(["sacct", "-n"], env=slurm, capture_output=True).returncode != 0  # none kept indeed
    out = tmp_path / "out"
    env = {**slurm, "OUT": str(out), "ARMS": "pretrained scratch", "SEEDS": "1", "PYTHON": sys.executable,
           "EXECUTOR": "slurm", "CLUSTER": "gpus_per_run=0 cpus_per_run=1 timeout_min=10 poll_s=1 deadline_min=8",
           "OMP_NUM_THREADS": "1"}
    result = run_command(["scripts/compare.sh", f"data.root={image_folder}", *SETTINGS, "train.epochs=2",
                          f"model.weights_file={weights}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished pretrained, seed 1" in result.stdout and "finished scratch, seed 1" in result.stdout
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
