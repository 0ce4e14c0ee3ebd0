"""Where a run's time goes outside the training loop: `metrics.json` → `phase_seconds`.

    launch            process start to `run` (interpreter, imports, settings); measured by the
                      command line (`cli`), 0 for a run started from Python (a notebook, a test)
    data              listing the source, checking every image, splits and subsets
    model             building the model and loading its weights
    cache_decode      decoding the data set into memory (data.cache=memory)
    lr_find           the LR range test (optim.lr=find)
    start_outputs     config.yaml and split records (the figures are drawn in a child process: drawer.py)
    first_step        the run's first optimizer step (loader start, cuDNN autotuning, compiling)
    checkpoints       every checkpoint, together, as the training path paid for it: copying the
                      states to host memory (epoch checkpoints are written in the background),
                      waiting for the previous write, a stop signal's checkpoint written inline
    checkpoint_wait   of which: waiting for a background write still in flight (the next
                      checkpoint, the end of the run)
    epoch_start       loader start to the first batch of each epoch, summed (persistent workers:
                      about 0 after the first)
    final_evaluation  the evaluation after the loop, when no epoch ran one (train.epochs=0, resumed at the end)
    final_outputs     predictions, model/ and its card, and waiting for the final figures
                      (metrics.json itself comes last)
Each process measures its own; the main process's are written.
"""
from __future__ import annotations

import contextlib
import time

import psutil


def process_age() -> float:
    """Seconds since this process started (0.0 where the platform does not say)."""
    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except (psutil.Error, OSError):  # a missing figure must not stop a run
        return 0.0


class Phases:
    """`launch`: seconds from process start to now, for a run the command line started."""

    def __init__(self, launch: float = 0.0):
        self.seconds: dict[str, float] = {"launch": round(launch, 3)}
        self._start = time.perf_counter() - launch

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)

    def since_launch(self) -> float:
        """Seconds from process start to now."""
        return time.perf_counter() - self._start
