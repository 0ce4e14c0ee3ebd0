"""What a training step minimises: cross-entropy on the model's logits (no sigmoid), with label
smoothing (`train.label_smoothing`) and mixup/cutmix (`data.mixup`, `data.cutmix`) when asked.

Mixing is timm's `Mixup` in its per-batch mode, applied on the device to the normalised batch,
so the loader path and the decoded-cache path mix alike. Its random numbers come from numpy's
global generator, which each epoch reseeds (`loop.epoch_seed`) and nothing else in the
main process draws from: the same seed gives the same mixed batches on either path, and a resume
that skips an epoch's first batches draws their numbers again (`replay`), in the same order.

Validation loss stays plain cross-entropy (see `loop.evaluate`), so it is comparable across
arms and settings; the training loss reported is the one optimised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from timm.data import Mixup
from timm.data.mixup import mixup_target

from ..config import DataConfig
from ..data.transforms import Normalize


class Objective:
    """`smoothing`: train.label_smoothing; `mixing`: the data section, whose mixup, cutmix,
    mixup_prob and mixup_off_epoch say how batches are mixed."""

    def __init__(self, smoothing: float, mixing: DataConfig, num_classes: int, normalize: Normalize):
        self.normalize, self.num_classes, self.image_size = normalize, num_classes, mixing.image_size
        self.smoothing = smoothing
        self.off_epoch = mixing.mixup_off_epoch
        self.mixup = None
        if mixing.mixup > 0 or mixing.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=mixing.mixup, cutmix_alpha=mixing.cutmix, prob=mixing.mixup_prob,
                               switch_prob=0.5, mode="batch", label_smoothing=smoothing, num_classes=num_classes)

    @property
    def describe(self) -> dict:
        return {"label_smoothing": self.smoothing, "mixing": self.mixup is not None}

    def set_epoch(self, epoch: int) -> None:
        if self.mixup is not None:
            self.mixup.mixup_enabled = self.off_epoch is None or epoch < self.off_epoch

    @property
    def mixing(self) -> bool:
        return self.mixup is not None and self.mixup.mixup_enabled

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images, targets): class indices, or soft targets when this epoch mixes."""
        x, labels = self.normalize(batch["pixel_values"]), batch["labels"]
        if not self.mixing:
            return x, labels
        # timm's Mixup pairs each image with its mirror in the batch (x.flip(0)) and asserts an
        # even batch; an odd one (a data set's last) mixes all but its last image, which stays whole.
        even = len(x) - len(x) % 2
        _, targets = self.mixup(x[:even], labels[:even])  # mixes x in place (a view)
        if even < len(x):
            targets = torch.cat([targets, mixup_target(labels[even:], self.num_classes, 1.0, self.smoothing)])
        return x, targets

    def replay(self, batch: dict) -> None:
        """A batch skipped while continuing a half-finished epoch (its pixels were never decoded):
        draw its mixing numbers again, so the rest of the epoch mixes as it would have. timm draws
        them per batch, whatever its size (even a batch of one, mixed as none), and cutmix's box
        from the image's height and width alone: two blank images of that size draw the same."""
        if self.mixing:
            size = self.image_size
            self.mixup(torch.zeros(2, 1, size, size), torch.zeros(2, dtype=torch.long))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over the batch. Soft targets already carry the smoothing (timm's mixup_target)."""
        if targets.dtype.is_floating_point:
            return F.cross_entropy(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)
