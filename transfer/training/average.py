"""The weight average (`train.ema_decay`): timm's ModelEmaV3, with its warm-up, updated after each
optimizer step. Two things differ from using it as it is:

- Under DDP every process trains the same weights, but each process's batch-norm statistics
  come from its own batches (DDP hands rank 0's to all at each forward; each then moves them with
  its own batch), so each process's average would hold other statistics: its scores would mix N
  models while model/ holds rank 0's. Here the averaged statistics are averaged over the
  processes after each update (one all-reduce of the batch-norm buffers, 208 KiB for a
  ResNet50), so every process holds the same average, and a checkpoint (rank 0's) resumes every
  process exactly.
- timm lists `state_dict()` of the average and of the model at every update; here the tensors are
  listed once (state dicts share the parameters' and buffers' storage, and nothing replaces them
  during a run: loading copies into them). For a ResNet50 that takes the Python cost of an update
  from 1.2 ms to 0.03 ms (`python scripts/benchmark.py --ema --device cpu`, this project's 2-core
  CPU); on a GPU, where the arithmetic itself takes a fraction of a millisecond, that is most of it.
"""
from __future__ import annotations

import weakref

import torch
from timm.utils import ModelEmaV3


class WeightAverage(ModelEmaV3):
    def __init__(self, model: torch.nn.Module, decay: float, num_processes: int = 1):
        super().__init__(model, decay=decay, use_warmup=True)
        self.num_processes = num_processes
        self._source = lambda: None  # (a weak reference:) the model the tensor lists below were made from
        self._lerped: tuple[list, list] = ([], [])  # (average's, model's) floating-point tensors
        self._copied: list[tuple] = []  # (average's, model's) other tensors (batch counts)
        self._statistics: list[torch.Tensor] = []  # the average's floating-point buffers

    def _list_tensors(self, model: torch.nn.Module) -> None:
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._lerped = ([a for a, _ in pairs if a.is_floating_point()], [m for a, m in pairs if a.is_floating_point()])
        self._copied = [(a, m) for a, m in pairs if not a.is_floating_point()]
        self._statistics = [b for b in self.module.buffers() if b.is_floating_point()]
        self._source = weakref.ref(model)  # not the module itself: an nn.Module attribute would join the state dict

    @torch.no_grad()
    def apply_update_(self, model: torch.nn.Module, decay: float) -> None:
        """timm's update (its foreach lerp of every floating-point tensor, a copy of the rest), then
        the statistics averaged over processes."""
        if model is not self._source():
            self._list_tensors(model)
        self._foreach_lerp_(*self._lerped, weight=1.0 - decay)
        for a, m in self._copied:
            a.copy_(m)
        if self.num_processes > 1 and self._statistics:
            flat = torch.cat([b.reshape(-1) for b in self._statistics])
            torch.distributed.all_reduce(flat)
            flat.div_(self.num_processes)
            for b, v in zip(self._statistics, flat.split([b.numel() for b in self._statistics])):
                b.copy_(v.view_as(b))
