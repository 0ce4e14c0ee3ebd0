"""The run folder: one run at a time, never trained over, resumed only with its own settings.

A run holds an exclusive POSIX lock (`lockf`) on `output_dir/.lock` for its whole life. The kernel
releases it when the process ends in any way, `kill -9` included, so a lock is never stale; unlike
`flock`, it is not inherited by forked data-loader workers, which can outlive a killed parent by
seconds. The file names the holder (pid, host, start time) for the message a second run gets; a
folder that the lock alone created is removed again, so a run refused for bad data leaves nothing.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from ..config import flatten
from ..errors import ConfigError, RunError
from ..files import file_mode, guard_write
from ..records import is_finished

LOCK_FILE = ".lock"
# Settings that cannot change a run's numbers: a resume may change them (and the run records it).
# Everything else (data, model, optim, epochs, batch size, precision, seed, budget, ...) is refused.
NEUTRAL = frozenset({"output_dir", "train.resume", "data.num_workers", "data.cache", "data.keep_decoded",
                     "data.check_images",
                     "train.keep_checkpoints", "train.checkpoint_every", "train.log_with"})


def check_fresh(out: Path, resumable: bool) -> None:
    """Never train over a finished run or someone else's checkpoints."""
    if is_finished(out) or (out / "checkpoints").exists():
        hint = "" if resumable else ", pass train.resume=auto to continue it"
        raise RunError(f"output_dir {out} already holds a run; choose another output_dir{hint}, "
                       f"or delete the folder to start over")


@contextlib.contextmanager
def locked(out: Path, hold: bool = True):
    """Hold `out`'s run lock for the duration (only where `hold`: the main process); a second
    run into the same folder is refused with one line naming the first."""
    if not hold:
        yield
        return
    out = Path(out)
    created = not out.exists()
    with guard_write(out / LOCK_FILE):
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, file_mode())
    holding = False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: held by another process
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunError(f"output_dir {out} is in use by another run ({holder}); wait for it to end, "
                              f"or choose another output_dir") from None
        holding = True
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        yield
    finally:
        if holding and created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            (out / LOCK_FILE).unlink()  # nothing else was written: leave no empty run folder behind
            out.rmdir()
        os.close(fd)  # releases the lock


def check_records(out: Path, records: dict[str, dict]) -> None:
    """On resume: the images held out for validation, or kept for training, must be the ones the
    run started with (the source's files may have changed since)."""
    for name, record in records.items():
        saved = Path(out) / name
        if saved.is_file() and json.loads(saved.read_text()) != record:
            raise RunError(f"train.resume: the images listed in {saved} differ from the ones the source gives "
                           f"now (the source changed); start a fresh run in another output_dir")


def setting_changes(saved: dict, requested: dict) -> dict[str, tuple]:
    """Flat key -> (saved, requested) for every setting that differs."""
    old, new = flatten(saved), flatten(requested)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume(saved: dict | None, requested: dict, out: Path) -> dict[str, tuple]:
    """Refuse a resume whose settings would change the run's result, naming each such key;
    return the changes that cannot (worker count, cache, ...), which the run records.
    `saved` None: a checkpoint from before settings were recorded, taken on trust."""
    if saved is None:
        return {}
    changes = setting_changes(saved, requested)
    refused = {k: v for k, v in changes.items() if k not in NEUTRAL}
    if refused:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(f"train.resume: {out} was started with other settings ({listed}); resume it with its own "
                          f"(--config {out / 'config.yaml'} train.resume=auto), or start a fresh run in another "
                          f"output_dir")
    return {k: v for k, v in changes.items() if k not in ("train.resume", "output_dir")}
