"""bcnb download against a server on 127.0.0.1 serving archives made here, and the weights."""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import tarfile
import tempfile
import threading
import traceback
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcnb import cli
from bcnb.data import download
from bcnb.data.download import Published, Source

SLIDES = (("B", "A", "100"), ("M", "DC", "200"), ("M", "LC", "200"))  # slide 200 under two tumour types
NAMES = [
    f"SOB_{kind}_{code}-14-{slide}-{mag}-00{i}.png"
    for kind, code, slide in SLIDES
    for mag in (40, 400)
    for i in (1, 2)
]
# The figures a small BreakHis-like archive must hold (12 images: 4 benign, 8 malignant).
SMALL = Source("breakhis", "BreaKHis_v1.tar.gz", "breakhis", Published(12, 4, 8, ("40X", "400X"), 3), url="")


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def _tar(names=NAMES, extra=()) -> bytes:
    """A BreakHis-like tar.gz: BreaKHis_v1/.../NAME for each name, plus ``extra`` members. The
    same bytes at every call: gzip's header time is fixed (tarfile's "w:gz" writes the clock's,
    and two calls a second apart differed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for seed, name in enumerate(names):
            data = _png(seed)
            info = tarfile.TarInfo(f"BreaKHis_v1/histology_slides/{name.split('-')[0]}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(buffer.getvalue(), mtime=0)


class Server:
    """Serves ``files`` by path; honours Range; can cut its first answer short."""

    def __init__(self, files: dict[str, bytes], cut_first_after: int = 0):
        self.files, self.cut, self.ranges = files, cut_first_after, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] else 0
                server.ranges.append(self.headers["Range"])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cut:  # the connection drops halfway, once
                    self.wfile.write(body[start : server.cut])
                    server.cut = 0
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def serve():
    servers = []

    def start(files, cut_first_after=0):
        servers.append(Server(files, cut_first_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_good_archive_is_checked_unpacked_and_recorded(serve, tmp_path):
    archive = _tar()
    server = serve({"/b.tar.gz": archive})
    folder = download.download(SMALL, tmp_path / "data", url=f"{server.url}/b.tar.gz")
    assert folder == tmp_path / "data" / "BreaKHis_v1" and len(list(folder.rglob("*.png"))) == 12
    record = json.loads((tmp_path / "data" / "download.json").read_text())
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()
    assert record["found"]["images"] == 12 and record["found"]["benign"] == 4
    assert record["found"]["patients_by_slide_number"] == 2 and record["found"]["patients_by_folder"] == 3
    assert "(3 published)" in download.patients_note(record["found"], SMALL.published)
    assert not [name for name in _leftovers(tmp_path / "data") if name.startswith(".")]


def test_an_interrupted_download_resumes_from_its_part_file(serve, tmp_path):
    archive = _tar()
    server = serve({"/b.tar.gz": archive}, cut_first_after=len(archive) // 3)
    with pytest.raises(ValueError, match="connection ended after .* run the same command again to resume"):
        download.download(SMALL, tmp_path, url=f"{server.url}/b.tar.gz")
    assert (tmp_path / "BreaKHis_v1.tar.gz.part").stat().st_size == len(archive) // 3
    download.download(SMALL, tmp_path, url=f"{server.url}/b.tar.gz")
    assert server.ranges == [None, f"bytes={len(archive) // 3}-"]  # the second asked for the rest only
    assert (tmp_path / "BreaKHis_v1.tar.gz").read_bytes() == archive


@pytest.mark.parametrize(
    "body,message",
    [
        (b"<!DOCTYPE html><html><body>Please log in</body></html>", "an HTML page, not the breakhis archive"),
        (
            _tar(NAMES[:-1]),
            r"not the published breakhis: images 11 \(published 12\), malignant 7 \(published 8\)",
        ),
    ],
)
def test_an_archive_that_is_not_the_data_set_is_refused_leaving_nothing(serve, tmp_path, body, message):
    server = serve({"/b.tar.gz": body})
    with pytest.raises(ValueError, match=message + ".*moved aside to BreaKHis_v1.tar.gz.bad"):
        download.download(SMALL, tmp_path / "data", url=f"{server.url}/b.tar.gz")
    # Nothing half-unpacked, and what was sent kept to look at, under a name no run reuses.
    assert _leftovers(tmp_path / "data") == ["BreaKHis_v1.tar.gz.bad"]


def _link(name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def _escaping(kind: str) -> list:
    """Members that would write or point outside the folder once unpacked."""
    if kind in ("dotdot", "absolute"):
        info = tarfile.TarInfo("BreaKHis_v1/../../evil.txt" if kind == "dotdot" else "/tmp/evil.txt")
        info.size = 4
        return [(info, b"evil")]
    if kind == "link":
        return [_link("BreaKHis_v1/link", "../../../etc/passwd")]
    # "up" points inside (to the top of the archive), so each member below looks inside when
    # read as text: only following "up" as the system will shows it leads out.
    up = _link("BreaKHis_v1/up", "..")
    if kind == "link-to-link":
        return [up, _link("BreaKHis_v1/out", "up/../evil.txt")]
    info = tarfile.TarInfo("BreaKHis_v1/up/../evil.txt")  # a file written through the link
    info.size = 4
    return [up, (info, b"evil")]


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link", "link-to-link", "file-through-link"])
def test_a_member_escaping_the_folder_is_refused(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar(extra=_escaping(kind)))
    with pytest.raises(ValueError, match="(would land|points) outside"):
        download.download(SMALL, tmp_path / "data", archive=archive)
    assert _leftovers(tmp_path / "data") == [] and not (tmp_path / "evil.txt").exists()


def test_a_link_through_another_link_is_refused_in_one_line(tmp_path, capsys):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar(extra=_escaping("link-to-link")))
    before = archive.read_bytes()
    assert _cli("download", "breakhis", "--to", tmp_path / "data", "--archive", archive) == 2
    assert _one_error_line(capsys) == (
        f"bcnb: error: {archive}: link BreaKHis_v1/out points outside {tmp_path / 'data'} "
        "(to up/../evil.txt; refused)"
    )
    assert archive.read_bytes() == before and _leftovers(tmp_path / "data") == []


def test_a_zip_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("../evil.txt", b"evil")
    with pytest.raises(ValueError, match=r"member \.\./evil.txt would land outside"):
        download.download(SMALL, tmp_path / "data", archive=archive)


def test_the_command_line_says_one_line(serve, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(download.SOURCES, "breakhis", dataclasses.replace(SMALL, url=""))
    server = serve({})
    assert (
        cli.main(["download", "breakhis", "--to", str(tmp_path), "--url", f"{server.url}/missing.tar.gz"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bcnb: error: --url: {server.url}/missing.tar.gz answered HTTP 404 Not Found"]
    assert (
        cli.main(["download", "breakhis", "--to", str(tmp_path), "--url", "http://127.0.0.1:9/x.tar.gz"]) == 2
    )
    assert "cannot reach http://127.0.0.1:9/x.tar.gz" in capsys.readouterr().err
    assert cli.main(["download", "idc", "--to", str(tmp_path)]) == 2
    assert "Kaggle, which needs an account" in capsys.readouterr().err
    archive = tmp_path / "local.tar.gz"
    archive.write_bytes(_tar())
    assert cli.main(["download", "breakhis", "--to", str(tmp_path / "d"), "--archive", str(archive)]) == 0
    assert "12 images checked against the published figures" in capsys.readouterr().err


def _cli(*args) -> int:
    return cli.main([str(arg) for arg in args])


def _one_error_line(capsys) -> str:
    """The command's one error line on stderr (besides its progress lines)."""
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1, errors
    return errors[0]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("bcnb: error:", "Traceback"))]


@pytest.fixture
def small_breakhis(monkeypatch):
    """``bcnb download breakhis`` expects the small archive's figures, and has no URL of its own."""
    monkeypatch.setitem(download.SOURCES, "breakhis", SMALL)


def test_a_truncated_download_is_set_aside_and_fetched_again(serve, tmp_path, capsys, small_breakhis):
    archive = _tar()
    server = serve({"/cut.tar.gz": archive[: len(archive) // 2], "/b.tar.gz": archive})
    to = tmp_path / "data"
    assert _cli("download", "breakhis", "--to", to, "--url", f"{server.url}/cut.tar.gz") == 2
    assert _one_error_line(capsys) == (
        f"bcnb: error: {to / 'BreaKHis_v1.tar.gz'}: damaged or truncated archive (Compressed file ended "
        "before the end-of-stream marker was reached); moved aside to BreaKHis_v1.tar.gz.bad: the next "
        "run downloads it again"
    )
    assert _leftovers(to) == ["BreaKHis_v1.tar.gz.bad"]
    assert _cli("download", "breakhis", "--to", to, "--url", f"{server.url}/b.tar.gz") == 0
    assert (to / "BreaKHis_v1.tar.gz").read_bytes() == archive and len(list(to.rglob("*.png"))) == 12


def test_a_truncated_archive_of_ones_own_is_named_and_kept(tmp_path, capsys, small_breakhis):
    archive = tmp_path / "mine.tar.gz"
    archive.write_bytes(_tar()[:1000])
    assert _cli("download", "breakhis", "--to", tmp_path / "data", "--archive", archive) == 2
    assert _one_error_line(capsys).startswith(f"bcnb: error: {archive}: damaged or truncated archive (")
    assert archive.read_bytes() == _tar()[:1000] and _leftovers(tmp_path / "data") == []


def test_a_to_that_is_a_file_is_refused(tmp_path, capsys, small_breakhis):
    archive, to = tmp_path / "a.tar.gz", tmp_path / "notes.txt"
    archive.write_bytes(_tar())
    to.write_text("mine")
    assert _cli("download", "breakhis", "--to", to, "--archive", archive) == 2
    assert _one_error_line(capsys) == f"bcnb: error: --to: {to} is a file, expected a folder"
    assert to.read_text() == "mine"


def test_a_second_download_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys, small_breakhis):
    from bcnb.run.lock import RunLock

    archive, to = tmp_path / "a.tar.gz", tmp_path / "data"
    archive.write_bytes(_tar())
    with RunLock(to, "bcnb download"):  # the first download, still running
        assert _cli("download", "breakhis", "--to", to, "--archive", archive) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"bcnb: error: {to} is being written by bcnb download (process {os.getpid()} ")
        assert not to.exists()
    assert _cli("download", "breakhis", "--to", to, "--archive", archive) == 0  # once it is done


def _cli_in_child(*args, unprivileged: bool = False, file_limit: int = 0) -> tuple[int, list[str]]:
    """Exit status and error lines (a traceback's first included) of ``bcnb ARGS`` in a forked child.

    Forked rather than started anew since this Python lives in root's own folder, which the
    unprivileged user cannot run (tests/test_scan.py does the same).
    """
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            with os.fdopen(writing, "w") as pipe, contextlib.redirect_stderr(pipe):
                try:
                    _restrict_this_process(unprivileged, file_limit)
                    status = cli.main([str(arg) for arg in args])
                except BaseException:
                    traceback.print_exc()
        finally:
            os._exit(status)
    os.close(writing)
    with os.fdopen(reading) as answer:
        stderr = answer.read()
    _, code = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(code), _errors(stderr)


def _restrict_this_process(unprivileged: bool, file_limit: int) -> None:
    """Drop root (which writes any folder whatever its mode) for nobody; limit files to
    ``file_limit`` bytes, so that a write past it fails (EFBIG) as on a full disk."""
    if unprivileged and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    if file_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))


@pytest.fixture
def shared_tmp():
    """A folder an unprivileged user can reach (pytest's own is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="bcnb-download-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o755)  # so that a user who is not root can remove it
    shutil.rmtree(folder)


@pytest.mark.parametrize("where", ["to", "parent"])
def test_a_folder_that_cannot_be_written_is_named(shared_tmp, where):
    archive = shared_tmp / "a.tar.gz"
    archive.write_bytes(_tar())
    locked = shared_tmp / "locked"
    locked.mkdir()
    to = locked if where == "to" else locked / "data"
    locked.chmod(0o555)
    status, lines = _cli_in_child("download", "breakhis", "--to", to, "--archive", archive, unprivileged=True)
    expected = f"--to: cannot write in {locked} (Permission denied)"  # the folder that exists
    assert (status, lines) == (2, [f"bcnb: error: {expected}"])
    assert list(locked.iterdir()) == [] and not (shared_tmp / ".locked.lock").exists()


def test_a_full_disk_keeps_the_part_to_resume(serve, tmp_path, capsys, small_breakhis):
    archive = _tar()
    server = serve({"/b.tar.gz": archive})
    to, limit = tmp_path / "data", len(archive) // 2
    status, lines = _cli_in_child(
        "download", "breakhis", "--to", to, "--url", f"{server.url}/b.tar.gz", file_limit=limit
    )
    part = to / "BreaKHis_v1.tar.gz.part"
    assert (status, lines) == (
        2,
        [
            f"bcnb: error: {part}: cannot write (File too large); the part downloaded so far is kept: "
            "free some space and run the same command again to resume"
        ],
    )
    assert part.read_bytes() == archive[:limit]
    assert _cli("download", "breakhis", "--to", to, "--url", f"{server.url}/b.tar.gz") == 0
    assert server.ranges == [None, f"bytes={limit}-"]  # the second asked for the rest only
    assert (to / "BreaKHis_v1.tar.gz").read_bytes() == archive


# --------------------------------------------------------------------------- weights
@pytest.fixture
def keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_importing_a_weights_file_checks_its_md5(tmp_path, keras_cache, monkeypatch):
    from bcnb.model import backbones, weights

    name = backbones.get_backbone("resnet50v2").weights_file(224)
    good = tmp_path / "usb" / name
    good.parent.mkdir()
    good.write_bytes(b"\x89HDF\r\n\x1a\n" + b"weights" * 100)
    wrong = tmp_path / name
    wrong.write_bytes(good.read_bytes()[:-10])  # truncated
    spec = dataclasses.replace(
        backbones.BACKBONES["resnet50v2"], md5=hashlib.md5(good.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(backbones.BACKBONES, "resnet50v2", spec)
    with pytest.raises(
        ValueError, match=f"{wrong}: md5 .* expected .* \\(a wrong or truncated file\\); refused"
    ):
        weights.import_weights(wrong)
    assert not keras_cache.exists()
    assert weights.import_weights(good) == keras_cache / name
    assert {row["backbone"]: row["status"] for row in weights.status()}[
        "resnet50v2"
    ] == "present and verified"
    with pytest.raises(FileNotFoundError, match="usb: no such file"):
        weights.import_weights(tmp_path / "usb")  # a folder is not a weights file
    (tmp_path / "other.h5").write_bytes(b"x")
    with pytest.raises(ValueError, match="other.h5: not a file name Keras gives ImageNet weights"):
        weights.import_weights(tmp_path / "other.h5")


def test_fetching_weights_goes_through_keras_cache_and_md5(serve, keras_cache, monkeypatch):
    from bcnb.model import backbones, weights

    body = b"\x89HDF\r\n\x1a\n" + b"w" * 1000
    spec = backbones.BACKBONES["vgg19"]
    server = serve({"/" + spec.weights_file(224): body})
    fetched = dataclasses.replace(
        spec,
        weights_url=lambda size: f"{server.url}/{spec.weights_file(size)}",
        md5=hashlib.md5(body).hexdigest(),
    )
    monkeypatch.setitem(backbones.BACKBONES, "vgg19", fetched)
    assert weights.fetch_weights("vgg19").read_bytes() == body
    assert {row["backbone"]: row["status"] for row in weights.status()}["vgg19"] == "present and verified"


def _keras_h5(model, path: Path) -> Path:
    """``model``'s weights in the legacy .h5 layout Keras' ImageNet files use."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as stored:
        save_weights_to_hdf5_group(stored, model)
    return path


def test_a_weights_file_without_a_published_checksum_is_checked_by_its_layers(tmp_path, keras_cache, capsys):
    import keras

    from bcnb.model import backbones, weights

    spec = backbones.get_backbone("mobilenetv2")
    assert spec.md5 is None  # Keras records none: the case this test is about
    name, size = spec.weights_file(96), 96

    def mobilenet(alpha=1.0):
        return keras.applications.MobileNetV2(
            alpha=alpha, include_top=False, weights=None, input_shape=(size, size, 3)
        )

    base = mobilenet()
    weighted = sum(1 for layer in base.layers if layer.weights)
    twelve = keras.Sequential([keras.Input((4,)), *(keras.layers.Dense(2) for _ in range(12))])
    few = _keras_h5(twelve, tmp_path / "few" / name)
    with pytest.raises(
        ValueError,
        match=f"{few}: holds 12 weighted layers, MobileNetV2 without its top has {weighted}; refused",
    ):
        weights.import_weights(few)
    narrow = _keras_h5(mobilenet(alpha=0.5), tmp_path / "narrow" / name)  # same layers, other shapes
    with pytest.raises(ValueError, match=f"{narrow}: does not load into MobileNetV2 without its top"):
        weights.import_weights(narrow)
    signature_only = tmp_path / "junk" / name
    signature_only.parent.mkdir()
    signature_only.write_bytes(b"\x89HDF\r\n\x1a\n" + b"weights" * 100)
    assert cli.main(["weights", "import", str(signature_only)]) == 2
    assert _one_error_line(capsys) == (
        f"bcnb: error: {signature_only}: not an HDF5 weights file (or a damaged one); refused"
    )
    assert not keras_cache.exists()
    good = _keras_h5(base, tmp_path / "usb" / name)
    assert weights.import_weights(good) == keras_cache / name
    rows = {row["backbone"]: row["status"] for row in weights.status(size)}
    assert rows["mobilenetv2"] == "present, not verified (no published checksum)"
    assert rows["resnet50v2"] == "missing"
