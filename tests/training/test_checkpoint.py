"""Checkpoints written in the background: the same files as accelerate's save_state (which pins
its layout), tensors in their own memory format, flushed to disk before the rename, never seen
half written, a failed write stopping the run with its one line at the next wait."""
import errno
import threading
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from transfer import files
from transfer.errors import OutputError
from transfer.records import EpochRecord
from transfer.training import checkpoint
from transfer.training.checkpoint import (Checkpointed, TrainerState, Writer, list_checkpoints, resolve_resume,
                                          save_checkpoint)


class Counter:
    """A custom checkpointed object (as the schedule and the weight average are)."""

    def __init__(self):
        self.state = {"steps": 3, "values": torch.arange(4.0)}

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


@pytest.fixture
def trained(tmp_path):
    """A channels_last model after two steps of the fused Adam (as on a GPU), a prepared loader, and
    a custom checkpointed object: a Checkpointed as a run builds it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=4, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    saved = Checkpointed(SimpleNamespace(accelerator=accelerator, model=model, optimizer=optimizer), (Counter(),))
    saved.register()
    for _ in range(2):  # Adam moments and batch-norm statistics that differ from their initial values
        loss = model(torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    yield saved, model, optimizer, tmp_path / "run"
    AcceleratorState._reset_state(reset_partial_state=True)


def same(a, b) -> bool:
    """Equal values, types and (tensors) dtypes and strides."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__array__"):
        return (a == b).all()
    return a == b


def test_background_and_inline_checkpoints_equal_accelerates_save_state(trained):
    # pins accelerate's layout: a file it adds, renames or fills otherwise fails here
    saved, _, optimizer, out = trained
    accelerator = saved.trainer.accelerator
    state = TrainerState(config={"a": 1}, epoch=1, history=[EpochRecord(1, 1e-3, 1.0, 1.0, 0.5, 2.0, 10.0)])
    reference = out / "save_state"
    accelerator.save_state(str(reference))
    inline = save_checkpoint(saved, out, "epoch_001", state, keep=5)
    with Writer() as writer:
        background = save_checkpoint(saved, out, "epoch_002", state, keep=5, writer=writer)
    expected = sorted(p.name for p in reference.iterdir())
    assert "model.safetensors" in expected and "optimizer.bin" in expected and "random_states_0.pkl" in expected
    assert "custom_checkpoint_0.pkl" in expected
    for folder in (inline, background):
        assert sorted(p.name for p in folder.iterdir()) == sorted([*expected, checkpoint.STATE_FILE])
        for name in expected:
            a, b = reference / name, folder / name
            if name.endswith(".safetensors"):
                assert same(load_file(a), load_file(b)), name
            else:  # the optimizer's moments in their weights' channels_last layout, as torch.save keeps them
                assert same(torch.load(a, weights_only=False), torch.load(b, weights_only=False)), name
        assert checkpoint.TrainerState.read(folder) == state
    moments = torch.load(background / "optimizer.bin", weights_only=False)["state"][0]["exp_avg"]
    assert moments.is_contiguous(memory_format=torch.channels_last) and not moments.is_contiguous()
    accelerator.load_state(str(background))  # accelerate reads it back
    assert same(optimizer.state_dict(), torch.load(reference / "optimizer.bin", weights_only=False))


def test_to_host_keeps_each_tensors_layout():
    # the staging path a GPU takes (pinned there), here on the CPU: strides kept, values copied
    weight = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    sliced = torch.randn(6, 8)[:, :3]  # not dense: copied contiguous
    host = checkpoint.to_host({"w": weight, "s": sliced, "n": 3})
    assert host["w"].stride() == weight.stride() and torch.equal(host["w"], weight)
    assert host["w"].data_ptr() != weight.data_ptr() and torch.equal(host["s"], sliced) and host["n"] == 3


def test_a_checkpoint_is_flushed_to_disk_before_and_after_its_rename(trained, monkeypatch):
    saved, _, _, out = trained
    synced = []
    real = files._fsync
    monkeypatch.setattr(files, "_fsync", lambda path: (synced.append(str(path)), real(path)))
    with Writer() as writer:
        final = save_checkpoint(saved, out, "epoch_001", TrainerState(config={}, epoch=1), keep=5, writer=writer)
    tmp = out / "checkpoints" / ".tmp_epoch_001"
    written = {str(tmp / p.name) for p in final.iterdir()}
    assert written <= set(synced[:-2]), "every file flushed before the rename"
    assert synced[-2:] == [str(tmp), str(out / "checkpoints")]  # the folder, then the rename in its parent


def test_a_write_in_flight_is_never_resumed_from(trained, monkeypatch):
    saved, model, _, out = trained
    save_checkpoint(saved, out, "epoch_001", TrainerState(config={}, epoch=1), keep=5)
    release, writing = threading.Event(), threading.Event()
    real = checkpoint.accelerate_save

    def slow(value, path, safe_serialization=False):
        writing.set()
        release.wait(30)
        real(value, path, safe_serialization=safe_serialization)
    monkeypatch.setattr(checkpoint, "accelerate_save", slow)
    with Writer() as writer:
        save_checkpoint(saved, out, "epoch_002", TrainerState(config={}, epoch=2), keep=5, writer=writer)
        assert writing.wait(30)
        with torch.no_grad():  # training goes on: the checkpoint holds the weights of when it was taken
            before = {k: v.clone() for k, v in model.state_dict().items()}
            for p in model.parameters():
                p.add_(1.0)
        # a kill now leaves only the temporary folder: the newest complete checkpoint is the previous one
        assert resolve_resume("auto", out).name == "epoch_001"
        assert (out / "checkpoints" / ".tmp_epoch_002").is_dir()
        release.set()
    assert [p.name for p in list_checkpoints(out)] == ["epoch_001", "epoch_002"]
    saved = load_file(out / "checkpoints" / "epoch_002" / "model.safetensors")
    assert all(torch.equal(saved[k], before[k]) for k in saved)


def test_a_failed_background_write_stops_the_run_at_the_next_wait(trained, monkeypatch):
    saved, _, _, out = trained
    save_checkpoint(saved, out, "epoch_001", TrainerState(config={}, epoch=1), keep=5)

    def full(value, path, safe_serialization=False):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "accelerate_save", full)
    writer = Writer()
    save_checkpoint(saved, out, "epoch_002", TrainerState(config={}, epoch=2), keep=5, writer=writer)
    with pytest.raises(OutputError, match="no space left on device writing") as e:
        writer.wait()  # what the next checkpoint or the end of the run does
    assert "\n" not in str(e.value) and "free space or point output_dir elsewhere" in str(e.value)
    assert [p.name for p in list_checkpoints(out)] == ["epoch_001"]
    assert not (out / "checkpoints" / ".tmp_epoch_002").exists()
    writer.wait()  # raised once


def test_accelerate_saves_and_loads_the_model_put_in_place_of_a_prepared_one(tmp_path):
    # pins the one private accelerate detail the run relies on (its list of prepared models:
    # accel.replace_prepared_model swaps in the DDP wrapper rebuilt when the backbone thaws, and a
    # background checkpoint saves accel.prepared_models): save_state and load_state use that list
    from transfer.training.accel import prepared_models, replace_prepared_model

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    inner = torch.nn.Linear(2, 2)
    prepared = accelerator.prepare(inner)
    rebuilt = torch.nn.Sequential(inner)  # a stand-in for the rebuilt wrapper: its keys are "0.weight", "0.bias"
    replace_prepared_model(accelerator, (prepared, inner), rebuilt)
    assert prepared_models(accelerator) == [rebuilt]
    accelerator.save_state(str(tmp_path / "state"))
    saved = load_file(tmp_path / "state" / "model.safetensors")
    assert set(saved) == {"0.weight", "0.bias"}
    with torch.no_grad():
        inner.weight.zero_()
    accelerator.load_state(str(tmp_path / "state"))
    assert torch.equal(inner.weight, saved["0.weight"]) and saved["0.weight"].abs().sum() > 0
    AcceleratorState._reset_state(reset_partial_state=True)
