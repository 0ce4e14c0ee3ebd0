"""Transforms on the fly, equal to torchvision's (tested):
  train: Resize(short side) + RandomCrop(size, padding=4, reflect) + RandomHorizontalFlip + ToTensor + Normalize
  val:   Resize(short side) + CenterCrop(size) + ToTensor + Normalize
(Resize is a no-op when the short side already equals `size`, as in Imagewoof-160.)

The training augmentation's random numbers are not drawn where the image is decoded: `Draws`
holds one epoch's (crop position, flip) per sample, drawn in the main process from torch's RNG
(seeded by the run's seed, the epoch and the process), and the workers apply them. So loader
workers are pure decode-and-apply functions that persist across epochs, a resumed run draws
exactly what the uninterrupted one did, and the decoded-cache path (cache.py), which reads the
same draws, crops identically at any number of workers. Given the same draw, the crop and flip
equal torchvision's; the position is uniform over the same range as its RandomCrop's.

They return uint8 HWC tensors; `normalize` turns a batch into model input on the device. That
keeps the float conversion off the CPU workers and makes host-to-device copies 4x smaller.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from ..stops import STOP_SIGNALS
from .images import open_rgb

PAD = 4  # the article's RandomCrop padding


def _window(a: np.ndarray, axis: int, start: int, size: int) -> np.ndarray:
    """a[start:start+size] along `axis`, reflecting (numpy 'reflect', no edge repeat) where the
    window overhangs by at most PAD. Slices and one concatenate: no index arrays, no full pad."""
    n, end = a.shape[axis], start + size
    at = lambda s: (slice(None),) * axis + (s,)  # noqa: E731
    if start >= 0 and end <= n:
        return a[at(slice(start, end))]
    pieces = [a[at(slice(-start, 0, -1))]] if start < 0 else []  # rows -start .. 1
    pieces.append(a[at(slice(max(start, 0), min(end, n)))])
    if end > n:
        pieces.append(a[at(slice(n - 2, 2 * n - 2 - end, -1))])  # rows n-2 .. 2n-1-end
    return np.concatenate(pieces, axis)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, order="C"))  # a writable copy of the (read-only) PIL pixels


def crop_start(u: float, padded: int, size: int) -> int:
    """A RandomCrop position, uniform over torchvision's range 0 .. padded - size, from u in [0, 1)."""
    return min(int(u * (padded - size + 1)), padded - size)


class Draws:
    """One epoch's training augmentation, per sample: two uniforms for the crop position, one for
    the flip (flipped below 0.5). Drawn in the main process (`redraw`, at the start of each pass
    over the data, from torch's RNG) into shared memory, which persistent loader workers read."""

    def __init__(self, n: int):
        self.table = torch.zeros(n, 3, dtype=torch.float64).share_memory_()

    def redraw(self) -> None:
        self.table.copy_(torch.rand(self.table.shape, dtype=torch.float64))

    def __getitem__(self, index):
        return self.table[index]


@dataclass(frozen=True)
class TrainTransform:
    """RandomCrop(size, padding=4, reflect) + optional flip at a given draw (Draws: crop u, crop
    v, flip). Returns HWC uint8: a stacked batch of these, permuted to NCHW, is channels_last."""
    size: int
    hflip: bool = True

    def __call__(self, img: Image.Image, draw) -> torch.Tensor:
        if min(img.size) != self.size:
            img = TF.resize(img, self.size)
        a = np.asarray(img)
        h, w = a.shape[:2]
        i, j = crop_start(float(draw[0]), h + 2 * PAD, self.size), crop_start(float(draw[1]), w + 2 * PAD, self.size)
        crop = _window(_window(a, 0, i - PAD, self.size), 1, j - PAD, self.size)
        if self.hflip and float(draw[2]) < 0.5:
            crop = crop[:, ::-1]
        return _tensor(crop)


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """In a loader worker (its `worker_init_fn`): the stop signals are the run's to handle. A
    stop sent to the whole process group (SLURM, a terminal's Ctrl-C, a launcher) reaches the
    workers too; dying there would kill the run ("DataLoader worker exited unexpectedly") before it
    writes the checkpoint the signal asks for. Workers end with the run: torch's watchdog ends a
    worker whose parent is gone."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)


SKIPPED = torch.empty(0, dtype=torch.uint8)  # the pixels of a sample in a batch that is only replayed


class TrainSplit(Dataset):
    """The training split as loader workers see it: sample i decoded (named by its id when bad)
    and augmented with the epoch's draw for i. `split[[i, j]]` gives a batch dict, as `datasets` does.

    `skipped` (shared memory, like the draws) marks the samples of the batches a resumed epoch
    replays without training on them: such a batch is neither read nor decoded, its samples come
    as SKIPPED pixels and label -1 (only the batch's size matters to the replay)."""

    def __init__(self, ds, transform: TrainTransform, draws: Draws):
        self.ds, self.transform, self.draws = ds.with_format(None), transform, draws
        self.skipped = torch.zeros(len(self.ds), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.ds)

    def mark_skipped(self, batches) -> None:
        """Mark the samples of `batches` (lists of indices) as skipped, and only those."""
        self.skipped.zero_()
        for indices in batches:
            self.skipped[list(indices)] = True

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A loader's batch (torch's DataLoader calls this): skipped, or decoded."""
        if bool(self.skipped[list(indices)].all()):  # marked by batch: all of a batch or none
            return [{"pixel_values": SKIPPED, "labels": -1} for _ in indices]
        return self.decode(indices)

    def decode(self, indices: list[int]) -> list[dict]:
        rows = self.ds[list(indices)]
        return [{"pixel_values": self.transform(open_rgb(image, name), self.draws[i]), "labels": label}
                for i, image, name, label in zip(indices, rows["image"], rows["id"], rows["label"])]

    def __getitem__(self, index):
        """A sample, or with a list a batch dict; always decoded (samples.png reads these while a
        resumed run's skipped batches are marked)."""
        if isinstance(index, (list, tuple)):
            items = self.decode(index)
            return {"pixel_values": [e["pixel_values"] for e in items], "labels": [e["labels"] for e in items]}
        return self.decode([index])[0]


@dataclass(frozen=True)
class EvalTransform:
    """Resize the short side, then centre-crop: keeps the aspect ratio (the article squashed). HWC uint8."""
    size: int

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if min(img.size) != self.size:
            img = TF.resize(img, self.size)
        a = np.asarray(img)
        h, w = a.shape[:2]
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return _tensor(a[top:top + self.size, left:left + self.size])


@dataclass(frozen=True)
class BatchTransform:
    """`datasets.with_transform` hook: a batch of {'image': {'bytes', 'path'}, 'label', 'id'} -> uint8
    tensors; a bad image is named by its id (a path, or `split[index]`)."""
    image_transform: TrainTransform | EvalTransform

    def __call__(self, batch: dict) -> dict:
        return {"pixel_values": [self.image_transform(open_rgb(image, name))
                                 for image, name in zip(batch["image"], batch["id"])],
                "labels": batch["label"]}


def collate(examples: list[dict]) -> dict:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}


class Normalize:
    """`normalize` with the model's mean and std, as tensors made once per device: no host-device
    copy per batch."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._constants: dict = {}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        constants = self._constants.get(pixels.device)
        if constants is None:
            constants = self._constants[pixels.device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return normalize(pixels, *constants)


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW in channels_last memory (a permuted view, no
    copy); the same arithmetic as ToTensor + Normalize."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return pixels.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
