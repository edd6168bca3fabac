"""Writing into the run folder without ever leaving a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process' umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_created(path: str | Path, mode: int = 0o666) -> None:
    """Give a file made by ``mkstemp``/``mkdtemp`` (always 0600/0700, private) the mode a plain
    ``open``/``mkdir`` would have given it, so that classmates on a shared machine can read a
    run as they can read its executed notebooks."""
    os.chmod(path, mode & ~_umask())


def make_temporary_folder(prefix: str, dir: str | Path) -> Path:
    """A fresh folder in ``dir``, with the permissions ``mkdir`` would give it (to rename into place)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    _as_if_created(folder, 0o777)
    return folder


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    A reader sees either the old file or the new one, never a mix, even if the process
    dies halfway through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        _as_if_created(temporary)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def temporary_path_beside(path: str | Path) -> Path:
    """A fresh name in ``path``'s folder, keeping its suffix (for libraries that write files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    _as_if_created(temporary)
    return Path(temporary)


def replace_from_writer(path: str | Path, write) -> Path:
    """Call ``write(temporary_path)``, then rename the result onto ``path``."""
    path = Path(path)
    temporary = temporary_path_beside(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_run_json(run_dir: str | Path, name: str, notebook: str) -> Any:
    """A JSON file a notebook left in the run folder; missing, the error names that notebook."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook {notebook} first")
    return json.loads(path.read_text())


def link_or_copy(source: str | Path, target: str | Path) -> Path:
    """``source`` at ``target`` too: a hard link (the same bytes, stored once), or a copy where
    the file system has no hard links. A ``target`` already there is replaced whole."""
    target = Path(target)
    if target.exists() and os.path.samefile(source, target):  # rename(2) would leave the temporary
        return target

    def put(temporary: Path) -> None:
        temporary.unlink()
        try:
            os.link(source, temporary)
        except OSError:  # another file system, or no hard links
            shutil.copy2(source, temporary)

    return replace_from_writer(target, put)
