"""The stop signals, heard from the moment a run's process starts.

SIGTERM (a kill; SLURM's preemption), SIGINT (Ctrl-C) and SIGUSR1/SIGUSR2 (the warning SLURM's
--signal and submitit send ahead of a time limit or a preemption) each ask a run to write a
checkpoint and stop. Training handles them (training.watch); before it starts (the data checks,
the decoded cache, the model build, the LR range test: seconds to minutes), `listening` remembers the
first one so that the run acts on it at its first safe point instead of dying there (SIGTERM's and
SIGUSR's default) or never hearing it (a signal ignored by the shell of a SLURM job)."""
from __future__ import annotations

import contextlib
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_received: list[str] = []


@contextlib.contextmanager
def listening():
    """Remember the first SIGTERM, SIGUSR1 or SIGUSR2 while inside (the main thread only; the
    handlers before are put back after). Ctrl-C keeps quitting at once: before the first step
    there is nothing to save."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    forget()

    def remember(signum, frame):
        if not _received:
            _received.append(signal.Signals(signum).name)
            os.write(2, f"{_received[0]} received during start-up: stopping before the first step\n".encode())

    before = {stop: signal.signal(stop, remember) for stop in STOP_SIGNALS if stop != signal.SIGINT}
    try:
        yield
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)
        forget()


def received() -> str | None:
    """The first stop signal heard while `listening` (its name), or None."""
    return _received[0] if _received else None


def forget() -> None:
    """Hear the next one afresh (a process that runs several runs: the tests)."""
    _received.clear()
