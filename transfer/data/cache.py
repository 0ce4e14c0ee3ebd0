"""Decode once, crop on the device: the loader for a GPU that JPEG decoding cannot keep busy.

Every image is decoded once (in parallel), resized so its short side is `image_size` (a no-op
for Imagewoof-160), and kept as uint8 in one flat buffer on the device (Imagewoof-160: ~1.3 GB).
Each batch is then one gather on the device: RandomCrop(size, padding=4, reflect) + flip for
training, a centre crop for evaluation. The crop positions and flips are the epoch's `Draws`
(transforms.py), the ones the loader path's workers apply, so both paths give identical pixels
at any number of workers (tested); `normalize` runs on the device as on the other path.

Sharding, shuffling and `set_epoch` stay with the (accelerate-prepared) loader of indices that
this wraps, so multi-GPU, resume and `gather_for_metrics` work unchanged.

`data.cache=auto` (`choose_cache`) decodes the data set onto the device only when it fits, as
estimated from the image headers before anything is decoded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import psutil
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset

from ..errors import OutputError, first_line
from ..files import exclusive, staged_folder
from .images import header_size, open_rgb
from .transforms import PAD, SKIPPED, Draws, ignore_stop_signals


class _Decode(Dataset):
    def __init__(self, images: list, size: int):
        self.images, self.size = images, size  # paths or {"bytes", "path"}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = open_rgb(self.images[i])
        if min(img.size) != self.size:
            img = TF.resize(img, self.size)
        return np.asarray(img)


COPY_CHUNK = 256  # images per host-to-device copy while the cache is filled
STORE_FORMAT = 1  # what a kept split's files hold; part of its fingerprint
STORED_PIXELS, STORED_SHAPES = "pixels.u8", "shapes.npy"  # the flat HWC uint8 images; their (height, width)
KEEP_STORED = 4  # decoded splits kept between runs, the most recently used


def decoded_store() -> Path:
    """Where decoded splits are kept between runs: in the `datasets` cache (HF_DATASETS_CACHE), which
    holds these images' arrow tables already."""
    import datasets  # (see sources.load_source)

    return Path(datasets.config.HF_DATASETS_CACHE) / "transfer-decoded"


def fingerprint(images: list, size: int) -> str:
    """What a decoded split depends on: each image (a file by its path, size and modification
    time; stored bytes by their hash), in order, and the short side it is resized to."""
    digest = hashlib.blake2b(f"{STORE_FORMAT} {size} {len(images)}".encode(), digest_size=16)
    for image in images:
        if isinstance(image, dict) and image.get("bytes") is not None:
            digest.update(hashlib.blake2b(image["bytes"], digest_size=16).digest())
        else:
            path = image if isinstance(image, str) else image["path"]
            stat = os.stat(path)
            digest.update(f"\0{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _pixels(images: list, size: int, num_workers: int, store: Path | None) -> tuple[list[np.ndarray], np.ndarray, bool]:
    """(the images' HWC uint8 arrays, or their kept flat buffer alone; their (height, width) rows;
    whether they were read back from `store`)."""
    if store is None:
        arrays = _decoded(images, size, num_workers)
        return arrays, _shapes(arrays), False
    folder = Path(store) / fingerprint(images, size)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(Path(store) / f".{folder.name}.lock", "waiting for another run that decodes these images"):
        if (folder / STORED_SHAPES).is_file():
            os.utime(folder)  # recently used: kept longest
            return [np.fromfile(folder / STORED_PIXELS, dtype=np.uint8)], np.load(folder / STORED_SHAPES), True
        arrays = _decoded(images, size, num_workers)
        _keep(folder, arrays)
    return arrays, _shapes(arrays), False


def _shapes(arrays: list[np.ndarray]) -> np.ndarray:
    return np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)


def _decoded(images: list, size: int, num_workers: int) -> list[np.ndarray]:
    arrays = []
    decode = DataLoader(_Decode(images, size), batch_size=64, num_workers=num_workers, collate_fn=list,
                        worker_init_fn=ignore_stop_signals)
    for chunk in decode:
        arrays += chunk
    return arrays


def _keep(folder: Path, arrays: list[np.ndarray]) -> None:
    """Write a decoded split for later runs (atomically), and drop all but the KEEP_STORED most
    recently used. A failure (a full disk) costs only the reuse: one line, and the run goes on."""
    try:
        with staged_folder(folder, sum(a.nbytes for a in arrays)) as tmp:
            with open(tmp / STORED_PIXELS, "wb") as f:
                for a in arrays:
                    f.write(np.ascontiguousarray(a).data)
            np.save(tmp / STORED_SHAPES, _shapes(arrays))
        kept = sorted((p for p in folder.parent.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP_STORED:]:
            shutil.rmtree(old, ignore_errors=True)
    except (OSError, OutputError) as e:
        print(f"note: the decoded images could not be kept for later runs ({first_line(e)}); this run goes on",
              file=sys.stderr, flush=True)


class DecodedImages:
    """All images of a split as one flat uint8 buffer, with each image's offset, height and width.

    `store`: a folder where decoded splits are kept between runs (decoded_store()): a later run of
    the same images at the same size (the other arm, the next seed) reads them back instead of
    decoding them again, and runs started together decode them once (the others wait). `loaded`
    says whether this one was read back."""

    def __init__(self, images: list, labels: list[int], size: int, device, num_workers: int = 0,
                 store: Path | None = None):
        self.size, self.device = size, torch.device(device)
        arrays, shapes, self.loaded = _pixels(images, size, num_workers, store)
        shapes = torch.from_numpy(shapes).long().view(-1, 2)
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        starts = torch.cumsum(sizes, 0) - sizes
        self.offsets = starts.to(self.device)
        self.heights, self.widths = shapes[:, 0].to(self.device), shapes[:, 1].to(self.device)
        self._heights_cpu, self._widths_cpu = shapes[:, 0], shapes[:, 1]  # for the crop offsets, on the host
        if self.loaded:
            self.buffer = torch.from_numpy(arrays[0]).to(self.device)  # read back flat: on a CPU, it is the buffer
        else:
            # copied into the buffer a chunk of images at a time and let go, so the host holds the set
            # about once (one concatenation held it twice; the cache-size estimate counts it once)
            self.buffer = torch.empty(int(sizes.sum()), dtype=torch.uint8, device=self.device)
            start = 0
            for first in range(0, len(arrays), COPY_CHUNK):
                chunk = np.concatenate([a.reshape(-1) for a in arrays[first:first + COPY_CHUNK]])
                arrays[first:first + COPY_CHUNK] = [None] * len(arrays[first:first + COPY_CHUNK])
                self.buffer[start:start + chunk.size].copy_(torch.from_numpy(chunk))
                start += chunk.size
        self.labels = torch.tensor(labels, dtype=torch.long, device=self.device)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    def crops(self, index: torch.Tensor, draws: torch.Tensor | None = None, hflip: bool = True) -> torch.Tensor:
        """uint8 NHWC crops of the images at `index` (a host tensor)."""
        return self.batch(index, draws, hflip)[0]

    def batch(self, index: torch.Tensor, draws: torch.Tensor | None, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 NHWC crops, labels) of the images at `index`, a tensor on the host. `draws`: the
        training augmentation of these images (rows of Draws, as TrainTransform applies them);
        None: centre crops. The offsets travel with the indices in one non-blocking copy: no step
        waits for the device to finish the previous one."""
        s, index = self.size, index.cpu()
        h, w = self._heights_cpu[index], self._widths_cpu[index]
        if draws is not None:  # transforms.crop_start, vectorised: the same float64 arithmetic
            ph, pw = h + 2 * PAD, w + 2 * PAD
            top = torch.minimum((draws[:, 0] * (ph - s + 1)).floor().long(), ph - s) - PAD
            left = torch.minimum((draws[:, 1] * (pw - s + 1)).floor().long(), pw - s) - PAD
            flip = (draws[:, 2] < 0.5).long() if hflip else torch.zeros(len(index), dtype=torch.long)
        else:
            top = torch.round((h - s) / 2.0).long()  # as torchvision's CenterCrop
            left = torch.round((w - s) / 2.0).long()
            flip = torch.zeros(len(index), dtype=torch.long)
        params = torch.stack([index.long(), top, left, flip])
        if self.device.type == "cuda":
            params = params.pin_memory()
        index, top, left, flip = params.to(self.device, non_blocking=True)
        flip = flip.bool()
        h, w = self.heights[index], self.widths[index]
        steps = torch.arange(s, device=self.device)
        rows = _reflect(top[:, None] + steps, h[:, None])  # (B, s)
        cols = _reflect(left[:, None] + steps, w[:, None])
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        pixel = self.offsets[index][:, None, None] + (rows[:, :, None] * w[:, None, None] + cols[:, None, :]) * 3
        channels = torch.arange(3, device=self.device)
        return self.buffer[pixel[..., None] + channels], self.labels[index]  # (B, s, s, 3), (B,)


def _reflect(position: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """numpy's 'reflect' padding (no edge repeat) for overhangs shorter than the axis."""
    position = position.abs()
    return torch.where(position >= n, 2 * (n - 1) - position, position)


class IndexDataset(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class CachedBatches:
    """Iterates a (prepared) loader of indices and yields {'pixel_values', 'labels'} on the device.
    `draws`: the training split's (redrawn at the start of every pass, as DrawnLoader does); None
    for evaluation (centre crops). `skip_first(n)`: the next pass's first n batches come without
    pixels (SKIPPED, labels -1), for a resumed epoch to replay, as on the loader path."""

    def __init__(self, index_loader, images: DecodedImages, draws: Draws | None, hflip: bool):
        self.index_loader, self.images, self.draws, self.hflip = index_loader, images, draws, hflip
        self._skip = 0

    def __len__(self):
        return len(self.index_loader)

    def set_epoch(self, epoch: int) -> None:
        self.index_loader.set_epoch(epoch)

    def skip_first(self, batches: int) -> None:
        self._skip = batches

    def __iter__(self):
        if self.draws is not None:
            self.draws.redraw()
        skip, self._skip = self._skip, 0
        for i, index in enumerate(self.index_loader):  # on the host (prepared with device_placement=False)
            if i < skip:
                yield {"pixel_values": SKIPPED.expand(len(index), 0), "labels": torch.full((len(index),), -1)}
                continue
            pixels, labels = self.images.batch(index, None if self.draws is None else self.draws[index], self.hflip)
            yield {"pixel_values": pixels, "labels": labels}


# ---------------------------------------------------------------------------- data.cache=auto

CACHE_SHARE = 0.5  # data.cache=auto: the decoded set may take at most this share of free device and host memory
HEADER_SAMPLE = 256  # images whose headers are read to estimate the decoded size




def estimate_decoded_bytes(stored, size: int) -> int:
    """Bytes of the uint8 buffer `cache.DecodedImages` would hold: each image resized so its
    short side is `size`, from the headers of an even sample of at most HEADER_SAMPLE images."""
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


def usable_cpus() -> int:
    """The CPUs this process may run on (a SLURM allocation or `taskset` narrows them), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def decode_workers(loader_workers: int, local_processes: int) -> int:
    """Workers that decode the cache: the loader needs none on that path, so every CPU of this
    process's share (at least the loader's number)."""
    return max(loader_workers, usable_cpus() // max(local_processes, 1))
