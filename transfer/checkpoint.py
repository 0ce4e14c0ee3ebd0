"""Checkpoints under output_dir/checkpoints/: `epoch_NNN` after NNN whole epochs, and
`epoch_NNN_batch_BBBBBB` when a stop signal came BBBBBB batches into the next one. Each is
written by `accelerator.save_state` into a temporary folder and renamed into place when
complete, so a folder with such a name is always whole, even after `kill -9` mid-save."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import ConfigError
from .outputs import guard_write, publish_folder, write_json

STATE_FILE = "trainer_state.json"  # written last: epoch, position and metric history


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (the names sort in training order)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if (p / STATE_FILE).is_file())


def save_checkpoint(accelerator, output_dir: Path, name: str, state: dict, keep: int, size: int | None = None) -> Path:
    """`size`: the expected bytes, for the message when the disk is full. A failed save leaves
    no temporary folder and the previous checkpoints untouched."""
    root = checkpoint_dir(output_dir)
    final, tmp = root / name, root / f".tmp_{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed mid-save
    accelerator.wait_for_everyone()
    try:
        with guard_write(tmp, size):
            accelerator.save_state(str(tmp))  # every process writes its own RNG state here
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_json(tmp / STATE_FILE, state)
                publish_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in root.glob(".tmp_*"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def checkpoint_bytes(model, optimizer_name: str) -> int:
    """About what one checkpoint takes on disk: the weights and buffers, plus the optimizer's
    state per parameter (Adam: two moments; SGD: one momentum buffer)."""
    from .model import state_bytes

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return state_bytes(model) + params * (1 if optimizer_name == "sgd" else 2)


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """`train.resume`: None, 'auto' (newest complete checkpoint, or none yet) or a path."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"train.resume={resume!r} is not a complete checkpoint folder "
                          f"(no {STATE_FILE} in it); use train.resume=auto or a checkpoints/epoch_NNN folder")
    return path


def saved_config(path: Path, output_dir: Path) -> dict | None:
    """The settings a checkpoint was made with: stored in it, or (older checkpoints) the run's
    config.yaml; None when neither exists."""
    state = read_state(path)
    if "config" in state:
        return state["config"]
    saved = Path(output_dir) / "config.yaml"
    if saved.is_file():
        import yaml

        return yaml.safe_load(saved.read_text())
    return None


def read_state(path: Path) -> dict:
    """The trainer state a checkpoint holds (position, history, settings, found LR), without
    loading its tensors."""
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG states; return the saved trainer state."""
    accelerator.load_state(str(path))
    return read_state(path)
