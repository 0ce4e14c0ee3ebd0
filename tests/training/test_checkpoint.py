"""Checkpoints written in the background: the same files as accelerate's save_state, never seen
half written, a failed write stopping the run with its one line at the next wait."""
import errno
import threading

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from transfer.errors import OutputError
from transfer.training import checkpoint
from transfer.training.checkpoint import TrainerState, Writer, list_checkpoints, resolve_resume, save_checkpoint


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
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(Counter())
    for _ in range(2):  # Adam moments and batch-norm statistics that differ from their initial values
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    yield accelerator, model, optimizer, tmp_path / "run"
    AcceleratorState._reset_state(reset_partial_state=True)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__array__"):
        return (a == b).all()
    return a == b


def test_a_background_checkpoint_equals_an_inline_one(trained):
    accelerator, _, _, out = trained
    state = TrainerState(config={"a": 1}, epoch=1, history=[{"epoch": 1}])
    inline = save_checkpoint(accelerator, out, "epoch_001", state, keep=5)
    with Writer() as writer:
        background = save_checkpoint(accelerator, out, "epoch_002", state, keep=5, writer=writer)
    files = sorted(p.name for p in inline.iterdir())
    assert files == sorted(p.name for p in background.iterdir()) and "model.safetensors" in files
    assert "optimizer.bin" in files and "custom_checkpoint_0.pkl" in files and "random_states_0.pkl" in files
    for name in files:
        a, b = inline / name, background / name
        if name.endswith(".safetensors"):
            assert same(load_file(a), load_file(b)), name
        elif name.endswith(".json"):
            assert a.read_text() == b.read_text()
        else:
            assert same(torch.load(a, weights_only=False), torch.load(b, weights_only=False)), name
    accelerator.load_state(str(background))  # accelerate reads it back


def test_a_write_in_flight_is_never_resumed_from(trained, monkeypatch):
    accelerator, model, _, out = trained
    save_checkpoint(accelerator, out, "epoch_001", TrainerState(config={}, epoch=1), keep=5)
    release, writing = threading.Event(), threading.Event()
    real = checkpoint.accelerate_save

    def slow(value, path, safe_serialization=False):
        writing.set()
        release.wait(30)
        real(value, path, safe_serialization=safe_serialization)
    monkeypatch.setattr(checkpoint, "accelerate_save", slow)
    with Writer() as writer:
        save_checkpoint(accelerator, out, "epoch_002", TrainerState(config={}, epoch=2), keep=5, writer=writer)
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
    accelerator, _, _, out = trained
    save_checkpoint(accelerator, out, "epoch_001", TrainerState(config={}, epoch=1), keep=5)

    def full(value, path, safe_serialization=False):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "accelerate_save", full)
    writer = Writer()
    save_checkpoint(accelerator, out, "epoch_002", TrainerState(config={}, epoch=2), keep=5, writer=writer)
    with pytest.raises(OutputError, match="no space left on device writing") as e:
        writer.wait()  # what the next checkpoint or the end of the run does
    assert "\n" not in str(e.value) and "free space or point output_dir elsewhere" in str(e.value)
    assert [p.name for p in list_checkpoints(out)] == ["epoch_001"]
    assert not (out / "checkpoints" / ".tmp_epoch_002").exists()
    writer.wait()  # raised once
