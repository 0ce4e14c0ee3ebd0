"""Stopping a run cleanly: a stop signal (SIGTERM, Ctrl-C, and SIGUSR1/SIGUSR2, which SLURM and
submitit send before a time limit or a preemption), a non-finite loss; and the synced clock that a
time budget is measured by.

Checks cost one small all-reduce every few optimizer steps (no per-step device sync), and every
process sees the same verdict at the same step, so they all stop together.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

import torch

from .. import stops
from ..errors import NonFiniteLoss, Preempted, StoppedInStartup
from ..stops import STOP_SIGNALS  # each asks for a checkpoint and a clean stop (exit 143)


def _max_over_processes(values: torch.Tensor, processes: int) -> torch.Tensor:
    """The element-wise maximum over every process, in one all-reduce. torch.distributed itself:
    accelerate's `reduce(x, "max")` summed before accelerate 1.14, which on N processes ran the
    budget clock N times fast."""
    if processes > 1:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return values


class Watch:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.signal_name = None
        self.elapsed = 0.0  # budget clock (seconds of the run so far), the same on every process
        self._offset, self._t0 = 0.0, time.perf_counter()
        self._first_bad = torch.tensor(-1, device=accelerator.device)
        self.first_check_seconds = None  # epoch start to the first check (after the run's first optimizer step)

    # ---- time
    def start(self, seconds_so_far: float) -> None:
        self._offset, self._t0 = seconds_so_far, time.perf_counter()
        self.elapsed = seconds_so_far

    def seconds(self) -> float:
        """Since `start`: this epoch's wall time so far."""
        return time.perf_counter() - self._t0

    # ---- per step, on the device
    def observe(self, loss: torch.Tensor, batch_index: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad < 0), batch_index, self._first_bad)

    # ---- every few steps: one sync
    def check(self, epoch: int) -> str | None:
        """None or "signal"; raises NonFiniteLoss. Updates `elapsed`, the synced budget clock
        (the schedule, not this check, decides when the budget is spent: see OneCycle.plan)."""
        if self.first_check_seconds is None:
            self.first_check_seconds = self.seconds()
        host = torch.tensor([float(self.signal_name is not None), self._offset + self.seconds()], dtype=torch.float64)
        local = torch.cat([host.to(self._first_bad.device), self._first_bad.double().view(1)])
        stop_signal, self.elapsed, first_bad = _max_over_processes(local, self.accelerator.num_processes).tolist()
        first_bad = int(first_bad)
        if first_bad >= 0:
            raise NonFiniteLoss(
                f"non-finite loss at epoch {epoch + 1}, batch {first_bad}: the learning rate is likely too high "
                f"(lower optim.lr) or fp16 overflowed (use train.mixed_precision=bf16 or no); the newest complete "
                f"checkpoint is intact, resume from it with train.resume=auto after changing the setting")
        return "signal" if stop_signal else None

    # ---- signals
    def stop_requested(self) -> bool:
        """Whether any process has had a stop signal: one small all-reduce (evaluation asks every
        few batches, so that every process leaves it at the same batch). One process: no sync at all."""
        if self.accelerator.num_processes == 1:
            return self.signal_name is not None
        flag = torch.tensor([float(self.signal_name is not None)], device=self._first_bad.device)
        return bool(_max_over_processes(flag, self.accelerator.num_processes).item())

    @contextlib.contextmanager
    def signals(self):
        """SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 ask for a checkpoint at the next check; a second Ctrl-C
        quits at once. One that came during start-up (stops.listening heard it) counts as come now."""
        self.signal_name = self.signal_name or stops.received()
        stops.forget()
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signal_name is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_name = signal.Signals(signum).name
            self.accelerator.print(f"{self.signal_name} received: saving a checkpoint at the next step")

        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def raise_stopped(self, checkpoint_path) -> None:
        raise Preempted(f"{Preempted.lead}{self.signal_name}; checkpoint saved in {checkpoint_path}. "
                        f"Resume with the same command plus train.resume=auto")

    def raise_stopped_in_startup(self, newest) -> None:
        """A stop signal before the first step: nothing trained since `newest` (a checkpoint or None),
        so nothing is written (a new checkpoint would claim progress that was not made)."""
        kept = f"the newest checkpoint, {newest}, is the one to resume from" if newest else "no checkpoint exists yet"
        raise StoppedInStartup(f"{StoppedInStartup.lead}{self.signal_name}, before the first step: nothing to save "
                               f"({kept}); the same command plus train.resume=auto continues")
