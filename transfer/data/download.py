"""Fetch and unpack a dataset archive so that a half-done job is never mistaken for a dataset.

The archive is downloaded to `<name>.part` (resumed with an HTTP Range request after a
break), renamed when its size checks out, unpacked into a temporary sibling folder, and only
then renamed to `data.root`. Members are checked before anything is written: only regular
files and folders inside the target; links, devices, absolute paths and `..` are refused.
"""
from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import DataError
from ..files import dir_mode, exclusive, umask

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
RETRIES = 4


def fetch_dataset(url: str, root: Path, sha256: str | None = None) -> Path:
    """Make `root` hold the dataset in the archive at `url` (http(s) URL or local path). Runs started
    side by side (by hand, or jobs of a cluster) fetch it once: the first takes a lock next to
    `root`, the others wait for it and find `root` there."""
    root = Path(root)
    name = url.rstrip("/").split("/")[-1].split("?")[0]
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"data.url {url} is not a .tgz, .tar.gz, .tar or .zip archive")
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(root.parent / f".{root.name}.fetch.lock", f"waiting for another process that is fetching {root}"):
        if not root.exists():  # else fetched by the process that held the lock before
            _fetch(url, name, root, sha256)
    return root


def _fetch(url: str, name: str, root: Path, sha256: str | None) -> None:


    if url.startswith(("http://", "https://")):
        archive = root.parent / name
        if not archive.exists():  # a finished download is reused by the next run
            download(url, archive)
    else:
        archive = Path(url.removeprefix("file://")).expanduser()
        if not archive.is_file():
            raise DataError(f"data.url {url} is neither an http(s) URL nor an existing archive file")
    if sha256 is not None:
        check_sha256(archive, sha256, remove=url.startswith(("http://", "https://")))
    extract(archive, root)


def download(url: str, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, RETRIES + 1):
        try:
            _download_once(url, part)
            part.replace(dest)
            return
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # OSError: connection, timeout
            if attempt == RETRIES:
                raise DataError(f"download of {url} failed after {RETRIES} tries ({e}); check the network, "
                                f"or download it yourself and set data.url to the local file") from None
            time.sleep(2 ** attempt)


def check_sha256(archive: Path, expected: str, remove: bool) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        if remove:  # a bad download must not be reused by the next run
            archive.unlink()
        raise DataError(f"archive {archive} has sha256 {digest.hexdigest()}, expected data.sha256={expected}; "
                        f"{'it was deleted, run again to download it anew' if remove else 'check the file'}")


def _download_once(url: str, part: Path) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # server ignored the Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=f"download {part.name[:-5]}") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"got {size} of {total} bytes")


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"archive {archive} has an unsafe member path {name!r}; refusing to extract it")
    return path


def _check_members(archive: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_name(info.filename, archive)
                mode = info.external_attr >> 16
                if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
                    raise DataError(f"archive {archive} member {info.filename!r} is a link or special file; "
                                    f"refusing to extract it")
        return
    try:
        with tarfile.open(archive) as tf:
            for member in tf:
                _safe_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"archive {archive} member {member.name!r} is a link or special file; "
                                    f"refusing to extract it")
    except tarfile.TarError as e:
        raise DataError(f"archive {archive} cannot be read ({e}); delete it and fetch it again") from None


def _within_umask(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, and the archive's modes limited by the umask, as `tar` does for a
    user (zip members get the umask's modes by themselves)."""
    member = tarfile.data_filter(member, path)
    if member is not None and member.mode is not None:
        member = member.replace(mode=member.mode & ~umask(), deep=False)
    return member


def extract(archive: Path, root: Path) -> None:
    """Unpack into a temporary folder beside `root`, then rename the dataset folder into place."""
    _check_members(archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter=_within_umask)
        dataset = _dataset_folder(tmp)
        if dataset is None:
            raise DataError(f"archive {archive} holds no folder with train/ and val/ inside; "
                            f"it is not an image-folder dataset")
        dataset.chmod(dir_mode())  # mkdtemp's folder is private; the data set is not
        dataset.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dataset_folder(tmp: Path) -> Path | None:
    """The extracted folder that holds train/ and val/: the top itself or one level down."""
    for candidate in [tmp, *sorted(p for p in tmp.iterdir() if p.is_dir())]:
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    return None
