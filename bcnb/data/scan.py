"""The scan before training: open every image once and find the ones that would break a run.

Empty, truncated or corrupt files, files that are not images, unreadable files, broken
symlinks and images too large to decode safely (a decompression bomb) are found here, before
any model sees them, and so are identical images filed under two classes or two patients (a
label error, or a leak between splits). With ``on_bad_image="error"`` the run stops with the
list; with ``"skip"`` they are left out and recorded in the run folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from bcnb.data.images import to_rgb8
from bcnb.run.artifacts import BAD_IMAGES_FILE
from bcnb.run.files import write_text_atomic

SHOWN_IN_ERROR = 20


class BadImagesError(ValueError):
    """The dataset holds files that cannot be used, and on_bad_image is "error"."""


def inspect_file(path: str | Path) -> tuple[str, str]:
    """(problem, sha256 of the content) for one file; problem is "" for a usable image."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return "broken symlink", ""
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"unreadable ({error.strerror or error.__class__.__name__})", ""
    if not data:
        return "empty file (0 bytes)", ""
    try:
        with Image.open(path) as image:
            image.load()  # a full decode: truncation shows only here
            to_rgb8(image)
    except UnidentifiedImageError:
        return "not an image (unrecognised content)", ""
    except Image.DecompressionBombError as error:  # not an OSError: Pillow's guard, raised on opening
        return f"too large to decode safely ({_pixels_of(error)})", ""
    except (OSError, ValueError, SyntaxError) as error:
        return f"truncated or corrupt image ({str(error).splitlines()[0][:80]})", ""
    return "", hashlib.sha256(data).hexdigest()


def _pixels_of(error: Image.DecompressionBombError) -> str:
    """How many pixels a refused image declares, from Pillow's message ("Image size (N pixels)")."""
    match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(error))
    if not match:
        return "above Pillow's decompression-bomb limit"
    pixels, limit = (int(number) for number in match.groups())
    return f"{pixels:,} pixels, above Pillow's decompression-bomb limit of {limit:,}"


def find_bad_images(
    candidates: pd.DataFrame, workers: int | None = None, remember: Path | None = None
) -> pd.DataFrame:
    """Return ``candidates`` with ``problem`` filled in for every file that cannot be used.

    With ``remember`` (a CSV file), files whose size and modification time are as they were
    at an earlier scan are not opened again (a cross-validation scans once, not per fold).
    """
    todo = candidates["problem"] == ""
    paths = candidates.loc[todo, "path"].tolist()
    known = _remembered(remember)
    stamps = {path: _stamp(path) for path in paths}
    fresh = [path for path in paths if stamps[path] is None or known.get((path, *stamps[path])) is None]
    # Pillow and hashlib release the GIL while they work, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        inspected = dict(zip(fresh, pool.map(inspect_file, fresh)))
    results = [inspected[path] if path in inspected else known[(path, *stamps[path])] for path in paths]
    if remember is not None:
        _remember(remember, known, paths, stamps, results)
    scanned = candidates.copy()
    scanned["sha256"] = ""
    scanned.loc[todo, "problem"] = [problem for problem, _ in results]
    scanned.loc[todo, "sha256"] = [digest for _, digest in results]
    return _mark_conflicting_duplicates(scanned)


def scan_memory(source: Path) -> Path:
    """Where the scan of ``source`` is remembered: ``$BCNB_CACHE/scans`` (or ~/.cache/bcnb)."""
    root = Path(os.environ.get("BCNB_CACHE") or Path.home() / ".cache" / "bcnb")
    return root / "scans" / f"{hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:16]}.csv"


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _remembered(memory: Path | None) -> dict[tuple, tuple[str, str]]:
    if memory is None or not memory.is_file():
        return {}
    try:
        table = pd.read_csv(memory, dtype={"path": str, "problem": str, "sha256": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}  # a damaged memory: scan again
    return {(r.path, int(r.size), int(r.mtime_ns)): (r.problem, r.sha256) for r in table.itertuples()}


def _remember(
    memory: Path, known: dict, paths: list[str], stamps: dict, results: list[tuple[str, str]]
) -> None:
    """Write what this scan found, and keep what earlier scans found of the files it did not look
    at: a run of one magnification scans a quarter of a data set, and the next run of all of
    them (or of another magnification) must not open the other three quarters again."""
    columns = ["path", "size", "mtime_ns", "problem", "sha256"]
    scanned = set(paths)
    rows = [(path, *stamp, *result) for (path, *stamp), result in known.items() if path not in scanned]
    rows += [(path, *stamps[path], *result) for path, result in zip(paths, results) if stamps[path]]
    write_text_atomic(memory, pd.DataFrame(rows, columns=columns).to_csv(index=False))


def _mark_conflicting_duplicates(scanned: pd.DataFrame) -> pd.DataFrame:
    """Identical content under two classes or two patients: every copy is marked."""
    hashed = scanned[(scanned["problem"] == "") & (scanned["sha256"] != "")]
    for _, copies in hashed.groupby("sha256"):
        if len(copies) < 2:
            continue
        if copies["label"].nunique() > 1:
            why = "classes"
        elif copies["patient_id"].nunique() > 1:
            why = "patients"
        else:
            continue
        for index in copies.index:
            other = copies["path"][copies.index != index].iloc[0]
            scanned.loc[index, "problem"] = f"identical to {other} (two {why})"
    return scanned


def split_bad(scanned: pd.DataFrame, on_bad_image: str, source: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(usable images, bad files); raise BadImagesError under "error" if any file is bad."""
    bad_rows = scanned["problem"] != ""
    bad = scanned.loc[bad_rows, ["path", "problem"]].reset_index(drop=True)
    if len(bad) and on_bad_image == "error":
        raise BadImagesError(describe_bad(bad, source))
    good = scanned.loc[~bad_rows].drop(columns=["problem", "sha256"])
    return good.reset_index(drop=True), bad


def describe_bad(bad: pd.DataFrame, source: Path) -> str:
    """One message: how many bad files, the first 20 with why, and how to go on."""
    shown = "; ".join(f"{row.path}: {row.problem}" for row in bad.head(SHOWN_IN_ERROR).itertuples())
    more = f"; and {len(bad) - SHOWN_IN_ERROR} more" if len(bad) > SHOWN_IN_ERROR else ""
    return f"dataset: {len(bad)} bad file(s) in {source} (on_bad_image=skip leaves them out): {shown}{more}"


def save_bad_images(bad: pd.DataFrame, run_dir: str | Path) -> Path:
    """bad_images.csv in the run folder: path and problem of every file left out."""
    return write_text_atomic(Path(run_dir) / BAD_IMAGES_FILE, bad[["path", "problem"]].to_csv(index=False))
