"""The scan before training: every kind of bad file, in every layout, found and named.

With on_bad_image="error" the run stops with one message naming each bad file and why;
with "skip" the file is left out, listed, and nothing downstream ever sees it.
"""

import functools
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bcnb import Config
from bcnb.data import loading, pipeline, scan

LABELS = ("benign", "malignant")


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 million at 20000), a few dozen KB:
    blank rows compress to almost nothing, and would decode to gigabytes."""
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits, all 0
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def image_path(layout: str, label: str, patient: str, index: int) -> str:
    """Where ``layout`` keeps image ``index`` of a patient, relative to the dataset root."""
    kind, cls = ("B", "0") if label == "benign" else ("M", "1")
    return {
        "breakhis": f"{label}/SOB_{kind}_A_14-{patient}/40X/SOB_{kind}_A-14-{patient}-40-{index:03d}.png",
        "idc": f"{patient}/{cls}/{patient}_idx5_x{index}_y1_class{cls}.png",
        "folders": f"{label}/{patient}/img{index}.png",
        "csv": f"images/{patient}_{index}.png",
    }[layout]


class Dataset:
    """A small valid dataset in one layout (3 patients a class, 2 images each), plus extras."""

    def __init__(self, root: Path, layout: str):
        self.root, self.layout, self.rows = root, layout, []
        for n in range(12):
            label = LABELS[n // 6]
            self.add(
                image_path(layout, label, f"{1 + n // 2}0", n % 2 + 1), png_bytes(n), label, f"{1 + n // 2}0"
            )

    def add(self, relative: str, content: bytes | None, label="benign", patient="10") -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        self.rows.append({"path": relative, "label": label, "patient_id": patient})
        return path

    def folder(self, label="benign", patient="10") -> str:
        """The folder holding this patient's images, relative to the root."""
        return str(Path(image_path(self.layout, label, patient, 1)).parent)

    def source(self) -> Path:
        if self.layout != "csv":
            return self.root
        manifest = self.root / "manifest.csv"
        pd.DataFrame(self.rows).to_csv(manifest, index=False)
        return manifest


def _truncated(seed=99):
    data = png_bytes(seed)
    return data[: len(data) // 2]


# kind -> (how to add the bad file, the reason the scan must give)
def _named(dataset, content, index=9, label="benign", patient="10"):
    return dataset.add(image_path(dataset.layout, label, patient, index), content, label, patient)


def _stray(dataset, name, content):
    return dataset.add(f"{dataset.folder()}/{name}", content)


def _broken_link(dataset):
    path = _named(dataset, None)
    os.symlink(dataset.root / "nowhere.png", path)
    return path


def _duplicate(dataset, label, patient):
    original = dataset.root / image_path(dataset.layout, "benign", "10", 1)
    return _named(dataset, original.read_bytes(), 9, label, patient)


CORRUPT = np.random.default_rng(0).bytes(300)
BAD_KINDS = {
    "empty file": (lambda d: _named(d, b""), r"empty file \(0 bytes\)"),
    "truncated image": (lambda d: _named(d, _truncated()), r"truncated or corrupt image"),
    # Fixed bytes: some random draws (os.urandom) happen to pass as an image format's header.
    "corrupt bytes": (lambda d: _named(d, CORRUPT), r"not an image \(unrecognised content\)"),
    "text file": (lambda d: _stray(d, "notes.txt", b"a note"), r"not an image"),
    ".DS_Store": (lambda d: _stray(d, ".DS_Store", b"\0\0\0\1Bud1"), r"not an image"),
    "Thumbs.db": (lambda d: _stray(d, "Thumbs.db", b"\xd0\xcf\x11\xe0"), r"not an image"),
    "hidden image": (lambda d: _stray(d, ".hidden.png", png_bytes(98)), r"not an image"),
    "broken symlink": (_broken_link, r"broken symlink"),
    # Pillow raises DecompressionBombError, not an OSError, on opening it.
    "decompression bomb": (
        lambda d: _named(d, bomb_png()),
        r"too large to decode safely \(400,000,000 pixels, above Pillow's decompression-bomb limit",
    ),
    "same image in two classes": (
        lambda d: _duplicate(d, "malignant", "40"),
        r"identical to .* \(two classes\)",
    ),
    "same image for two patients": (
        lambda d: _duplicate(d, "benign", "20"),
        r"identical to .* \(two patients\)",
    ),
}
LAYOUTS = ("breakhis", "idc", "folders", "csv")
# A hidden image found while walking folders is a stray; one a manifest lists by name is
# taken at its word, so that case is not a bad file.
CASES = [
    (kind, layout)
    for kind in sorted(BAD_KINDS)
    for layout in LAYOUTS
    if (kind, layout) != ("hidden image", "csv")
]


@pytest.mark.parametrize("kind,layout", CASES)
def test_bad_file_stops_the_run_with_its_name_and_reason(tmp_path, layout, kind):
    dataset = Dataset(tmp_path, layout)
    add, reason = BAD_KINDS[kind]
    bad_path = add(dataset)
    with pytest.raises(scan.BadImagesError, match=reason) as error:
        loading.load_dataset(Config(dataset=str(dataset.source())))
    message = str(error.value)
    assert str(bad_path) in message
    assert "on_bad_image=skip" in message and "\n" not in message


@pytest.mark.parametrize("kind,layout", CASES)
def test_skip_leaves_the_bad_file_out_and_records_it(tmp_path, layout, kind):
    dataset = Dataset(tmp_path, layout)
    add, reason = BAD_KINDS[kind]
    bad_path = str(add(dataset))
    loaded = loading.load_dataset(Config(dataset=str(dataset.source()), on_bad_image="skip"))
    assert bad_path in set(loaded.bad["path"]) and bad_path not in set(loaded.table["path"])
    assert loaded.bad.set_index("path")["problem"].str.contains(reason).loc[bad_path]
    copies_left_out = 1 if "identical" in reason else 0  # the original is marked too
    assert len(loaded.table) == 12 - copies_left_out
    # whatever was kept decodes: nothing bad reaches the pipeline
    batches = pipeline.make_dataset(loaded.table, pipeline.Preparation(32), batch_size=64)
    assert sum(len(labels) for _, labels in batches) == len(loaded.table)
    saved = scan.save_bad_images(loaded.bad, tmp_path / "run")
    assert pd.read_csv(saved)["path"].tolist() == loaded.bad["path"].tolist()


def test_duplicates_mark_every_copy(tmp_path):
    dataset = Dataset(tmp_path, "folders")
    copy = _duplicate(dataset, "malignant", "40")
    loaded = loading.load_dataset(Config(dataset=str(dataset.root), on_bad_image="skip"))
    original = str(tmp_path / image_path("folders", "benign", "10", 1))
    assert set(loaded.bad["path"]) == {original, str(copy)}


def test_a_missing_manifest_file_is_a_bad_file(tmp_path):
    dataset = Dataset(tmp_path, "csv")
    dataset.add("images/gone.png", None)
    with pytest.raises(scan.BadImagesError, match=r"gone.png: missing file \(listed in the manifest\)"):
        loading.load_dataset(Config(dataset=str(dataset.source())))


def test_the_error_lists_twenty_then_counts(tmp_path):
    dataset = Dataset(tmp_path, "folders")
    for n in range(25):
        _stray(dataset, f"note{n:02d}.txt", b"x")
    with pytest.raises(scan.BadImagesError) as error:
        loading.load_dataset(Config(dataset=str(dataset.root)))
    message = str(error.value)
    assert message.startswith(f"dataset: 25 bad file(s) in {tmp_path}")
    assert message.count("not an image (.txt)") == 20 and message.endswith("; and 5 more")


def test_unreadable_file(tmp_path):
    folder = tmp_path / "a.png"
    folder.mkdir()  # a folder named like an image: reading it fails like an unreadable file
    assert scan.inspect_file(folder)[0] == "unreadable (Is a directory)"


def test_file_without_read_permission():
    """Checked as an unprivileged user (a forked child that drops root), since root, as CI
    runs, reads any file whatever its mode."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bcnb-unreadable-", dir="/tmp"))  # reachable by anyone
    try:
        folder.chmod(0o755)
        path = folder / "x.png"
        path.write_bytes(png_bytes(1))
        path.chmod(0)
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:  # the child: drop root if it is root, inspect, report, leave
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                os.write(writing, scan.inspect_file(path)[0].encode())
            finally:
                os._exit(0)
        os.close(writing)
        os.waitpid(child, 0)
        with os.fdopen(reading) as answer:
            assert answer.read() == "unreadable (Permission denied)"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_decompression_bomb_is_a_bad_file_not_a_crash(tmp_path):
    """It is a real PNG: with Pillow's guard lifted it opens as 20000x20000 pixels."""
    path = tmp_path / "huge.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 200_000
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            assert image.size == (20000, 20000)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    problem, digest = scan.inspect_file(path)
    assert problem.startswith("too large to decode safely (400,000,000 pixels") and digest == ""


def test_a_good_image_passes_with_its_hash(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(1))
    problem, digest = scan.inspect_file(path)
    assert problem == "" and len(digest) == 64


def test_every_real_sample_image_passes(breakhis_sample, tmp_path):
    copy = tmp_path / "sample"
    shutil.copytree(breakhis_sample, copy)
    loaded = loading.load_dataset(Config(dataset=str(copy)))
    assert len(loaded.table) == 16 and loaded.bad.empty


def test_nothing_usable_left(tmp_path):
    for label in LABELS:
        (tmp_path / label / "p1").mkdir(parents=True)
        (tmp_path / label / "p1" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="has no usable images left"):
        loading.load_dataset(Config(dataset=str(tmp_path), on_bad_image="skip"))


def _candidate_images(folder: Path, magnifications: list[str]) -> pd.DataFrame:
    """One good benign PNG per magnification given, each of its own patient, as a scan's input."""
    paths = []
    for index in range(len(magnifications)):
        path = folder / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png_bytes(index))
        paths.append(str(path))
    patients = [str(index + 1) for index in range(len(paths))]
    columns = {"path": paths, "label": "benign", "patient_id": patients, "magnification": magnifications}
    return pd.DataFrame({**columns, "problem": ""})


def test_a_remembered_scan_opens_only_the_files_that_changed(tmp_path, monkeypatch):
    """A second scan of the same files (the next fold of a cross-validation) reads only what
    changed since; a file changed into a broken one is found all the same."""
    candidates = _candidate_images(tmp_path, ["40X"] * 3)
    paths = candidates["path"].tolist()
    memory = tmp_path / "memory.csv"
    first = scan.find_bad_images(candidates, remember=memory)
    opened = []
    real = scan.inspect_file
    monkeypatch.setattr(scan, "inspect_file", lambda path: opened.append(path) or real(path))
    again = scan.find_bad_images(candidates, remember=memory)
    assert opened == [] and again.equals(first)
    Path(paths[1]).write_bytes(png_bytes(1)[:-40])  # truncated: another size, another time
    changed = scan.find_bad_images(candidates, remember=memory)
    assert opened == [paths[1]] and changed["problem"][1].startswith("truncated or corrupt image")


def test_a_scan_of_some_files_keeps_what_was_remembered_of_the_others(tmp_path, monkeypatch):
    """A run of one magnification scans a part of the data set: the run of all of them after it
    (the next fold of a --per-magnification protocol) opens no file again."""
    candidates = _candidate_images(tmp_path, ["40X", "100X", "40X", "100X"])
    memory = tmp_path / "memory.csv"
    everything = scan.find_bad_images(candidates, remember=memory)
    scan.find_bad_images(candidates[candidates["magnification"] == "40X"], remember=memory)
    opened = []
    real = scan.inspect_file
    monkeypatch.setattr(scan, "inspect_file", lambda path: opened.append(path) or real(path))
    again = scan.find_bad_images(candidates, remember=memory)
    assert opened == [] and again.equals(everything)
