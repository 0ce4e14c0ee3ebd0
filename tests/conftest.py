"""Offline, CPU-only test set-up: HF caches in a temp folder, no Hub access, tiny data."""
import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="transfer-test-hf-")
os.environ.update({"HF_HOME": _CACHE, "HF_DATASETS_CACHE": os.path.join(_CACHE, "datasets"),
                   "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""})

import pytest  # noqa: E402

from transfer.config import load_config  # noqa: E402
from transfer.synthetic import make_image_folder  # noqa: E402


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """3 classes x (16 train + 6 val) PNGs of about 40 px."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


# Names the file system allows that glob patterns, URLs, YAML or CSV could misread.
ODD_CLASSES = ("digit [0]", "a*b?", "{x} #1 %20", "ünï cödé, \"q\"")


@pytest.fixture(scope="session")
def odd_folder(tmp_path_factory):
    """4 classes named with glob/URL/CSV characters; some files in an ordinary-looking class too."""
    root = make_image_folder(tmp_path_factory.mktemp("odd") / "odd names", train_per_class=6, val_per_class=3,
                             classes=ODD_CLASSES)
    for split in ("train", "val"):
        first = sorted((root / split / "digit [0]").iterdir())[0]
        first.rename(first.with_name("x[1]*?.png"))
    return root


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each in-process run builds its own Accelerator; accelerate keeps process-wide singletons."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def free_port() -> int:
    """A loopback port nobody listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(root, output_dir, *overrides):
    """A seconds-long run: resnet10t at 32 px, no workers."""
    return load_config("configs/smoke.yaml", [f"data.root={root}", f"output_dir={output_dir}", "train.epochs=2",
                                              *overrides])


def sigterm_at_batch(monkeypatch, n: int) -> None:
    """Send this process a SIGTERM right after the n-th training batch of the next run(s)."""
    import signal

    from transfer.watch import Watch

    observe, calls = Watch.observe, []

    def observe_then_signal(self, loss, batch_index):
        observe(self, loss, batch_index)
        calls.append(batch_index)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Watch, "observe", observe_then_signal)
