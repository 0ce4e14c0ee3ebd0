"""Choices that make a GPU run fast, made only where they are safe, each said out loud.

- `backend_settings`: cuDNN autotuning for the fixed input size, TF32 for what runs in fp32, and
  the fused Adam/AdamW/SGD kernels, on CUDA only. They cost bit-for-bit reproducibility between
  GPU runs (autotuning may pick other convolution algorithms; TF32 rounds fp32 matmuls to a 10-bit
  mantissa); the CPU path stays exact (tested: none is set there).
- `choose_cache`: `data.cache=auto` decodes the data set onto the device only when it fits, as
  estimated from the image headers before anything is decoded.
"""
from __future__ import annotations

import os

import numpy as np

CACHE_SHARE = 0.5  # data.cache=auto: the decoded set may take at most this share of free device and host memory
HEADER_SAMPLE = 256  # images whose headers are read to estimate the decoded size


def backend_settings(cuda: bool) -> dict[str, bool]:
    return {"cudnn_benchmark": cuda, "tf32_matmul": cuda, "fused_optimizer": cuda}


def apply_backend_settings(settings: dict[str, bool]) -> None:
    import torch

    if settings["cudnn_benchmark"]:
        torch.backends.cudnn.benchmark = True
    if settings["tf32_matmul"]:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def estimate_decoded_bytes(stored, size: int) -> int:
    """Bytes of the uint8 buffer `cache.DecodedImages` would hold: each image resized so its
    short side is `size`, from the headers of an even sample of at most HEADER_SAMPLE images."""
    from .images import header_size

    if not stored:
        return 0
    picks = np.linspace(0, len(stored) - 1, min(HEADER_SAMPLE, len(stored))).astype(int)
    per_image = []
    for i in picks:
        width, height = header_size(stored[i])
        scale = size / min(width, height)
        per_image.append(round(width * scale) * round(height * scale) * 3)
    return int(np.mean(per_image) * len(stored))


def free_memory(device) -> tuple[int | None, int]:
    """(free bytes on the device, or None for a CPU; available host bytes)."""
    import psutil
    import torch

    device_free = torch.cuda.mem_get_info(device)[0] if getattr(device, "type", "cpu") == "cuda" else None
    return device_free, psutil.virtual_memory().available


def choose_cache(setting: str, cuda: bool, needed: int, device_free: int | None, host_free: int,
                 local_processes: int = 1) -> tuple[bool, str]:
    """(decode into memory?, why). `needed`: the decoded train + val sets' bytes (estimated);
    each process holds its own copy, and all of a host's processes decode at once."""
    gib = f"{needed / 2**30:.2f} GiB"
    if setting == "memory":
        return True, ""  # decode() says how much it took
    if setting == "none":
        return False, ""
    if not cuda:
        return False, ""  # auto on a CPU: the loader path (the model, not decoding, is the bottleneck there)
    host_need = needed * local_processes
    if device_free is not None and needed > CACHE_SHARE * device_free:
        return False, (f"data.cache=auto: the decoded images (about {gib}) would take over {CACHE_SHARE:.0%} of the "
                       f"free GPU memory ({device_free / 2**30:.1f} GiB): decoding in loader workers instead")
    if host_need > CACHE_SHARE * host_free:
        return False, (f"data.cache=auto: decoding about {host_need / 2**30:.2f} GiB would take over "
                       f"{CACHE_SHARE:.0%} of the available host memory ({host_free / 2**30:.1f} GiB): "
                       f"decoding in loader workers instead")
    return True, f"data.cache=auto: decoding about {gib} onto the GPU once, cropping there each batch"


def decode_workers(loader_workers: int, local_processes: int) -> int:
    """Workers that decode the cache: the loader needs none on that path, so every core of this
    process's share of the machine (at least the loader's number)."""
    return max(loader_workers, (os.cpu_count() or 1) // max(local_processes, 1))
