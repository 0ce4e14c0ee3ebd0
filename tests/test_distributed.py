"""Two processes (torchrun, gloo on CPU): sharded training, every validation image scored once."""
import csv
import json
import os
import sys

import pytest

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
