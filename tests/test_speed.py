"""The time outside the training loop: phase timings, GPU-only speed settings, the cache decision,
host-side index batches, the skippable image check, figures drawn in a child process."""
import errno
import json
import os

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from conftest import tiny_config
from transfer.data import cache
from transfer.data.cache import DecodedImages
from transfer.training import accel
from transfer.cli import main
from transfer.config import load_config
from transfer.errors import ConfigError
from transfer.training.optim import build_optimizer
from transfer.training.phases import Phases
from transfer.training.setup import build

GIB = 2**30


def test_phase_seconds_cpu_settings_and_checkpoint_every_in_a_finished_run(image_folder, tmp_path):
    from transfer.run import run

    metrics = run(tiny_config(image_folder, tmp_path / "r", "train.epochs=3", "train.checkpoint_every=2",
                              "train.keep_checkpoints=5"))
    # every second epoch's checkpoint, and the last one
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["epoch_002", "epoch_003"]
    phases = json.loads((tmp_path / "r" / "metrics.json").read_text())["phase_seconds"]
    documented = {"launch", "data", "model", "cache_decode", "lr_find", "start_outputs", "first_step", "checkpoints", "checkpoint_wait", "epoch_start",
                  "final_evaluation", "final_outputs"}
    assert {"launch", "data", "model", "start_outputs", "first_step", "checkpoints", "final_outputs"} <= set(phases)
    assert set(phases) <= documented and all(v >= 0 for v in phases.values())
    assert phases["first_step"] > 0 and phases["final_outputs"] > 0
    # on a CPU none of the GPU speed settings is chosen, so the CPU path stays exact
    assert metrics.speed_settings == {"cudnn_benchmark": False, "tf32_matmul": False, "fused_optimizer": False,
                                      "compiled_optimizer": False}
    assert torch.backends.cudnn.benchmark is False and torch.get_float32_matmul_precision() == "highest"
    assert metrics.peak_device_memory_mb is None  # a GPU's allocator peak; none on a CPU


def test_gpu_speed_settings_are_chosen_for_cuda_only():
    assert accel.backend_settings(True) == {"cudnn_benchmark": True, "tf32_matmul": True, "fused_optimizer": True}
    params = [torch.nn.Parameter(torch.zeros(2))]
    cfg = load_config("configs/smoke.yaml").optim
    assert build_optimizer(cfg, params, fused=True).param_groups[0]["fused"] is True
    assert not build_optimizer(cfg, params).param_groups[0]["fused"]


@pytest.mark.parametrize("setting, cuda, needed, device_free, host_free, processes, chosen, says", [
    ("memory", False, 0, None, 8 * GIB, 1, True, ""),
    ("none", True, GIB, 100 * GIB, 100 * GIB, 1, False, ""),
    ("auto", False, GIB, None, 100 * GIB, 1, False, ""),
    ("auto", True, GIB, 100 * GIB, 100 * GIB, 1, True, "onto the GPU"),
    ("auto", True, 120 * GIB, 139 * GIB, 1000 * GIB, 1, False, "free GPU memory (139.0 GiB)"),  # ImageNet at 160 px
    ("auto", True, 10 * GIB, 139 * GIB, 64 * GIB, 8, False, "available host memory"),  # 8 processes decode at once
])
def test_cache_auto_decodes_only_what_fits(setting, cuda, needed, device_free, host_free, processes, chosen, says):
    got, why = cache.choose_cache(setting, cuda, needed, device_free, host_free, processes)
    assert got is chosen and says in why


def test_decoded_size_is_estimated_from_headers(image_folder):
    paths = sorted(str(p) for p in (image_folder / "train").rglob("*.png"))
    assert cache.estimate_decoded_bytes(paths, 32) == DecodedImages(paths, [0] * len(paths), 32, "cpu").nbytes


def test_index_batches_stay_on_the_host(image_folder, tmp_path):
    cached = build(tiny_config(image_folder, tmp_path / "c", "data.cache=memory"), Accelerator(cpu=True), Phases())
    assert cached.cached and cached.train_dl.index_loader.device is None  # not moved by accelerate
    batch = next(iter(cached.train_dl.index_loader))
    assert batch.device.type == "cpu"
    plain = build(tiny_config(image_folder, tmp_path / "p", "data.cache=none"), Accelerator(cpu=True), Phases())
    assert not plain.cached and plain.train_dl.loader.device == torch.device("cpu")  # inside DrawnLoader


@pytest.fixture
def corrupt_folder(image_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_image_check_can_be_skipped_and_a_bad_image_still_ends_in_one_line(corrupt_folder, tmp_path, capsys):
    code = main(["--config", "configs/smoke.yaml", f"data.root={corrupt_folder}", f"output_dir={tmp_path / 'r'}",
                 "data.check_images=false", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "broken.png" in err, err
    with pytest.raises(ConfigError, match="data.check_images"):
        load_config("configs/smoke.yaml", ["data.check_images=false", "data.skip_bad_images=true"])


def test_a_figure_that_cannot_be_written_fails_the_run_before_metrics(image_folder, tmp_path, capsys, monkeypatch):
    from transfer.results import plots

    def full_disk(counts, names, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(plots, "plot_confusion", full_disk)  # the drawer is forked: it has the patch too
    out = tmp_path / "r"
    code = main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={out}", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no space left" in err and "confusion.png" in err, err
    assert not (out / "metrics.json").exists() and (out / "model" / "model.safetensors").exists()
    assert (out / "plots" / "samples.png").exists() and not (out / "plots" / "confusion.png").exists()
    assert np.all([p.suffix == ".png" for p in (out / "plots").iterdir()])  # no temporary files left


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    # torch reports bf16 as supported on a T4 (7.5) too, where it is emulated and slow
    monkeypatch.setattr(accel, "use_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert accel.resolve_precision("auto") == expected


def test_the_cache_decodes_with_the_cpus_this_process_may_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})  # e.g. a 4-CPU SLURM allocation
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cache.decode_workers(loader_workers=2, local_processes=2) == 2
    assert cache.decode_workers(loader_workers=0, local_processes=1) == 4


def test_batches_reach_the_gpu_without_blocking_the_host(image_folder, tmp_path):
    from transfer.training.accel import make_accelerator

    accelerator = make_accelerator(tiny_config(image_folder, tmp_path / "r"), None, "no")
    assert accelerator.dataloader_config.non_blocking and accelerator.dataloader_config.use_seedable_sampler


def test_a_cpu_run_on_a_gpu_host_pins_nothing_and_sees_no_gpu(image_folder, tmp_path, monkeypatch):
    # pinned buffers, and any CUDA query (accelerate's checkpoint of the random states asks for
    # every GPU's), would create a CUDA context on a GPU host; the real check is scripts/gpu_check.sh's
    import transfer.run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host, told to use the CPU
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    setup = build(tiny_config(image_folder, tmp_path / "p", "data.num_workers=1", "data.cache=none"),
                  Accelerator(cpu=True), Phases())
    assert not setup.train_dl.loader.pin_memory and not setup.val_dl.pin_memory
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    seen = []
    monkeypatch.setattr(transfer.run, "run", lambda cfg, phases: seen.append(os.environ["CUDA_VISIBLE_DEVICES"]))
    assert main(["--config", "configs/smoke.yaml", f"data.root={image_folder}", f"output_dir={tmp_path / 'r'}"]) == 0
    assert seen == [""]  # hidden before the run asked torch anything


def test_evaluate_is_imported_without_its_evaluators_imports_which_stay_importable():
    import subprocess
    import sys

    check = ("import importlib.util, sys, numpy as np\n"
             "from transfer.training.metrics import accuracy\n"
             "assert accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == 2 / 3\n"
             "assert 'evaluate' in sys.modules\n"
             "assert not {'transformers', 'transformers.pipelines', 'scipy.stats'} & set(sys.modules)\n"
             "assert not sys.modules['evaluate.evaluator.base'].SCIPY_AVAILABLE\n"
             "import scipy.stats  # importable again: nothing stays hidden\n"
             "if importlib.util.find_spec('transformers') is not None:\n"
             "    assert not sys.modules['evaluate.evaluator.base'].TRANSFORMERS_AVAILABLE\n"
             "    import transformers.pipelines\n"
             "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_each_accelerator_starts_accelerates_settings_afresh(image_folder, tmp_path):
    # accelerate's process-wide state would keep the first run's precision and dynamo setting: a
    # second run in one process (a notebook) on another precision failed with its traceback
    first = load_config("configs/smoke.yaml", [f"data.root={image_folder}", f"output_dir={tmp_path / 'a'}"])
    second = load_config("configs/smoke.yaml", [f"data.root={image_folder}", f"output_dir={tmp_path / 'b'}",
                                                "train.compile=true", "train.grad_accum_steps=2"])
    a = accel.make_accelerator(first, None, "no")
    assert a.mixed_precision == "no" and a.state.dynamo_plugin.backend.value == "NO"
    b = accel.make_accelerator(second, None, "bf16")
    assert b.mixed_precision == "bf16" and b.state.dynamo_plugin.backend.value == "INDUCTOR"
    assert b.gradient_accumulation_steps == 2
