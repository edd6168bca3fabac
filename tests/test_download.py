"""bcnb download against a server on 127.0.0.1 serving archives made here, and the weights."""

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcnb import cli, download
from bcnb.download import Published, Source

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
    """A BreakHis-like tar.gz: BreaKHis_v1/.../NAME for each name, plus ``extra`` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for seed, name in enumerate(names):
            data = _png(seed)
            info = tarfile.TarInfo(f"BreaKHis_v1/histology_slides/{name.split('-')[0]}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


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
    with pytest.raises(ValueError, match=message):
        download.download(SMALL, tmp_path / "data", url=f"{server.url}/b.tar.gz")
    unpacked = [name for name in _leftovers(tmp_path / "data") if name not in ("BreaKHis_v1.tar.gz",)]
    assert unpacked == []  # nothing half-unpacked (a counted archive stays, to look at)


def _escaping(kind: str):
    if kind == "dotdot":
        info = tarfile.TarInfo("BreaKHis_v1/../../evil.txt")
        info.size = 4
        return info, b"evil"
    if kind == "absolute":
        info = tarfile.TarInfo("/tmp/evil.txt")
        info.size = 4
        return info, b"evil"
    info = tarfile.TarInfo("BreaKHis_v1/link")
    info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    return info, None


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link"])
def test_a_member_escaping_the_folder_is_refused(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar(extra=[_escaping(kind)]))
    with pytest.raises(ValueError, match="(would land|points) outside"):
        download.download(SMALL, tmp_path / "data", archive=archive)
    assert _leftovers(tmp_path / "data") == [] and not (tmp_path / "evil.txt").exists()


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


# --------------------------------------------------------------------------- weights
@pytest.fixture
def keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_importing_a_weights_file_checks_its_md5(tmp_path, keras_cache, monkeypatch):
    from bcnb import backbones, weights

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
    from bcnb import backbones, weights

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
