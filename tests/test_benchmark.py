"""The benchmark runs end to end on a tiny setting and writes its JSON (no timing asserted)."""
import json
import os
import sys

import pytest

from conftest import run_command


@pytest.mark.slow
def test_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_command([sys.executable, "scripts/benchmark.py", "--model", "resnet10t", "--size", "32",
                             "--batch", "8", "--train-images", "40", "--steps", "1", "--workers", "0",
                             "--device", "cpu", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["ratios"]) == {"pipeline (ours / article)", "train step (ours / plain)",
                                   "eval step (ours / plain)", "epoch speed (article time / ours)",
                                   "whole process (article time / ours)", "outside the loop (ours / article)"}
    assert all(v > 0 for v in data["ratios"].values())
    ours = data["epoch"]["ours"]
    assert ours["peak_memory_mb"] > 0 and data["setting"]["model"] == "resnet10t"
    # the run's own account of the time outside its loop fits inside the time the benchmark saw outside it
    phases = ours["phase_seconds"]
    assert {"launch", "data", "model", "checkpoints", "final_outputs"} <= set(phases)
    outside = sum(v for k, v in phases.items() if k != "first_step")  # (the first step is inside the epoch)
    assert 0 < outside <= ours["outside_loop_seconds"] and ours["epoch_seconds"] > 0
    assert "| input pipeline, images/s" in result.stdout and "| outside the loop" in result.stdout


@pytest.mark.slow
def test_gpu_check_names_the_step_that_fails_and_shows_its_error(tmp_path):
    # here there is no GPU: the pre-flight step fails, says so in one line, and shows why
    result = run_command(["scripts/gpu_check.sh"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OUT": str(tmp_path / "gpu"), "WHEELS": str(tmp_path / "none"),
                              "PYTHON": sys.executable})
    assert result.returncode == 1
    assert f"error: step 'preflight' failed; the end of {tmp_path / 'gpu'}/preflight.err:" in result.stderr
    assert "AssertionError: torch sees no GPU" in result.stderr


def test_the_weight_average_cost_is_measured_for_both_averages(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark", "scripts/benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--ema", "--model", "resnet10t", "--device", "cpu", "--json", str(tmp_path / "e.json")]) == 0
    costs = json.loads((tmp_path / "e.json").read_text())["ms_per_update"]
    assert len(costs) == 2 and all(c["whole"] > 0 and c["python"] > 0 for c in costs.values())
    assert "| transfer WeightAverage |" in capsys.readouterr().out


def test_gpu_check_reports_each_runs_peak_memory_and_how_many_fit_the_gpu(tmp_path):
    # the per_gpu step's table, from the files a GPU run leaves (RUNS_PER_GPU's default, from memory)
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_steps", "scripts/gpu_check_steps.py")
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    (tmp_path / "gpu.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB, 570.124.06\n")
    (tmp_path / "per_gpu.txt").write_text("1 0.0 30.0\n2 100.0 140.0\n")
    for n, peak in ((1, 9000.0), (2, 9500.0)):
        for seed in range(n):
            folder = tmp_path / f"per_gpu_{n}" / "scratch" / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"train_samples": 900, "history": [{}],
                                                             "peak_device_memory_mb": peak}))
    table = steps.report(argparse.Namespace(out=tmp_path, model="resnet50", size=160, batch=64))
    assert "| 30.0; 30; 1.00x; 9,000 |" in table and "| 40.0; 45; 1.50x; 9,500 |" in table
    assert "| 8 of 81,559 MB |" in table  # 0.9 x 81,559 // 9,000
