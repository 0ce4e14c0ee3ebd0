"""scripts/compare.sh and its report, and the time budget that makes equal-time comparisons."""
import json
from dataclasses import asdict
import os
import sys

import pytest
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import run_command, tiny_config
from transfer.experiments.report import build
from transfer.experiments.summary import time_to_reach
from transfer.config import dump_yaml, load_config
from transfer.records import EpochRecord, LrFindRecord
from transfer.run import run


def fake_run(folder, accs, seconds=10.0, lr=1e-4, pretrained=True, unseen=None, found=None, **recorded):
    folder.mkdir(parents=True)
    history = [{"epoch": i + 1, "lr": lr, "train_loss": 1.0, "val_loss": 1.0 - a / 2, "val_acc": a,
                "epoch_seconds": seconds, "train_images_per_s": 100.0} for i, a in enumerate(accs)]
    metrics = {"history": history, "best_val_acc": max(accs), "best_epoch": accs.index(max(accs)) + 1,
               "final_val_acc": accs[-1], "final_val_loss": history[-1]["val_loss"], "val_samples": 20,
               "train_seconds": seconds * len(accs),
               "val_subsets": {"unseen_by_imagenet": {"samples": 4, "val_acc": unseen}} if unseen is not None else {},
               "peak_lr": found or lr, "lr_find": asdict(LrFindRecord(
                   "minimum", found, {"minimum": found}, [found / 10, found * 10], found * 10, 100, 1e-7, 10.0, [], [], []))
               if found else None, **recorded}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    cfg = load_config("configs/pretrained.yaml" if pretrained else "configs/scratch.yaml",
                      [f"optim.lr={'find' if found else lr}"])
    (folder / "config.yaml").write_text(dump_yaml(cfg))


def test_report_numbers_match_the_runs(tmp_path):
    fake_run(tmp_path / "pretrained" / "seed0", [0.6, 0.8, 0.9], unseen=0.75)
    fake_run(tmp_path / "pretrained" / "seed1", [0.5, 0.7, 0.8], unseen=0.5)
    fake_run(tmp_path / "scratch" / "seed0", [0.1, 0.2, 0.3], seconds=5.0, lr=1e-3, pretrained=False, unseen=0.25)
    summary = asdict(build(tmp_path))
    p, s = summary["arms"]["pretrained"], summary["arms"]["scratch"]
    assert p["seeds"] == 2 and s["seeds"] == 1
    assert p["best_val_acc"] == pytest.approx(0.85) and p["best_val_acc_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert p["final_val_acc"] == pytest.approx(0.85) and s["final_val_acc"] == pytest.approx(0.3)
    assert s["best_val_acc_std"] == 0 and p["train_seconds"] == 30 and s["train_seconds"] == 15
    # 90% of the mean best (0.765): seed0 at epoch 2 (20 s), seed1 at epoch 3 (30 s)
    assert p["seconds_to_90pct_of_best"] == 25 and p["seconds_to_50pct_of_best"] == 10
    assert s["seconds_to_80pct_of_best"] == 15  # 0.24: reached at epoch 3
    assert summary["gain"]["best_val_acc_points"] == pytest.approx(55.0)
    assert summary["gain"]["final_val_acc_points"] == pytest.approx(55.0)
    assert summary["gain"]["unseen_by_imagenet_val_acc_points"] == pytest.approx(37.5)
    assert set(summary["differing_settings"]) == {"model.pretrained", "optim.lr", "train.freeze_epochs"}
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    report = (tmp_path / "report.md").read_text()
    assert "85.0% ± 7.1" in report and "30.0%" in report and "+55.0 points" in report
    assert "`optim.lr` | `0.0001` | `0.001`" in report and "62.5% ± 17.7 (n=4)" in report
    assert Image.open(tmp_path / "comparison.png").size[0] > 500


def test_runs_on_different_hardware_or_precision_are_a_warning(tmp_path):
    h100 = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "mixed_precision": "bf16"}
    fake_run(tmp_path / "pretrained" / "seed0", [0.6, 0.9], **h100)
    fake_run(tmp_path / "scratch" / "seed0", [0.2, 0.4], pretrained=False, **h100)
    build(tmp_path)
    assert "Warning" not in (tmp_path / "report.md").read_text()
    fake_run(tmp_path / "scratch" / "seed1", [0.2, 0.5], pretrained=False,
             **{**h100, "device_name": "Tesla V100-SXM2-32GB", "mixed_precision": "fp16"})
    summary = build(tmp_path)
    assert summary.arms["scratch"].executions == ["NVIDIA H100 80GB HBM3, bf16, 1 process",
                                                  "Tesla V100-SXM2-32GB, fp16, 1 process"]
    assert ("**Warning**: the runs ran on different hardware, precision or process counts (pretrained: NVIDIA H100 "
            "80GB HBM3, bf16, 1 process; scratch: NVIDIA H100 80GB HBM3, bf16, 1 process / Tesla V100-SXM2-32GB, "
            "fp16, 1 process)") in (tmp_path / "report.md").read_text()


def test_report_shows_the_learning_rate_each_arm_found(tmp_path):
    fake_run(tmp_path / "pretrained" / "seed0", [0.6, 0.9], found=2.5e-4)
    fake_run(tmp_path / "pretrained" / "seed1", [0.6, 0.8], found=3e-4)
    fake_run(tmp_path / "scratch_strong" / "seed0", [0.2, 0.4], pretrained=False, found=4.2e-3)
    summary = asdict(build(tmp_path))
    assert summary["arms"]["scratch_strong"]["peak_lr"] == [4.2e-3] and summary["arms"]["pretrained"]["lr_found"]
    report = (tmp_path / "report.md").read_text()
    assert "| `optim.lr (used)` | `0.00025, 0.0003 (found)` | `0.0042 (found)` |" in report, report


def test_the_strong_recipes_get_their_own_gain(tmp_path):
    fake_run(tmp_path / "pretrained" / "seed0", [0.6, 0.8])
    fake_run(tmp_path / "scratch" / "seed0", [0.2, 0.3], pretrained=False)
    fake_run(tmp_path / "pretrained_strong" / "seed0", [0.7, 0.9])
    fake_run(tmp_path / "scratch_strong" / "seed0", [0.3, 0.5], pretrained=False)
    summary = asdict(build(tmp_path))
    plain, strong = summary["gains"]
    assert summary["gain"] == plain and plain["arms"] == ["pretrained", "scratch"]
    assert strong["arms"] == ["pretrained_strong", "scratch_strong"]
    assert strong["final_val_acc_points"] == pytest.approx(40.0) and plain["final_val_acc_points"] == pytest.approx(50.0)
    assert "(pretrained_strong vs scratch_strong)" in strong["headline"] and "vs" not in plain["headline"]
    report = (tmp_path / "report.md").read_text()
    assert "**Gain of pretraining (pretrained_strong vs scratch_strong)**: +40.0 points" in report
    only_strong = tmp_path / "strong"
    for arm in ("pretrained_strong", "scratch_strong"):
        (only_strong / arm).mkdir(parents=True)
        (tmp_path / arm / "seed0").rename(only_strong / arm / "seed0")
    assert build(only_strong).gain.arms == ["pretrained_strong", "scratch_strong"]


def test_time_to_reach():
    history = [EpochRecord(i + 1, 1e-3, 1.0, 1.0, a, 2.0, 10.0) for i, a in enumerate((0.2, 0.5, 0.4, 0.9))]
    assert time_to_reach(history, 0.5) == 4.0 and time_to_reach(history, 0.95) is None


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_time_budget_stops_anneals_and_writes_everything(image_folder, tmp_path, monkeypatch):
    import fake_clock

    fake_clock.install(0.5, monkeypatch.setattr)  # each step 0.5 s on the budget clock: 16 steps fit 8 s, at any machine speed
    out = tmp_path / "budget"
    metrics = run(tiny_config(image_folder, out, "train.epochs=200", "train.time_budget_s=8"))
    assert metrics.stopped_by_time_budget and len(metrics.history) < 200
    assert 15 <= metrics.optimizer_steps <= 17 and 8 - 0.5 <= metrics.train_seconds <= 8 + 0.5  # the budget, used
    lrs = metrics.lr_per_step
    assert max(lrs) > 0.9 * 3e-3  # warmed up to the peak within the budget...
    assert lrs[-1] == pytest.approx(3e-3 / 25 / 1e4, rel=1e-6)  # ...and annealed to its end, though 200 epochs were allowed
    for name in ("metrics.json", "config.yaml", "val_predictions.csv", "model/model.safetensors",
                 "plots/accuracy.png", "plots/loss.png", "plots/lr.png", "plots/confusion.png"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_compare_sh_end_to_end_offline(odd_folder, tmp_path):
    import timm

    weights = tmp_path / "imagenet.safetensors"  # a stand-in for downloaded ImageNet weights
    save_file(timm.create_model("resnet10t", num_classes=1000).state_dict(), str(weights))
    out = tmp_path / "cmp"
    # a root with a space in it, classes named with [ ] * ? # % , "
    overrides = [f"data.root={odd_folder}", "data.url=null", "model.name=resnet10t", "data.image_size=32",
                 "train.epochs=2", "train.batch_size=8", "data.num_workers=0", f"model.weights_file={weights}"]
    env = {**os.environ, "OUT": str(out), "ARMS": "pretrained scratch probe", "SEEDS": "7",
           "PYTHON": sys.executable}  # the interpreter running the tests, activated or not
    result = run_command(["scripts/compare.sh", *overrides], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["arms"]) == ["pretrained", "scratch", "probe"]
    assert all(a["seeds"] == 1 for a in summary["arms"].values())
    probe = yaml.safe_load((out / "probe" / "seed7" / "config.yaml").read_text())
    assert probe["train"]["freeze_epochs"] == "all" and probe["train"]["seed"] == 7
    probe_history = json.loads((out / "probe" / "seed7" / "metrics.json").read_text())["history"]
    assert [h["frozen"] for h in probe_history] == [True, True]  # the backbone stays frozen for the whole run
    assert (out / "report.md").is_file() and (out / "comparison.png").is_file()
    assert "Epoch [2]" in (out / "scratch" / "seed7" / "train.log").read_text()

    # A second call reuses finished arms instead of training over them.
    before = (out / "pretrained" / "seed7" / "metrics.json").read_text()
    again = run_command(["scripts/compare.sh", *overrides], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout.count("reusing it") == 3
    assert (out / "pretrained" / "seed7" / "metrics.json").read_text() == before

    # A bad setting fails once, before any run, naming the key.
    bad = run_command(["scripts/compare.sh", *overrides, "train.epochs=oops"], capture_output=True, text=True,
                         env={**env, "OUT": str(tmp_path / "bad"), "SEEDS": ""})
    assert bad.returncode == 2 and bad.stderr.startswith("error: train.epochs='oops' has the wrong type")
    assert not (tmp_path / "bad" / "pretrained").exists()
