"""Runs die: kill -9, SIGTERM, NaN, bad images, bad settings. Nothing finished is lost."""
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from transfer.cli import main

from conftest import alive, descendants, run_command, start_command


def command(root, out, *extra):
    return [sys.executable, "run_transfer.py", "--config", "configs/smoke.yaml", f"data.root={root}",
            f"output_dir={out}", "train.keep_checkpoints=10", *extra]


def wait_for(path, process, timeout=300):
    start = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout
        time.sleep(0.05)


def same_weights(a, b):
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    """The reference: 4 epochs, one data worker (its seeding must survive resumes too)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_command(command(image_folder, out, "train.epochs=4", "data.num_workers=1"), check=True,
                   capture_output=True)
    return out


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights(image_folder, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    args = command(image_folder, out, "train.epochs=4", "data.num_workers=1")
    process = start_command(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "epoch_001" / "trainer_state.json", process)
    children = descendants(process.pid)  # the figure drawer, and loader workers when an epoch is running
    process.send_signal(signal.SIGKILL)  # mid-epoch 2, or mid-checkpoint
    process.wait()
    assert children, "the run's figure drawer was not found"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], "processes of the killed run are still alive"
    assert not (out / "metrics.json").exists()
    resumed = run_command(args + ["train.resume=auto"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert same_weights(out, uninterrupted)
    reference = json.loads((uninterrupted / "metrics.json").read_text())["history"]
    assert [h["val_acc"] for h in history] == [h["val_acc"] for h in reference]
    again = run_command(args + ["train.resume=auto"], capture_output=True, text=True)
    assert again.returncode == 0 and "finished run" in again.stdout


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_a_checkpoint_and_resume_is_exact(image_folder, tmp_path):
    # 48 images / batch 8 = 6 steps an epoch; stop checks every 10 steps and at each epoch's end,
    # so the checkpoint lands mid-epoch or at an epoch's end, depending on when the signal comes.
    # The signal goes to the whole group, as SLURM, a terminal's Ctrl-C and launchers send it: the
    # loader workers and the drawer get it too, and must leave it to the run.
    reference = tmp_path / "reference"
    run_command(command(image_folder, reference, "train.epochs=8", "data.num_workers=2"), check=True,
                   capture_output=True)
    out = tmp_path / "preempted"
    args = command(image_folder, out, "train.epochs=8", "data.num_workers=2")
    process = start_command(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "epoch_001" / "trainer_state.json", process)
    os.killpg(process.pid, signal.SIGTERM)  # (start_command: the run leads its own group)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "train.resume=auto" in err
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert any("_batch_" in name for name in saved), saved
    assert not (out / "metrics.json").exists()
    resumed = run_command(args + ["train.resume=auto"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "_batch_" in resumed.stdout
    assert same_weights(out, reference)  # the half epoch is replayed: exact, workers included


def test_non_finite_loss_stops_with_epoch_and_batch(image_folder, tmp_path, capsys):
    import timm

    state = timm.create_model("resnet10t", num_classes=3).state_dict()
    state["bn1.weight"] = torch.full_like(state["bn1.weight"], float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    out = tmp_path / "nan"
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}",
                 "model.pretrained=true", f"model.weights_file={weights}"])
    err = capsys.readouterr().err
    assert code == 1 and "non-finite loss at epoch 1, batch 1" in err and "optim.lr" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_bad_images_are_named_or_skipped(image_folder, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "val" / "circle" / "empty.png").write_bytes(b"")
    truncated = root / "train" / "square" / "cut.jpg"
    from PIL import Image
    Image.new("RGB", (64, 64), "red").save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    args = ["--config", "configs/smoke.yaml", f"data.root={root}", "train.epochs=1"]
    assert main(args + [f"output_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cut.jpg" in err and "data.skip_bad_images=true" in err
    assert not (tmp_path / "a" / "checkpoints").exists()  # checked before training starts
    assert main(args + [f"output_dir={tmp_path / 'b'}", "data.skip_bad_images=true"]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 2 and metrics["val_samples"] == 18
    assert ("train: 48 images (1 unreadable skipped) in 3 classes; val: 18 images (1 unreadable skipped)"
            in capsys.readouterr().out)


@pytest.mark.parametrize("override, words", [
    ("train.mixed_precision=fp16", ["fp16", "GPU"]),
    ("model.name=resnet_nonexistent", ["resnet_nonexistent", "not a timm model"]),
    ("optim.lr=0", ["optim.lr", "> 0"]),
    ("train.resume=/nowhere", ["train.resume", "not a complete checkpoint"]),
])
def test_bad_settings_exit_2_before_any_work(image_folder, tmp_path, capsys, override, words):
    out = tmp_path / "out"
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not (out / "checkpoints").exists()


class Evil:
    marker = None  # the file that unpickling would create: set per test, so no leftover can fail a later run

    def __reduce__(self):
        return (os.system, (f"touch '{Evil.marker}'",))


def test_weights_are_never_unpickled_as_code(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Evil, "marker", str(tmp_path / "pwned"))
    weights = tmp_path / "evil.pth"
    with open(weights, "wb") as f:
        pickle.dump({"conv1.0.weight": Evil()}, f, protocol=2)  # torch.save's protocol: no warning
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'o'}",
                 "model.pretrained=true", f"model.weights_file={weights}"])
    assert code == 2 and "cannot be read" in capsys.readouterr().err
    assert not os.path.exists(Evil.marker)


def test_a_gpu_out_of_memory_is_one_line_that_says_what_to_lower(image_folder, tmp_path, capsys, monkeypatch):
    import transfer.run

    def out_of_memory(cfg, phases):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    monkeypatch.setattr(transfer.run, "run", out_of_memory)
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "lower train.batch_size" in err


@pytest.mark.slow
@pytest.mark.parametrize("streams", ["2>&1", "2>/dev/null"])
def test_a_run_whose_reader_goes_away_trains_to_the_end(image_folder, tmp_path, streams):
    """`run_transfer.py ... | head -c 200`: the reader leaves after the first lines. The run goes on
    to its metrics and model, exits 0, prints no traceback, and leaves no process behind (it died
    of BrokenPipeError, or hung on its loader worker)."""
    out = tmp_path / "run"
    line = " ".join(shlex.quote(str(a)) for a in command(image_folder, out, "train.epochs=3", "data.num_workers=1"))
    shell = f"{line} {streams} | head -c 200 > {tmp_path / 'head.txt'}; echo ${{PIPESTATUS[0]}} > {tmp_path / 'rc'}"
    assert run_command(["bash", "-c", shell], timeout=300).returncode == 0
    assert (tmp_path / "rc").read_text().strip() == "0"
    assert (out / "metrics.json").is_file() and (out / "model").is_dir()
    assert "Traceback" not in (tmp_path / "head.txt").read_text()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _mentions(p, str(out))]  # no process left over


def _mentions(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False
