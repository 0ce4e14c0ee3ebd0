"""How much does pretraining help with how much data: nested training subsets, sweeps in
compare.sh run in parallel, failures that do not stop the others, and commands for a scheduler."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_command, tiny_config
from transfer.data.sources import per_class_subset, stratified_subset
from transfer.run import run


def test_subsets_are_nested_and_per_class():
    labels = [0] * 10 + [1] * 7 + [2] * 3
    small, large = per_class_subset(labels, 2, seed=0), per_class_subset(labels, 5, seed=0)
    assert set(small) <= set(large)
    assert [sum(labels[i] == c for i in small) for c in range(3)] == [2, 2, 2]
    assert [sum(labels[i] == c for i in large) for c in range(3)] == [5, 5, 3]  # at most N: class 2 has 3
    assert per_class_subset(labels, 2, seed=1) != small  # drawn by the split seed


def test_a_total_subset_is_stratified_and_nested():
    labels = [0] * 100 + [1] * 50 + [2] * 10
    counts = {n: np.bincount([labels[i] for i in stratified_subset(labels, n, seed=0)], minlength=3).tolist()
              for n in (16, 80, 200)}
    assert counts == {16: [10, 5, 1], 80: [50, 25, 5], 200: [100, 50, 10]}  # each class its share; all when fewer
    for small, large in ((10, 30), (30, 80), (80, 159)):
        assert set(stratified_subset(labels, small, 0)) < set(stratified_subset(labels, large, 0))
    for n in range(1, 160):  # within one image of each class's share, whatever the total
        got = np.bincount([labels[i] for i in stratified_subset(labels, n, 0)], minlength=3)
        assert np.all(np.abs(got - n * np.array([100, 50, 10]) / 160) <= 1), n
    assert stratified_subset(labels, 30, seed=1) != stratified_subset(labels, 30, seed=0)


def test_a_run_on_a_total_subset_records_it(image_folder, tmp_path):
    out = tmp_path / "vtab"
    metrics = run(tiny_config(image_folder, out, "train.epochs=1", "data.train_samples=7"))
    assert metrics.train_samples == 7 and metrics.val_samples == 18
    subset = json.loads((out / "train_subset.json").read_text())
    assert subset["samples"] == 7 and len(subset["train"]) == 7


def test_a_run_on_a_subset_records_it(image_folder, tmp_path):
    out = tmp_path / "few"
    metrics = run(tiny_config(image_folder, out, "train.epochs=1", "data.train_per_class=4"))
    assert metrics.train_samples == 12 and metrics.val_samples == 18  # validation is never subsampled
    subset = json.loads((out / "train_subset.json").read_text())
    assert subset["per_class"] == 4 and len(subset["train"]) == 12


def compare(out, overrides, **env):
    # LAUNCH: each run straight under this Python, without accelerate's launcher process (about 3 s a
    # run); test_compare.py's end-to-end test goes through `accelerate launch`
    return run_command(["scripts/compare.sh", *overrides], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, "LAUNCH": sys.executable,
                               **env})


def overrides_for(image_folder, weights):  # weights: conftest's stand-in ImageNet resnet10t
    return [f"data.root={image_folder}", "data.url=null", "model.name=resnet10t", "data.image_size=32",
            "train.epochs=2", "train.batch_size=8", "data.num_workers=0", f"model.weights_file={weights}"]


@pytest.fixture(scope="module")
def swept(image_folder, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "cmp"
    result = compare(out, overrides_for(image_folder, weights), SWEEP="data.train_per_class=4,null", JOBS="2",
                     SEEDS="0")
    return out, result


@pytest.mark.slow
def test_sweep_runs_in_parallel_and_reports_a_curve(swept):
    out, result = swept
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    started = [line for line in result.stdout.splitlines() if line.startswith("started ")]
    finished = [line for line in result.stdout.splitlines() if line.startswith("finished ")]
    assert len(started) == len(finished) == 4
    lines = result.stdout.splitlines()
    assert lines.index(started[1]) < lines.index(finished[0])  # JOBS=2: the second run started before the first ended
    assert any("pretrained, data.train_per_class=4, seed 0" in line and "val_acc" in line for line in finished)
    assert "Epoch [" not in result.stdout  # with JOBS=2 each run logs to its own folder only
    for value in ("4", "null"):
        for arm in ("pretrained", "scratch"):
            assert "Epoch [2]" in (out / f"data.train_per_class={value}" / arm / "seed0" / "train.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    sweep = summary["sweep"]
    assert sweep["key"] == "data.train_per_class" and sweep["values"] == [4, None]
    assert [p["value"] for p in sweep["points"]] == [4, None] and all(not p["missing"] for p in sweep["points"])
    last = sweep["points"][-1]
    assert summary["arms"]["pretrained"]["best_val_acc"] == last["arms"]["pretrained"]["best_val_acc"]
    assert summary["gain"] == last["gain"]  # the top level describes the last value, as before sweeps
    few = json.loads((out / "data.train_per_class=4" / "scratch" / "seed0" / "metrics.json").read_text())
    assert few["train_samples"] == 12
    report = (out / "report.md").read_text()
    assert "## Sweep over `data.train_per_class`" in report and "| 4 |" in report and "| all |" in report
    assert Image.open(out / "sweep.png").size[0] > 500


@pytest.mark.slow
def test_printed_jobs_run_by_hand_give_the_same_report(swept, image_folder, weights, tmp_path):
    reference, _ = swept
    out = tmp_path / "by_hand"
    printed = compare(out, overrides_for(image_folder, weights), SWEEP="data.train_per_class=4,null", SEEDS="0",
                      PRINT_JOBS="1")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 4 and not (out / "data.train_per_class=4").exists()  # printed, not run
    for line in lines:  # what a SLURM array does with line $SLURM_ARRAY_TASK_ID
        run_command(["bash", "-c", line], check=True, cwd="/", env={**os.environ, "PATH": os.environ["PATH"]})
    assert run_command([sys.executable, "-m", "transfer.report", str(out)], capture_output=True).returncode == 0
    ours, theirs = (json.loads((d / "summary.json").read_text())["sweep"]["points"] for d in (out, reference))
    for a, b in zip(ours, theirs):
        assert a["value"] == b["value"]
        for arm in ("pretrained", "scratch"):
            assert a["arms"][arm]["best_val_acc"] == b["arms"][arm]["best_val_acc"]


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_others_go_on(image_folder, weights, tmp_path):
    out = tmp_path / "cmp"
    result = compare(out, overrides_for(image_folder, weights), SWEEP=f"data.root={image_folder},{tmp_path}/none",
                     ARMS="scratch", JOBS="2")
    assert result.returncode == 1
    assert f"error: run scratch, data.root={tmp_path}/none failed (error: data.root {tmp_path}/none does not exist" \
        in result.stderr
    assert "1 of 2 runs failed" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    good, bad = summary["sweep"]["points"]
    assert good["arms"]["scratch"]["seeds"] == 1 and not good["missing"]
    assert bad["arms"] == {} and bad["missing"] == ["scratch"]
    assert "| missing |" in (out / "report.md").read_text().replace("missing | scratch", "missing |")


@pytest.mark.slow
def test_bad_sweep_settings_fail_before_any_run(image_folder, weights, tmp_path):
    result = compare(tmp_path / "o", overrides_for(image_folder, weights), SWEEP="train.epochs=2,two")
    assert result.returncode == 2 and "train.epochs='two'" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o" / "train.epochs=2").exists()
