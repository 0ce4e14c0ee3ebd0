"""Writing results: every file lands atomically (temporary file + rename), so a run killed
mid-write never leaves a half-written file that a later run or report would read back; it gets
the mode the user's umask gives any new file (a temporary file alone would be private, 0600);
and a full disk or a read-only folder becomes one `OutputError` line naming the path."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import shutil
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import OutputError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
MB = 2**20


def umask() -> int:
    """The process's umask, read without changing it where /proc allows (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def write_atomic(path: Path, data: str | bytes) -> None:
    path = Path(path)
    with guard_write(path, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def seal_folder(folder: Path) -> None:
    """Make a folder written by other libraries ready to be renamed into place: the modes the
    umask gives new files and folders (safetensors writes its files 0600), and every file, then
    every folder, flushed to disk, so that a node crash after the rename cannot leave a folder
    that looks complete with truncated files in it."""
    files, dirs = file_mode(), dir_mode()
    paths = [Path(folder), *Path(folder).rglob("*")]
    for path in paths:
        path.chmod(dirs if path.is_dir() else files)
    for path in sorted(paths, key=lambda p: p.is_dir()):  # files first, then the folders that name them
        _fsync(path)


def replace_folder(tmp: Path, final: Path) -> None:
    """Rename a sealed folder to `final`, replacing what was there, and flush the rename."""
    shutil.rmtree(final, ignore_errors=True)
    Path(tmp).rename(final)
    _fsync(Path(final).parent)


@contextlib.contextmanager
def exclusive(path: Path, waiting: str):
    """Held by one process at a time (flock on the file `path`; `waiting` is printed once by one
    that has to wait). The file goes when the holder is done: a process that waited on it finds it
    gone once it has the lock, and takes the new one. The lock ends with its holder, however it
    ends."""
    said = False
    while True:
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(waiting, file=sys.stderr, flush=True)
                said = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()  # removed while we waited: the next holder's is a new file
    try:
        yield
    finally:
        Path(path).unlink(missing_ok=True)
        lock.close()


@contextlib.contextmanager
def staged_folder(final: Path, needed: int | None = None):
    """`with staged_folder(final) as tmp:` write into `tmp`; when the block ends it is sealed and
    replaces `final` (see seal_folder, replace_folder). On any failure `tmp` is removed and `final`
    is untouched; a full disk or an unwritable folder is one OutputError line (guard_write)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a process killed mid-write
    try:
        with guard_write(tmp, needed):
            tmp.mkdir(parents=True)
            yield tmp
            seal_folder(tmp)
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj, allow_nan: bool = True) -> None:
    """`obj` as JSON; allow_nan=False: a NaN or infinity is a ValueError (JSON has none) instead of a
    file other readers refuse."""
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n")


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    text = str(error)  # safetensors and torch.save report the OS error inside their own types
    return "No space left on device" in text or "os error 28" in text or "StorageFull" in text


def space_error(path: Path, needed: int | None, exit_code: int = 1,
                what: str = "no space left on device writing") -> OutputError:
    need = f"about {max(needed, MB) / MB:,.0f} MB needed, " if needed else ""
    return OutputError(f"{what} {path} ({need}{free_bytes(path) / MB:,.0f} MB free); "
                       f"free space or point output_dir elsewhere", exit_code)


def as_output_error(error: BaseException, path: Path, needed: int | None = None) -> OutputError | None:
    """The one-line error for a write that failed for want of space or permission, else None."""
    if isinstance(error, OutputError):
        return error
    if _no_space(error):
        return space_error(path, needed)
    if isinstance(error, OSError) and error.errno in NOT_WRITABLE:
        why = "the file system is read-only" if error.errno == errno.EROFS else "permission denied"
        return OutputError(f"cannot write {getattr(error, 'filename', None) or path} ({why}); "
                           f"point output_dir at a folder you can write")
    return None


@contextlib.contextmanager
def guard_write(path: Path, needed: int | None = None):
    """Turn a full disk or an unwritable folder met while writing `path` into an OutputError."""
    try:
        yield
    except Exception as e:
        mapped = as_output_error(e, path, needed)
        if mapped is None:
            raise
        raise mapped from None


def check_space(path: Path, needed: int) -> None:
    """Fail before any work when `needed` bytes will not fit where `path` goes."""
    if free_bytes(path) < needed:
        raise space_error(path, needed, exit_code=2, what="not enough space for")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("transfer", "torch", "torchvision", "timm", "datasets", "accelerate", "evaluate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
