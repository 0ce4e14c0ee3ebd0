"""Offline, CPU-only test set-up: HF caches in a temp folder (removed at the end), no Hub access,
tiny data; every process a test starts runs in its own process group, has a timeout and is
killed, group and all, when its test ends."""
import atexit
import os
import shutil
import signal
import sys
import subprocess
import tempfile
import textwrap

# Everything the suite and the processes it starts write to a temp folder lands in this one
# (tests' tmp_path, torch's compile caches; TMPDIR for subprocesses: torchrun's, the benchmark's,
# compare.sh's runs), removed when the suite ends (`--basetemp DIR` keeps tests' files).
_TMP = tempfile.mkdtemp(prefix="transfer-test-")
tempfile.tempdir = _TMP
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_CACHE = os.path.join(_TMP, "hf")
os.environ.update({"HF_HOME": _CACHE, "HF_DATASETS_CACHE": os.path.join(_CACHE, "datasets"),
                   "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "HF_EVALUATE_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
                   "TMPDIR": _TMP, "TORCHINDUCTOR_CACHE_DIR": os.path.join(_TMP, "inductor"),
                   # compare.sh runs each arm once (its config's seed) unless a test names SEEDS; the default of
                   # three seeds has its own test (test_plan.py)
                   "SEEDS": ""})
# One thread a process unless the caller says otherwise: with two threads on two cores, anything else
# running beside the suite (or a second run of a test) makes both threads wait on each other; the fast
# tier took 220 s beside one single-threaded training run with two threads, 69 s with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from transfer.config import load_config  # noqa: E402
from transfer.data.synthetic import make_image_folder  # noqa: E402


_STARTED: list[subprocess.Popen] = []


def start_command(args, **kwargs) -> subprocess.Popen:
    """subprocess.Popen in a new process group (the run's ranks, workers and drawer join it)."""
    process = subprocess.Popen(args, start_new_session=True, **kwargs)
    _STARTED.append(process)
    return process


def run_command(args, timeout: float = 600, check: bool = False, capture_output: bool = False, input=None,
                **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, but the whole process group is killed when the timeout expires."""
    if capture_output:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = start_command(args, stdin=subprocess.PIPE if input is not None else None, **kwargs)
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.communicate()
        raise
    if check and process.returncode:
        raise subprocess.CalledProcessError(process.returncode, args, out, err)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(autouse=True)
def nothing_outlives_its_test():
    yield
    while _STARTED:
        process = _STARTED.pop()
        kill_group(process)
        if process.poll() is None:
            process.kill()
        process.wait()


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Linux)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = {int(c) for c in f.read().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """3 classes x (16 train + 6 val) PNGs of about 40 px."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A stand-in for ImageNet weights: resnet10t with its 1000-class head, randomly initialised."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("w") / "imagenet.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=1000).state_dict(), str(path))
    return path


def shapes_dataset(image_folder, split_names=("train", "val"), label_kind="classlabel"):
    """The shapes folder as a DatasetDict whose images are encoded bytes (no paths), as parquet holds them."""
    import datasets

    classes = sorted(p.name for p in (image_folder / "train").iterdir())
    splits = {}
    for name, folder in zip(split_names, ("train", "val")):
        files = sorted((image_folder / folder).rglob("*.png"))
        labels = [f.parent.name for f in files]
        if label_kind == "classlabel":
            label_feature, labels = datasets.ClassLabel(names=classes), [classes.index(c) for c in labels]
        else:
            label_feature = datasets.Value("string")
        features = datasets.Features({"picture": datasets.Image(), "shape": label_feature})
        splits[name] = datasets.Dataset.from_dict(
            {"picture": [{"bytes": f.read_bytes(), "path": None} for f in files], "shape": labels}, features=features)
    return datasets.DatasetDict(splits)


def stand_in_launcher(tmp_path, body: str) -> tuple[str, object]:
    """A LAUNCH for compare.sh that 'trains' a run without training: `body` (Python) sees `cfg` (the
    run's settings), `out` (its folder, made), `arm`, `args` and `CALLS` (a file to log to), and
    ends with `finish(final_val_acc, **more)`, which writes config.yaml and metrics.json as a
    finished run has them. Returns the LAUNCH command and the CALLS path."""
    script, calls = tmp_path / "launch.py", tmp_path / "calls.txt"
    script.write_text(textwrap.dedent(f"""
        import csv, json, math, sys
        from pathlib import Path
        from transfer.config import dump_yaml, load_config
        args = sys.argv[sys.argv.index("--config") + 1:]
        cfg = load_config(args[0], args[1:])
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        arm = Path(args[0]).stem
        CALLS = {str(calls)!r}
        def finish(acc, select_acc=None, peak_lr=0.001, chosen_on="val"):
            history = [{{"epoch": 1, "lr": peak_lr, "train_loss": 1.0, "val_loss": 1.0, "val_acc": acc,
                         "epoch_seconds": 1.0, "train_images_per_s": 10.0}}]
            if select_acc is not None:
                history[0].update(select_acc=select_acc, select_loss=1 - select_acc)
            (out / "config.yaml").write_text(dump_yaml(cfg))
            (out / "metrics.json").write_text(json.dumps({{"history": history, "best_val_acc": acc, "best_epoch": 1,
                "final_val_acc": acc, "final_val_loss": 1.0, "val_samples": 10, "train_seconds": 1.0,
                "best_chosen_on": chosen_on, "peak_lr": peak_lr}}))
    """) + textwrap.dedent(body))
    return f"{sys.executable} {script}", calls


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

    from transfer.training.watch import Watch

    observe, calls = Watch.observe, []

    def observe_then_signal(self, loss, batch_index):
        observe(self, loss, batch_index)
        calls.append(batch_index)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(Watch, "observe", observe_then_signal)


@pytest.fixture(scope="session")
def two_process_checks() -> dict[str, str]:
    """tests/two_process_checks.py run once on two processes (gloo): its `name: result` lines."""
    here = os.path.dirname(__file__)
    result = run_command([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), os.path.join(here, "two_process_checks.py")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
