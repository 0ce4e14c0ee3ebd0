"""Two processes (torchrun, gloo on CPU): sharded training, every validation image scored once."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import free_port, run_command, tiny_config
from transfer.run import run


@pytest.mark.slow
def test_two_process_run_scores_each_val_image_exactly_once(image_folder, tmp_path):
    out = tmp_path / "ddp"
    # 18 val images in batches of 2 x 8: the last step is padded, and the padding must not be scored
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "run_transfer.py", "--config", "configs/smoke.yaml", f"data.root={image_folder}",
               f"output_dir={out}", "train.epochs=4", "train.freeze_epochs=1", "train.batch_size=4", "optim.lr=find"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_command(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["val_samples"] == 18
    # 48 train images / (2 processes x 4) = 6 steps per process per epoch
    assert metrics["steps_per_epoch"] == 6
    assert result.stdout.count("Epoch [") == 4  # printed by the main process only
    # DDP looks for unused parameters only in the frozen epoch (else it warns that it found none)
    assert "did not find any unused parameters" not in result.stderr
    # the LR range test ran on both processes over one averaged curve (they would stop if they disagreed)
    assert result.stdout.count("lr range test:") == 1 and metrics["peak_lr"] == metrics["lr_find"]["suggested_lr"]
    # gathered predictions come back in dataset order: each row's label is its file's folder
    with open(out / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == sorted(str(p) for p in (image_folder / "val").rglob("*.png"))  # each once
    assert all(r["id"].split("/")[-2] == r["label"] for r in rows)

    # The same weights scored by one process give the same accuracy and loss: nothing counted twice.
    single = run(tiny_config(image_folder, tmp_path / "single", "train.epochs=0", "model.pretrained=true",
                             f"model.weights_file={out / 'model'}"))
    assert single.val_samples == 18
    assert single.final_val_acc == metrics["final_val_acc"]
    assert abs(single.final_val_loss - metrics["final_val_loss"]) < 1e-4


@pytest.fixture(scope="module")
def one_image_everywhere(tmp_path_factory):
    """3 classes x (16 train + 6 val) copies of one noise image: two shards' k-th images are the
    same picture, so whatever differs between them is the augmentation."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("same") / "same"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 44, 3), dtype=np.uint8))
    for split, n in (("train", 16), ("val", 6)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                image.save(root / split / c / f"{i}.png")
    return root


def two_processes(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            *args]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["data.cache=memory", "data.num_workers=1"], ids=["cached", "loader-workers"])
def test_each_process_draws_its_own_augmentation(one_image_everywhere, tmp_path, path):
    record = tmp_path / "batches"
    record.mkdir()
    result = run_command(two_processes("tests/record_batches.py", str(record), "run_transfer.py", "--config",
                                       "configs/smoke.yaml", f"data.root={one_image_everywhere}",
                                       f"output_dir={tmp_path / 'run'}", "train.epochs=1", "train.batch_size=4",
                                       "data.mixup=0.8", "data.cutmix=1.0", path),
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = ((record / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert len(first) == len(second) == 6  # 48 images / (2 processes x 4)
    same = sum(a == b for a, b in zip(first, second))
    assert same == 0, f"{same} of 6 steps drew the same crops and flips on both processes"
    # and its own mixing: mixup's and cutmix's numbers come from numpy, seeded per process too
    first, second = ((record / f"rank{r}.mix.txt").read_text().splitlines() for r in (0, 1))
    assert len(first) == len(second) == 6
    same = sum(a == b for a, b in zip(first, second))
    assert same == 0, f"{same} of 6 steps drew the same mixing on both processes"


@pytest.mark.slow
def test_compiled_two_process_run_trains_its_frozen_and_its_unfrozen_phase(image_folder, tmp_path):
    # dynamo on (accelerate's eager backend: compiled, without inductor's compile time): the DDP
    # wrapper sits inside the compiled module and must still be rebuilt when the backbone thaws
    import timm
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "w.safetensors"
    initial = timm.create_model("resnet10t", num_classes=3).state_dict()
    save_file(initial, str(weights))
    out = tmp_path / "run"
    result = run_command(two_processes("run_transfer.py", "--config", "configs/smoke.yaml", f"data.root={image_folder}",
                                       f"output_dir={out}", "train.epochs=2", "train.freeze_epochs=1",
                                       "train.batch_size=4", "model.pretrained=true", f"model.weights_file={weights}",
                                       "model.head=keep"),
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_DYNAMO_BACKEND": "eager"})
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["frozen"] for h in history] == [True, False]
    trained = load_file(out / "model" / "model.safetensors")
    moved = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert {"fc.weight", "conv1.0.weight"} <= moved  # the head, and (in the second epoch) the backbone


@pytest.mark.slow
def test_a_preempted_two_process_run_resumes_exactly_on_two_and_is_refused_on_one(image_folder, tmp_path):
    import signal
    import time

    from conftest import alive, descendants, start_command
    from safetensors.torch import load_file

    settings = ["--config", "configs/smoke.yaml", f"data.root={image_folder}", "train.epochs=4", "train.batch_size=4",
                "train.keep_checkpoints=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    done = run_command(two_processes("run_transfer.py", *settings, f"output_dir={reference}"), capture_output=True,
                       text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "preempted"
    launcher = start_command(two_processes("run_transfer.py", *settings, f"output_dir={out}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "epoch_001" / "trainer_state.json").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()[-3000:]
        time.sleep(0.05)
    ranks = [pid for pid in descendants(launcher.pid) if alive(pid)  # the launcher's children, not their drawers
             and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(launcher.pid)]
    assert len(ranks) == 2, ranks
    for pid in ranks:  # what a scheduler does to every task of a preempted job
        os.kill(pid, signal.SIGTERM)
    launcher.communicate(timeout=300)
    assert not (out / "metrics.json").exists()

    on_one = run_command([sys.executable, "run_transfer.py", *settings, f"output_dir={out}", "train.resume=auto"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert on_one.returncode == 2 and on_one.stderr.count("\n") == 1, on_one.stderr[-2000:]
    assert "a run on 2 processes and this one has 1" in on_one.stderr

    on_two = run_command(two_processes("run_transfer.py", *settings, f"output_dir={out}", "train.resume=auto"),
                         capture_output=True, text=True, timeout=600, env=env)
    assert on_two.returncode == 0 and "resumed from" in on_two.stdout, on_two.stderr[-3000:]
    a, b = (load_file(folder / "model" / "model.safetensors") for folder in (reference, out))
    assert all(torch.equal(a[k], b[k]) for k in a)  # augmentation drawn per process, replayed exactly


@pytest.mark.slow
def test_the_time_budget_clock_is_the_slowest_processes(two_process_checks):
    # rank 0 has spent 10 s, rank 1 20 s: both schedule from 20 (tests/two_process_checks.py)
    assert two_process_checks["budget clock"] == "20 20"
