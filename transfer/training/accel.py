"""Where a run executes: the one `Accelerator` (device, processes, mixed precision, gradient
accumulation), the precision `auto` resolves to, the GPU-only backend settings, and the DDP
wrapper rebuilt for each frozen/unfrozen phase.

The backend settings (cuDNN autotuning for the fixed input size, TF32 for what runs in fp32, the
fused Adam/AdamW/SGD kernels) are chosen on CUDA only. They cost bit-for-bit reproducibility
between GPU runs (autotuning may pick other convolution algorithms; TF32 rounds fp32 matmuls to
a 10-bit mantissa); the CPU path stays exact (tested: none is set there).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DynamoBackend, TorchDynamoPlugin
from accelerate.utils import is_compiled_module

from ..config import Config
from ..errors import ConfigError


def use_cuda() -> bool:
    """A GPU is there and the run was not told to use the CPU (see cli.hide_gpus_from_a_cpu_run)."""
    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")


def local_processes() -> int:
    """Processes of this run on this host (torchrun / accelerate launch set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def native_bf16() -> bool:
    """A GPU with bf16 in hardware (compute capability 8.0, Ampere, and later). Not
    `torch.cuda.is_bf16_supported()`: from torch 2.3 it is also true on older GPUs, which emulate
    bf16 slowly."""
    return torch.cuda.get_device_capability() >= (8, 0)


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 on a GPU that has it in hardware, else fp16 on a GPU, else fp32 (bf16 is slow
    on most CPUs)."""
    cuda = use_cuda()
    if requested == "auto":
        return ("bf16" if native_bf16() else "fp16") if cuda else "no"
    if requested == "fp16" and not cuda:
        raise ConfigError("train.mixed_precision='fp16' needs a GPU; on a CPU use 'no' (or 'auto')")
    return requested


def device_name(device: torch.device) -> str:
    """What a run ran on, for the report to compare runs by: the GPU's model, or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def make_accelerator(cfg: Config, out: Path | None, precision: str) -> Accelerator:
    """This run's accelerator. accelerate keeps its settings (precision, compiling, accumulation)
    in process-wide singletons that the first `Accelerator` fixes: a second run in one process (a
    notebook, a sweep in Python) would silently train uncompiled after an uncompiled one, and fail
    with accelerate's traceback on another precision. So each run starts them afresh; the
    process's own part (device, process group: accelerate's PartialState) is kept. The one other
    private detail of accelerate here besides `_models` (tested: test_cache.py's compiled run
    after an eager one in one process)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        cpu=not use_cuda() and not torch.backends.mps.is_available(),  # lets torchrun on CPUs use gloo
        mixed_precision=precision, gradient_accumulation_steps=cfg.train.grad_accum_steps,
        log_with=None if cfg.train.log_with == "none" else cfg.train.log_with,
        project_dir=None if out is None else str(out),
        # None: accelerate launch's setting
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=cfg.train.compile_mode) if cfg.train.compile else None,
        # one shuffle for every process (see loop.epoch_seed); batches copied to the GPU from pinned
        # memory without blocking the host
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True))


def peak_memory_mb(device: torch.device) -> float | None:
    """The most GPU memory torch's allocator held in this process (reserved, not only allocated:
    the cached blocks are as unavailable to another run on the GPU); None off a GPU."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_reserved(device) / 2**20, 1)


def on_every_process(flag: bool, accelerator: Accelerator) -> bool:
    """True where every process says so (decisions each process makes from its own view, such as
    its free memory, that must come out the same everywhere)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(int(flag), device=accelerator.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def backend_settings(cuda: bool) -> dict[str, bool]:
    return {"cudnn_benchmark": cuda, "tf32_matmul": cuda, "fused_optimizer": cuda}


def fuse_optimizer(settings: dict[str, bool], optimizer_name: str, precision: str) -> bool:
    """The fused kernel, where the backend settings chose it and it computes what the plain one
    does: not SGD under fp16's gradient scaler. Torch makes SGD's momentum buffers with
    `empty_like` on the first step, and the fused kernel skips a step whose gradients overflowed,
    so a first step that overflows (the scaler's usual start) leaves them uninitialised: the
    following steps read garbage (seen on CPU with GradScaler("cpu"): weights off by 1e12)."""
    return settings["fused_optimizer"] and not (optimizer_name == "sgd" and precision == "fp16")


def compiles_optimizer(accelerator: Accelerator, optimizer_name: str) -> bool:
    """Whether the optimizer's step is compiled along with the model (train.compile, or an
    accelerate config with dynamo on), with the same backend and mode: under reduce-overhead its
    update then joins the CUDA graphs instead of launching its kernels from Python. Its rates are
    then tensors (optim.hold_in_tensors), and the step is torch's plain Adam traced, not the fused
    kernel: that kernel takes beta1 as a float argument, which a graph would freeze at its
    captured value while the one-cycle schedule moves it every step. Not for SGD (its momentum
    cannot be a tensor: it would recompile as it cycles), nor under fp16's gradient scaler (its
    step decides on the host whether gradients overflowed)."""
    plugin = accelerator.state.dynamo_plugin
    return plugin.backend != DynamoBackend.NO and optimizer_name != "sgd" and accelerator.scaler is None


def compiled_step(accelerator: Accelerator, optimizer):
    """The prepared optimizer's inner step, compiled as accelerate compiles the model."""
    return torch.compile(optimizer.optimizer.step, **accelerator.state.dynamo_plugin.to_kwargs())


def apply_backend_settings(settings: dict[str, bool]) -> None:
    if settings["cudnn_benchmark"]:
        torch.backends.cudnn.benchmark = True
    if settings["tf32_matmul"]:  # (cuDNN's convolutions use TF32 by default already)
        torch.set_float32_matmul_precision("high")


def uncompiled(model):
    """The model under torch.compile's wrapper, if any (a DDP wrapper stays)."""
    return model._orig_mod if is_compiled_module(model) else model


def fit_ddp(accelerator: Accelerator, model, frozen: bool):
    """DDP syncs the parameters that required a gradient when it was built. The first epochs may
    freeze the backbone: build it for the phase at hand (a parameter broadcast) instead of one
    wrapper with find_unused_parameters=True, whose search for parameters without a gradient costs
    an autograd traversal every step of the run (and a warning each time it finds none).

    With `train.compile` (or an accelerate config with dynamo on) accelerate compiles after
    wrapping: the DDP sits inside the compiled module, and is rebuilt there and compiled again
    (once per phase change)."""
    compiled = is_compiled_module(model)
    ddp = uncompiled(model)
    if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel) or getattr(ddp, "built_frozen", False) == frozen:
        return model  # accelerate's wrapper is built before anything is frozen
    kwargs = accelerator.ddp_handler.to_kwargs() if accelerator.ddp_handler is not None else {}
    rebuilt = torch.nn.parallel.DistributedDataParallel(ddp.module, device_ids=ddp.device_ids,
                                                        output_device=ddp.output_device, **kwargs)
    rebuilt.built_frozen = frozen
    if compiled:
        rebuilt = torch.compile(rebuilt, **accelerator.state.dynamo_plugin.to_kwargs())
    replace_prepared_model(accelerator, (model, ddp), rebuilt)
    return rebuilt


def prepared_models(accelerator: Accelerator) -> list:
    """The models as accelerate holds them, which is what `load_state` loads into: the DDP wrapper
    on GPUs (its keys start with "module."), the inner module on CPUs. A checkpoint written in the
    background saves these (checkpoint.host_states); the other private detail of the list below."""
    return list(accelerator._models)


def replace_prepared_model(accelerator: Accelerator, old: tuple, new) -> None:
    """Put `new` where accelerate holds any of `old` among its prepared models, so that nothing
    keeps the old DDP wrapper (its reducer and gradient buckets, a model's size) alive and
    `load_state`/`free_memory` see the model being trained. accelerate has no public way to swap a
    prepared model: this is a private detail (the list `Accelerator._models`, which
    save_state, load_state and free_memory read), and a test pins it (test_checkpoint.py). On CPUs
    accelerate holds the inner module, not the wrapper: then nothing changes."""
    accelerator._models = [new if any(m is o for o in old) else m for m in accelerator._models]
