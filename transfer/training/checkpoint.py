"""Checkpoints under output_dir/checkpoints/: `epoch_NNN` after NNN whole epochs, and
`epoch_NNN_batch_BBBBBB` when a stop signal came BBBBBB batches into the next one. Each is
written into a temporary folder and renamed into place when complete, so a folder with such a
name is always whole, even after `kill -9` mid-save, and `train.resume=auto` never sees a half one.

Epoch checkpoints are written off the training path (`Writer`): the states are copied to host
memory (pinned on CUDA), and a background thread writes them in accelerate's layout (the files
`accelerator.save_state` writes, read back by `accelerator.load_state`; tested equal) while the
next epoch trains. The next checkpoint, the end of the run and a stop signal wait for the write
in flight (`checkpoint_wait` in phase_seconds); a failed write is raised there, its one line
(a full disk, say) stopping the run. A stop signal's checkpoint is written inline, by the same
code. Every file and the folder are flushed to disk before the rename (files.seal_folder).

What is saved is handed over (`Checkpointed`: the optimizer, the schedule, the weight average),
except the models, which must be the ones accelerate loads into (accel.prepared_models, its one
private list, pinned by a test); the file names are accelerate's public constants, and a test pins
that the files equal what `accelerator.save_state` writes, so an accelerate upgrade that changes
its layout fails there."""
from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from accelerate.checkpointing import save_accelerator_state
from accelerate.utils import save as accelerate_save
from accelerate.utils.constants import OPTIMIZER_NAME, SAFE_WEIGHTS_NAME, SCALER_NAME

from ..errors import ConfigError, DataError, RunError
from ..files import guard_write, replace_folder, seal_folder, write_json
from ..records import EpochRecord, LrFindRecord, RecordError, typed
from .accel import prepared_models
from .model import state_bytes

if TYPE_CHECKING:
    from .step import Trainer

STATE_FILE = "trainer_state.json"  # written last: epoch, position and metric history


@dataclass
class TrainerState:
    """What a checkpoint holds besides accelerate's states (model, optimizer, scheduler, RNGs):
    where the run is, what it has recorded so far, and the settings it was started with, so that
    a resume can be checked against them; each resume is recorded with what it changed."""
    config: dict  # the run's settings (config.to_dict)
    epoch: int = 0  # whole epochs done
    batches_done: int = 0  # batches of epoch `epoch` done (a checkpoint written on a stop signal)
    partial: tuple[float, int] = (0.0, 0)  # that half epoch's (loss sum, images)
    history: list[EpochRecord] = field(default_factory=list)  # one record per evaluated epoch
    lrs: list[float] = field(default_factory=list)  # each optimizer step's learning rate
    train_seconds: float = 0.0
    resumes: list[dict] = field(default_factory=list)  # {"from", "changed"} per resume
    lr_find: LrFindRecord | None = None  # the LR range test's record (optim.lr=find), reused on resume
    num_processes: int | None = None  # the schedule and the epoch position count this many processes' steps
    mixed_precision: str | None = None  # as `auto` resolved (no, fp16, bf16): what the optimizer state holds

    def at(self, epoch: int, batches_done: int = 0, partial: tuple[float, int] = (0.0, 0)) -> "TrainerState":
        """This state at another position (what a checkpoint written there holds)."""
        return dataclasses.replace(self, epoch=epoch, batches_done=batches_done, partial=tuple(partial))

    @classmethod
    def read(cls, path: Path) -> "TrainerState":
        """The state in a checkpoint folder, without loading its tensors; an unknown key is an
        error naming the file (a checkpoint of another version), a missing one takes its default."""
        file = Path(path) / STATE_FILE
        raw = json.loads(file.read_text())
        raw.setdefault("config", None)
        try:
            return typed(cls, raw)
        except RecordError as e:
            raise DataError(f"{file} does not fit this version ({e}); resume it with the version that wrote it, or "
                            f"start a fresh run in another output_dir") from None


def check_same_execution(state: TrainerState, path: Path, num_processes: int, precision: str) -> None:
    """A checkpoint continues only on the process count and precision it was written with: its
    schedule position and half-epoch position count that run's optimizer steps and batches, and an
    fp16 run's gradient scaler exists only there. (Older checkpoints recorded neither: on trust.)"""
    if state.num_processes is not None and state.num_processes != num_processes:
        n = state.num_processes
        raise RunError(f"train.resume: {path} was written by a run on {n} process{'es' * (n != 1)} and this one has "
                       f"{num_processes}; its schedule and position count that run's steps, so resume it on {n} "
                       f"(torchrun --nproc_per_node {n}, or accelerate launch --num_processes {n}), or start a fresh "
                       f"run in another output_dir")
    if state.mixed_precision is not None and state.mixed_precision != precision:
        raise RunError(f"train.resume: {path} was trained with mixed precision {state.mixed_precision!r} and this "
                       f"run would continue in {precision!r} (train.mixed_precision resolves by the hardware); resume "
                       f"it on hardware where it resolves to {state.mixed_precision!r}, or start a fresh run in "
                       f"another output_dir")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (the names sort in training order)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch_*") if (p / STATE_FILE).is_file())


@dataclass(frozen=True)
class Checkpointed:
    """What a checkpoint saves besides each process's random states, in the order
    `accelerator.load_state` restores it: the models as accelerate holds them (accel.prepared_models:
    what load_state loads into), the trainer's optimizer, the gradient scaler (fp16), and the
    `custom` objects (the schedule, the weight average), registered with accelerate by `register`."""
    trainer: "Trainer"
    custom: tuple = ()

    def register(self) -> None:
        for obj in self.custom:
            self.trainer.accelerator.register_for_checkpointing(obj)


def save_checkpoint(saved: Checkpointed, output_dir: Path, name: str, state: TrainerState, keep: int,
                    size: int | None = None, writer: "Writer | None" = None) -> Path:
    """`size`: the expected bytes, for the message when the disk is full. A failed save leaves
    no temporary folder and the previous checkpoints untouched. The states are copied to host
    memory now; with `writer` the files are written in the background (the folder appears when
    done), without it before this returns."""
    accelerator = saved.trainer.accelerator
    root = checkpoint_dir(output_dir)
    final, tmp = root / name, root / f".tmp_{name}"
    if writer is not None:
        writer.wait()  # one write in flight at most; its failure stops the run here
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed mid-save
    accelerator.wait_for_everyone()
    with guard_write(tmp, size):
        tmp.mkdir(parents=True, exist_ok=True)
        save_accelerator_state(str(tmp), [], [], [], [], accelerator.process_index, accelerator.step)  # RNG only
    files = host_states(saved) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()  # every process's RNG file is in tmp
    if accelerator.is_main_process:
        write = functools.partial(_write, output_dir, tmp, final, files, dataclasses.asdict(state), keep, size)
        if writer is None:
            write()
        else:
            writer.start(write)
    if writer is None:
        accelerator.wait_for_everyone()
    return final


def restate_checkpoint(accelerator, folder: Path, state: TrainerState, writer: "Writer | None" = None) -> None:
    """Replace the trainer state of checkpoint `folder` by `state` (one file, replaced atomically:
    the folder holds the one or the other), after the write of the folder itself when `writer`
    has it in flight."""
    if accelerator.is_main_process:
        write = functools.partial(write_json, Path(folder) / STATE_FILE, dataclasses.asdict(state))
        if writer is None:
            write()
        else:
            writer.start(write)


def host_states(saved: Checkpointed) -> dict[str, tuple[object, bool]]:
    """File name -> (host copy of the state, safetensors?), in accelerate's save_state names."""
    accelerator = saved.trainer.accelerator
    files = {SAFE_WEIGHTS_NAME.replace(".", f"_{i}.") if i else SAFE_WEIGHTS_NAME:
             (to_host(accelerator.get_state_dict(model, unwrap=False)), True)
             for i, model in enumerate(prepared_models(accelerator))}
    files[f"{OPTIMIZER_NAME}.bin"] = (to_host(saved.trainer.optimizer.state_dict()), False)
    if accelerator.scaler is not None:
        files[SCALER_NAME] = (to_host(accelerator.scaler.state_dict()), False)
    for i, obj in enumerate(saved.custom):
        files[f"custom_checkpoint_{i}.pkl"] = (to_host(obj.state_dict()), False)
    return files


def _write(output_dir: Path, tmp: Path, final: Path, files: dict, record: dict, keep: int,
           size: int | None) -> None:
    """The main process's part of a checkpoint (the RNG files are in `tmp` already), then the
    rename into place."""
    try:
        with guard_write(tmp, size):
            for file, (value, safe) in files.items():
                accelerate_save(value, tmp / file, safe_serialization=safe)  # safetensors: made contiguous there
            write_json(tmp / STATE_FILE, record)
            seal_folder(tmp)
        _publish(output_dir, tmp, final, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(output_dir: Path, tmp: Path, final: Path, keep: int) -> None:
    """Rename a complete temporary folder into place; drop the oldest and any leftovers."""
    replace_folder(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in checkpoint_dir(output_dir).glob(".tmp_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def to_host(value):
    """A copy of `value` (tensors in dicts, lists and tuples) in host memory that training can no
    longer change. Each tensor keeps its layout (strides): an optimizer's moments must come back in
    their parameter's memory format (channels_last), since the fused kernels read both as raw
    memory alike (a contiguous moment for a channels_last weight updates the wrong elements). From
    a GPU through pinned buffers, one synchronisation for all; the CPU takes the same path."""
    pinned = []

    def copy(v):
        if isinstance(v, torch.Tensor):
            v = v.detach()
            cuda = v.device.type == "cuda"
            out = torch.empty_like(v, device="cpu", pin_memory=cuda)  # preserve_format: the same strides
            out.copy_(v, non_blocking=cuda)
            if cuda:
                pinned.append(out)
            return out
        if isinstance(v, dict):
            return type(v)((k, copy(x)) for k, x in v.items()) if isinstance(v, OrderedDict) else {
                k: copy(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(copy(x) for x in v)
        return v

    result = copy(value)
    if pinned:
        torch.cuda.synchronize()
    return result


class Writer:
    """Checkpoint writes in a background thread, one after the other (a checkpoint, then the
    evaluated state that replaces its trainer state); `wait` joins them and raises what they raised. As a context manager, leaving waits for the write (a run never ends, or
    reports its error, with a checkpoint half written by a live thread)."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.waited = 0.0  # seconds the training waited for writes

    def start(self, write) -> None:
        """Run `write` in the background, after the write in flight (if any) is done."""
        before = self._thread

        def run():
            if before is not None:
                before.join()
            if self._error is not None:  # the write before failed: that error is the one to raise
                return
            try:
                write()
            except BaseException as e:  # raised in the training thread, at the next wait
                self._error = e
        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            start = time.perf_counter()
            self._thread.join()
            self.waited += time.perf_counter() - start
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.wait()
        elif self._thread is not None:
            self._thread.join()  # the run is failing already: its own error is the one to report


def checkpoint_bytes(model, optimizer_name: str) -> int:
    """About what one checkpoint takes on disk: the weights and buffers, plus the optimizer's
    state per parameter (Adam: two moments; SGD: one momentum buffer)."""
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
    state = TrainerState.read(path)
    if state.config is not None:
        return state.config
    saved = Path(output_dir) / "config.yaml"
    if saved.is_file():
        return yaml.safe_load(saved.read_text())
    return None


def load_checkpoint(accelerator, path: Path) -> TrainerState:
    """Restore model, optimizer, the registered objects and RNG states (accelerate's load_state);
    return the saved trainer state."""
    accelerator.load_state(str(path))
    return TrainerState.read(path)
