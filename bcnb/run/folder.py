"""What a folder is, and whether bcnb may write it: the one decision every command takes.

Each folder bcnb makes holds ``.bcnb.json`` (the marker) saying what it is: a single ``run``, a
``protocol`` of folds or repeats, or a ``sweep``, and the versions it was made with. Only a
folder with a marker of the same kind is ever replaced (:func:`check_destination`); a user's
folder, a file or a folder of another kind is refused in one line with nothing touched. The
marker also keeps the SHA-256 of the run's record (:mod:`bcnb.run.record`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bcnb.run.artifacts import MARKER_FILE
from bcnb.run.files import write_json_atomic

KINDS = {"run": "single run", "protocol": "cross-validation or repeats", "sweep": "sweep"}


class DestinationRefused(ValueError):
    """A folder bcnb may not write, resume or replace (a user's files, another kind, read-only)."""


# --------------------------------------------------------------------------- the marker
def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """What ``.bcnb.json`` says of a folder bcnb made; None for any other folder."""
    path = Path(folder) / MARKER_FILE
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        why = error.__class__.__name__
        raise RecordTampered(f"{path}: unreadable ({why}); bcnb cannot trust this folder") from None
    if not isinstance(marker, dict) or marker.get("kind") not in KINDS:
        raise RecordTampered(f"{path}: not a bcnb marker (expected a kind of {', '.join(KINDS)})")
    return marker


def folder_kind(folder: str | Path) -> str | None:
    """ "run", "protocol" or "sweep" for a folder bcnb made; None for anything else."""
    marker = read_marker(folder) if Path(folder).is_dir() else None
    return marker["kind"] if marker else None


def start_folder(folder: str | Path, kind: str) -> Path:
    """Make ``folder`` (absent or empty) a bcnb folder of ``kind``; keep one that already is."""
    folder = Path(folder)
    existing_kind = folder_kind(folder)
    if existing_kind == kind:
        return folder
    if existing_kind is not None or (folder.is_dir() and any(folder.iterdir())):
        raise DestinationRefused(
            f"{folder}: {describe_folder(folder)}; bcnb starts a {KINDS[kind]} only in a new folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MARKER_FILE, {"kind": kind, "made_by": made_by()})
    return folder


def made_by() -> dict[str, str]:
    """The versions a folder is made with: Python, bcnb, and TensorFlow, Keras and NumPy as
    installed (read from their package records, so that no TensorFlow starts for it)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from bcnb import __version__

    versions = {"python": platform.python_version(), "bcnb": __version__}
    for package in ("tensorflow", "keras", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return {**versions, "made": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe_folder(folder: Path) -> str:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return "is a file, not a folder"
    kind = folder_kind(folder)
    if kind is None:
        return f"holds files bcnb did not make (no {MARKER_FILE})"
    return f"is a bcnb {KINDS[kind]} folder"


# --------------------------------------------------------------------------- the destination
def check_destination(out: str | Path, kind: str, option: str = "--out") -> None:
    """The one decision on a destination: may bcnb make a ``kind`` folder at ``out``?

    Yes when nothing is there, an empty folder, or a folder bcnb made of the same kind (a
    single run replaces a single run, a protocol a protocol; a sweep goes on in its own
    folder); and when the folders it writes can be written. Anything else raises
    DestinationRefused, one line naming ``option`` and the folder, with nothing touched.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        existing_kind = folder_kind(out) if out.is_dir() and not out.is_symlink() else None
        empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
        if existing_kind != kind and not empty:
            raise DestinationRefused(
                f"{option}: {out} {describe_folder(out)}; bcnb only replaces a {KINDS[kind]} folder it made: "
                "choose another folder (or move this one away yourself)"
            )
    check_writable(out.parent, option)
    if kind == "sweep" and out.is_dir():  # a sweep writes its cells inside the folder itself
        check_writable(out, option)


def check_writable(folder: str | Path, option: str) -> None:
    """Fail in one line, before anything starts, where ``folder`` cannot take new files.

    Tried for real (a file made and removed): permissions, read-only file systems and root's
    exemptions all answer as they will for the run itself.
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        handle, probe = tempfile.mkstemp(prefix=".bcnb-write-test-", dir=existing)
    except OSError as error:
        raise DestinationRefused(f"{option}: cannot write in {existing} ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)


class RecordTampered(ValueError):
    """A record that is not the one bcnb wrote (edited, removed, or without its digest)."""
