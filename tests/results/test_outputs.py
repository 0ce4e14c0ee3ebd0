"""What a run leaves on disk is readable by others, and a disk that fills up or cannot be
written ends in one line, with the previous checkpoint intact."""
import errno
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from conftest import run_command, tiny_config
from transfer.cli import main


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    """The umask for the test; (file mode, folder mode) that it gives."""
    old = os.umask(request.param)
    yield 0o666 & ~request.param, 0o777 & ~request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_every_output_gets_the_umask_mode(image_folder, tmp_path, umask):
    file_mode, dir_mode = umask
    from transfer.experiments.report import build
    from transfer.run import run

    out = tmp_path / "arm" / "run"
    run(tiny_config(image_folder, out, "train.epochs=1"))
    build(tmp_path / "arm")
    found = {**modes(out), **{f"report/{k}": v for k, v in modes(tmp_path / "arm").items() if "/" not in k}}
    assert {"config.yaml", "metrics.json", "val_predictions.csv", "plots/accuracy.png", "model/model.safetensors",
            "checkpoints/epoch_001/trainer_state.json", "report/summary.json", "report/report.md",
            "report/comparison.png"} <= set(found)
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (dir_mode if (out / name).is_dir() or name.startswith("report/run") or name in (".", "report/.")
                         else file_mode)}
    assert not wrong


def test_an_unpacked_archive_is_not_private(image_folder, tmp_path, umask):
    import tarfile

    from transfer.data.download import fetch_dataset

    archive = tmp_path / "shapes.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(image_folder, arcname="shapes")
    root = fetch_dataset(str(archive), tmp_path / "data" / "shapes")
    assert stat.S_IMODE(root.stat().st_mode) == umask[1]
    assert {stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*.png")} == {umask[0]}


def safetensors_full_disk(calls: list, fail_at: int):
    """A stand-in for safetensors' save_file that writes half a file, then fails as it does on ENOSPC."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == fail_at:
            Path(filename).write_bytes(b"\0" * 100)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        return save_file(tensors, filename, metadata=metadata)
    return save


@pytest.mark.slow  # whole runs (the fast tier stays under 2 minutes on a busy machine)
def test_full_disk_mid_run_is_one_line_and_the_last_checkpoint_resumes(image_folder, tmp_path, capsys, monkeypatch):
    import accelerate.utils.other

    out = tmp_path / "full"
    args = ["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}", "train.epochs=2"]
    calls = []
    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", safetensors_full_disk(calls, fail_at=2))
    assert main(args) == 1
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bars
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on device writing {out}/checkpoints/.tmp_epoch_002 (about ")
    assert "MB needed" in err and "MB free); free space or point output_dir elsewhere" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_001"]  # intact, no temporary left
    monkeypatch.undo()
    assert main(args + ["train.resume=auto"]) == 0
    assert f"resumed from {out}/checkpoints/epoch_001" in capsys.readouterr().out
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]


def test_too_little_space_is_refused_before_training(image_folder, tmp_path, capsys, monkeypatch):
    import transfer.files

    monkeypatch.setattr(transfer.files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10**5))
    out = tmp_path / "small"
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"not enough space for {out}" in err and "0 MB free" in err, err
    assert not (out / "checkpoints").exists()


def test_read_only_output_folder_is_one_line(image_folder, tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "ro"
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the file system is read-only" in err and str(out) in err, err


def test_decompression_bomb_is_a_bad_image_not_a_traceback(image_folder, tmp_path, capsys, monkeypatch):
    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    Image.new("RGB", (200, 200), "white").save(root / "train" / "circle" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # the shapes are about 2,000 pixels, the bomb 40,000
    args = ["--config", "configs/smoke.yaml", f"data.root={root}", "train.epochs=1"]
    assert main(args + [f"output_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    err = err.split("\r")[-1]
    assert err.count("\n") == 1 and "bomb.png" in err and "decompression bomb" in err, err
    assert main(args + [f"output_dir={tmp_path / 'b'}", "data.skip_bad_images=true"]) == 0
    assert "train: 48 images (1 unreadable skipped) in 3 classes" in capsys.readouterr().out


def test_compare_sh_needs_no_activated_environment(tmp_path):
    """Run as `venv/bin/python -m pytest` is: the venv's bin/ is not on PATH."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "OUT": str(tmp_path / "o")}
    missing = run_command(["scripts/compare.sh"], capture_output=True, text=True,
                             env={**env, "PYTHON": "/nonexistent/python"})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "PYTHON=/nonexistent/python cannot import this project" in missing.stderr
    launcher = run_command(["scripts/compare.sh"], capture_output=True, text=True,
                              env={**env, "PYTHON": sys.executable, "LAUNCH": "no-such-launcher --x"})
    assert launcher.returncode == 2 and "launcher 'no-such-launcher'" in launcher.stderr


def test_samples_are_drawn_without_touching_cuda(image_folder, tmp_path, monkeypatch):
    # the drawer is a forked child, where CUDA cannot start: on a GPU host, forking every device's
    # random generator (torch.random.fork_rng()'s default) failed every GPU run at its end
    import torch

    from transfer.config import DataConfig
    from transfer.data.loaders import build_datasets
    from transfer.results.outputs import draw_samples

    def no_cuda(*args, **kwargs):
        raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a GPU host, as the child sees it
    for name in ("get_rng_state", "set_rng_state", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    train, _, source, _ = build_datasets(DataConfig(root=str(image_folder), url=None, image_size=32))
    before = torch.get_rng_state()
    draw_samples(tmp_path, train, source.classes)
    assert (tmp_path / "plots" / "samples.png").is_file() and torch.equal(torch.get_rng_state(), before)
