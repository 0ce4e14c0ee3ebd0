"""The run's figures, drawn in a child process while the run goes on.

matplotlib (about 0.6 s to import) and the figures (about 1 s for a run's seven) would otherwise
sit between launch and the first step and between the last evaluation and exit. On Linux the run
forks one drawer before training: it draws `plots/samples.png` at once, then waits for the final
figures, which it draws while the run writes the predictions and the model. The run waits for it
before writing `metrics.json` (the mark of a finished run), so every figure is complete and
written atomically by then; a drawer that fails reports its one-line error to the run, which
raises it. Where fork is not available (macOS, Windows) or the drawer is gone, the same
functions run in the run's own process.

The child never touches the GPU: figures are drawn from host arrays and from the datasets it
shares with the run (copy on write). It runs at a lower priority (nice 10), so on a busy machine
the training process comes first; it ignores Ctrl-C and SIGTERM (the run handles them) and ends when the run
does, however the run ends: the kernel sends it SIGKILL when its parent dies (Linux's parent-death
signal), and elsewhere its pipe closes (the child holds no copy of the run's end of it).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys

from ..errors import OutputError, first_line
from ..files import as_output_error
from ..processes import die_with_parent
from ..stops import STOP_SIGNALS
from .outputs import draw_curves, draw_evaluation, draw_final, draw_samples



def _serve(connection, parent_end, parent_pid: int, context: dict) -> None:
    die_with_parent(parent_pid)
    parent_end.close()  # else this process holds the run's end open and never sees end-of-file
    for stop in STOP_SIGNALS:  # the run's (sent to the group, say)
        signal.signal(stop, signal.SIG_IGN)
    os.nice(10)  # background work: on a busy machine the training process comes first
    try:
        while True:
            try:
                job = connection.recv()
            except (EOFError, OSError):  # the run is gone
                break
            if job is None:
                break
            name, kwargs = job
            try:
                JOBS[name](**context, **kwargs, in_drawer=True)
                connection.send(None)
            except BaseException as e:  # noqa: BLE001 - reported to the run, which raises it
                connection.send(_one_line(e))
    finally:
        connection.close()
        os._exit(0)  # no atexit handlers of the parent (trackers, accelerate) in the child


def _one_line(error: BaseException) -> str:
    if isinstance(error, _Reported):
        return str(error)
    if isinstance(error, OSError):
        mapped = as_output_error(error, error.filename or "a figure")
        if mapped is not None:
            return str(mapped)
    return f"drawing a figure failed: {type(error).__name__}: {first_line(error)}"


def _samples(out, train_ds, classes, **_):
    draw_samples(out, train_ds, classes)


def _final(out, val_ds, metrics, final, names, in_drawer: bool = False, **_):
    if not in_drawer:  # in the run's own process: one after the other
        draw_final(out, metrics, final, names, val_ds)
        return
    # in the drawer, with matplotlib imported: a fork of it draws the evaluation's figures while it draws
    # the curves (0.5 s of the 1 s between the last evaluation and metrics.json, on 2 cores)
    read, write, drawer = *os.pipe(), os.getpid()
    pid = os.fork()
    if pid == 0:  # never returns: it ends here, whatever happens
        try:
            die_with_parent(drawer)
            os.close(read)
            try:
                draw_evaluation(out, final, names, val_ds)
                message = b""
            except BaseException as e:  # noqa: BLE001 - reported through the drawer
                message = _one_line(e).encode()
            os.write(write, message)
        finally:
            os._exit(0)
    os.close(write)
    try:
        draw_curves(out, metrics)
    finally:
        with os.fdopen(read, "rb") as pipe:
            error = pipe.read().decode()
        os.waitpid(pid, 0)
    if error:
        raise _Reported(error)


class _Reported(Exception):
    """An error the evaluation's drawer already made one line."""


JOBS = {"samples": _samples, "final": _final}


class Drawer:
    """`submit(name, **kwargs)` a job; `wait()` for all of them, raising the first failure."""

    def __init__(self, enabled: bool, **context):
        self.context, self.process, self.pending, self.errors = context, None, 0, []
        if enabled and sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("fork")
            self.connection, child = ctx.Pipe()
            self.process = ctx.Process(target=_serve, args=(child, self.connection, os.getpid(), context),
                                       name="transfer-drawer", daemon=True)
            self.process.start()
            child.close()

    def __enter__(self) -> "Drawer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, name: str, **kwargs) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.connection.send((name, kwargs))
                self.pending += 1
                return
            except (BrokenPipeError, OSError):
                self.process = None
        JOBS[name](**self.context, **kwargs)  # in this process

    def wait(self) -> None:
        """Every submitted figure written; raises OutputError with the drawer's first error."""
        while self.pending:
            try:
                error = self.connection.recv()
            except (EOFError, OSError):
                self.errors.append("the figure-drawing process died before finishing; rerun to draw the figures")
                break
            self.pending -= 1
            if error:
                self.errors.append(error)
        self.pending = 0
        if self.errors:
            raise OutputError(self.errors[0])

    def close(self) -> None:
        if self.process is not None:
            try:
                self.connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
            self.connection.close()
            self.process = None
