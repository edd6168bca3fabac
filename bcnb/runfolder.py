"""The run folder: one record of how the run was made, and one writer at a time.

**The record** is ``config.yaml``. Each parameter is recorded once, by the first notebook
that uses it (01 the data and split, 02 the model, 03 training, 04 evaluation, see
``config.STAGES``), or by ``bcnb reproduce`` for every stage it runs before notebook 01
starts. A recorded value never changes: a notebook run on the folder with another value
stops with one line naming the parameter and both values. Only parameters that change how
results are shown (``config.PRESENTATION``: ``interactive``, ``predict_images``, ``run_dir``)
may differ.

**One writer**: a lock file beside the folder (``.NAME.lock``) held with ``flock``, which the
operating system releases when its process ends, however it ends, so a killed run never
blocks the folder. ``bcnb reproduce`` holds it alone for the whole run; notebooks hold it
together (a student steps through 01-06, each in its own kernel) for as long as their
kernel lives, so neither can start while the other writes. ``bcnb extract --shard``
processes take no lock: each writes only its own shard file, by design side by side.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bcnb.config import CONFIG_FILE, NOTEBOOK_OF_STAGE, STAGES, Config, defines_the_run, field_names
from bcnb.files import write_text_atomic

# bcnb reproduce sets this to the folder it holds when its kernels work in that folder itself.
HELD_BY_PARENT = "BCNB_RUN_FOLDER_HELD"


class RunFolderBusy(ValueError):
    """Another process is writing the run folder."""


class RecordMismatch(ValueError):
    """Parameters that differ from the ones the run folder was made with."""


# --------------------------------------------------------------------------- the record
def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The parameters recorded in ``run_dir/config.yaml`` so far ({} before the first)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    unknown = sorted(set(values) - set(field_names())) if isinstance(values, dict) else ["?"]
    if unknown:
        raise ValueError(f"{path}: expected parameter: value pairs of bcnb's parameters, found {unknown}")
    return values


def differences(recorded: Mapping[str, Any], cfg: Config, names) -> list[str]:
    """``name=recorded (not new)`` for each run-defining parameter of ``names`` that differs."""
    return [
        f"{name}={recorded[name]!r} (not {getattr(cfg, name)!r})"
        for name in names
        if name in recorded and defines_the_run(name) and recorded[name] != getattr(cfg, name)
    ]


def record_parameters(run_dir: str | Path, cfg: Config, given, stages) -> dict[str, Any]:
    """Check ``given`` (names of parameters set by the caller) against the record, then add
    the parameters of ``stages`` that it lacks; return the record.

    Raises RecordMismatch, naming every parameter whose value differs from the recorded one.
    """
    run_dir = Path(run_dir)
    with _record_mutex(run_dir):
        recorded = read_record(run_dir)
        changed = differences(recorded, cfg, given)
        if changed:
            raise RecordMismatch(
                f"{run_dir.resolve()} was made with {', '.join(changed)}; a run folder keeps the "
                "parameters it was made with: for these, start a new run folder (another run_dir "
                "from notebook 01 on, or bcnb reproduce --out NEW)"
            )
        # interactive too, as the run's first writer had it: how the run was first shown.
        names = [name for stage in stages for name in STAGES[stage]] + ["interactive"]
        new = {name: getattr(cfg, name) for name in names if name not in recorded}
        if new:
            merged = {**recorded, **new}
            ordered = {name: merged[name] for name in field_names() if name in merged}
            write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(ordered, sort_keys=False))
        return {**recorded, **new}


def record_all(run_dir: str | Path, cfg: Config) -> Path:
    """Record every parameter of ``cfg`` in a folder that has no record yet (tests, tools)."""
    record_parameters(run_dir, cfg, (), STAGES)
    return Path(run_dir) / CONFIG_FILE


@contextmanager
def _record_mutex(run_dir: Path):
    """Two notebooks recording at the same moment take turns (read, compare, write)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = os.open(run_dir, os.O_RDONLY)  # flock works on a folder itself: no file to leave behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)


# --------------------------------------------------------------------------- a notebook's run
def open_run(namespace: Mapping[str, Any], stage: str) -> Config:
    """A notebook's ``cfg``: its parameters (from ``globals()``) checked, recorded and joined
    with the rest of the run's record; the run folder held for this kernel's lifetime.

    Notebook 01 (``stage="data"``) starts a run folder; the others need its record.
    """
    given = {name: namespace[name] for name in field_names() if name in namespace}
    run_dir = Path(given.get("run_dir", Config.run_dir))
    hold_for_notebook(run_dir, NOTEBOOK_OF_STAGE[stage].removesuffix(".ipynb"))
    recorded = read_record(run_dir)
    if not recorded and stage != "data":
        raise FileNotFoundError(
            f"{run_dir / CONFIG_FILE} not found: run notebook 01_data first, it starts the run folder"
        )
    cfg = Config(**{**recorded, **given})
    record_parameters(run_dir, cfg, given, [stage])
    return cfg


_HELD: dict[Path, RunLock] = {}


def hold_for_notebook(run_dir: Path, notebook: str) -> None:
    """Share the run folder with the other notebooks until this kernel ends."""
    folder = Path(run_dir).resolve()
    if folder in _HELD or os.environ.get(HELD_BY_PARENT) == str(folder):
        return
    _HELD[folder] = RunLock(folder, f"the kernel of notebook {notebook}", shared=True).acquire()
    atexit.register(_HELD[folder].release)  # a kernel that is killed lets go all the same


# --------------------------------------------------------------------------- the lock
def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


class RunLock:
    """``flock`` on ``.NAME.lock`` beside the run folder: exclusive, or shared by notebooks.

    The file holds one JSON line per holder (process, host, what, since) so that a refused
    writer can say who holds the folder.
    """

    def __init__(self, folder: str | Path, what: str, shared: bool = False):
        self.folder = Path(folder).resolve()
        self.path = lock_path(self.folder)
        self.what = what
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock now or raise RunFolderBusy naming the folder and its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holders = _live_holders(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.folder} is being written by {holders}; wait for it to finish or stop it "
                    "(a notebook: shut down its kernel)"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # an exclusive holder removed the file as we opened it: take the new one
        self._fd = fd
        _write_holder(fd, self.what, truncate=not self.shared)
        return self

    def release(self) -> None:
        """Let go; the last holder removes the lock file (while still holding it, so no one
        can be inside)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while others share it
            self.path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int, what: str, truncate: bool) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": since}) + "\n"
    if truncate:
        os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, line.encode())


def _live_holders(fd: int) -> str:
    """The holders a lock file names whose processes still run, in words."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace")
    found = []
    for line in text.splitlines():
        try:
            holder = json.loads(line)
        except json.JSONDecodeError:
            continue
        if holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", 0))):
            where = f"process {holder['pid']} on {holder['host']}, since {holder['since']}"
            found.append(f"{holder['what']} ({where})")
    return ", ".join(found) or "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
