"""data.url: archives from a local path or an http server on loopback, unpacked safely."""
import contextlib
import functools
import http.server
import io
import tarfile
import threading
import zipfile

import pytest

from transfer.errors import DataError
from transfer.data.sources import check_layout
from transfer.data.download import fetch_dataset


def make_tgz(folder, path, top="imagewoof2-160"):
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=top)
    return path


def test_local_tgz_is_extracted_into_root(image_folder, tmp_path):
    archive = make_tgz(image_folder, tmp_path / "shapes.tgz")
    root = tmp_path / "data" / "shapes"
    fetch_dataset(str(archive), root)
    assert check_layout(root) == ["circle", "square", "triangle"]
    assert [p.name for p in root.parent.iterdir()] == ["shapes"]  # no temporary leftovers


def test_runs_side_by_side_fetch_once(image_folder, tmp_path, capsys):
    import fcntl

    archive = make_tgz(image_folder, tmp_path / "shapes.tgz")
    root = tmp_path / "data" / "shapes"
    root.parent.mkdir()
    with open(root.parent / ".shapes.fetch.lock", "a") as held:  # another process is fetching it
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=fetch_dataset, args=(str(archive), root))
        waiting.start()
        for _ in range(100):
            if "waiting for another process that is fetching" in capsys.readouterr().err:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the second fetch did not wait")
        assert waiting.is_alive() and not root.exists()
        (root / "train").mkdir(parents=True)  # the other process's result
    waiting.join(10)
    assert not waiting.is_alive() and [p.name for p in root.iterdir()] == ["train"]  # found, not fetched again
    assert [p.name for p in root.parent.iterdir()] == ["shapes"]


def test_local_zip_without_top_folder(image_folder, tmp_path):
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in image_folder.rglob("*.png"):
            zf.write(f, f.relative_to(image_folder))
    fetch_dataset(str(archive), tmp_path / "d")
    assert check_layout(tmp_path / "d") == ["circle", "square", "triangle"]


def test_http_download_lands_atomically_and_is_reused(image_folder, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_tgz(image_folder, served / "imagewoof2-160.tgz")
    with serve(served, http.server.SimpleHTTPRequestHandler) as server:
        url = f"http://127.0.0.1:{server.server_port}/imagewoof2-160.tgz"
        root = tmp_path / "data" / "imagewoof2-160"
        fetch_dataset(url, root)
    assert check_layout(root) == ["circle", "square", "triangle"]
    assert (root.parent / "imagewoof2-160.tgz").stat().st_size == (served / "imagewoof2-160.tgz").stat().st_size
    assert not list(root.parent.glob("*.part"))
    # a second fetch (e.g. after the folder was deleted) reuses the archive: the server is gone
    import shutil
    shutil.rmtree(root)
    fetch_dataset(url, root)
    assert check_layout(root)


def tar_with(path, member: tarfile.TarInfo, data=b""):
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../evil.txt"),
    tarfile.TarInfo("/tmp/evil.txt"),
    (lambda m: (setattr(m, "type", tarfile.SYMTYPE), setattr(m, "linkname", "/etc/passwd"), m)[-1])(
        tarfile.TarInfo("data/train/a/link.png")),
    (lambda m: (setattr(m, "type", tarfile.CHRTYPE), m)[-1])(tarfile.TarInfo("data/dev")),
], ids=["traversal", "absolute", "symlink", "device"])
def test_unsafe_archives_are_refused_and_nothing_is_written(tmp_path, member):
    if member.isfile():
        member.size = 4
    archive = tar_with(tmp_path / "evil.tar", member, b"evil" if member.isfile() else b"")
    target = tmp_path / "out" / "data"
    with pytest.raises(DataError, match="refusing to extract"):
        fetch_dataset(str(archive), target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("name, mode", [("../evil.txt", 0o100644), ("data/train/a/link.png", 0o120777)],
                         ids=["traversal", "symlink"])
def test_unsafe_zip_archives_are_refused(tmp_path, name, mode):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        zf.writestr(info, "/etc/passwd")
    target = tmp_path / "out" / "data"
    with pytest.raises(DataError, match="refusing to extract"):
        fetch_dataset(str(archive), target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_missing_local_archive_and_non_archive_url(tmp_path):
    with pytest.raises(DataError, match="neither an http"):
        fetch_dataset(str(tmp_path / "none.tgz"), tmp_path / "d")
    with pytest.raises(DataError, match="not a .tgz"):
        fetch_dataset("https://example.com/data.rar", tmp_path / "d")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves byte ranges, and drops the first full response half-way, like a flaky network."""
    requests = []

    def do_GET(self):
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        header = self.headers.get("Range")
        RangeHandler.requests.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = data[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if len(RangeHandler.requests) == 1:
            self.wfile.write(body[: len(body) // 2])  # then the connection breaks
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder, handler):
    """An HTTP server on loopback for the duration; closed even when the test fails, so a
    regression fails at once instead of hanging on an open socket."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.timeout = 30
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_broken_download_resumes_with_a_range_request(image_folder, tmp_path, monkeypatch):
    import hashlib

    import transfer.data.download as download
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    served = tmp_path / "served"
    served.mkdir()
    archive = make_tgz(image_folder, served / "shapes.tgz")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(RangeHandler, "requests", [])  # this test's requests only
    with serve(served, RangeHandler) as server:
        fetch_dataset(f"http://127.0.0.1:{server.server_port}/shapes.tgz", tmp_path / "d" / "shapes", sha256=sha)
    assert RangeHandler.requests[0] is None and RangeHandler.requests[1].startswith("bytes=")
    assert int(RangeHandler.requests[1].split("=")[1].rstrip("-")) > 0  # continued, not restarted
    assert check_layout(tmp_path / "d" / "shapes")


def test_checksum_mismatch_is_refused_and_the_bad_download_removed(image_folder, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    make_tgz(image_folder, served / "shapes.tgz")
    with serve(served, http.server.SimpleHTTPRequestHandler) as server:
        with pytest.raises(DataError, match="sha256 .* expected data.sha256=0{64}; it was deleted"):
            fetch_dataset(f"http://127.0.0.1:{server.server_port}/shapes.tgz", tmp_path / "d" / "shapes",
                          sha256="0" * 64)
    assert list((tmp_path / "d").iterdir()) == []
