"""The run folder: one record of how the run was made, one writer at a time, and the one
decision on whether a folder may be written, resumed or replaced.

**The record** is ``config.yaml``. Each parameter is recorded once, by the first notebook
that uses it (01 the data and split, 02 the model, 03 training, 04 evaluation, see
``config.STAGES``), or by ``bcnb reproduce`` for every stage it runs before notebook 01
starts. A recorded value never changes: a notebook run on the folder with another value
stops with one line naming the parameter and both values. Only parameters that change how
results are shown (``config.PRESENTATION``: ``interactive``, ``predict_images``, ``run_dir``)
may differ.

**The marker**, ``.bcnb.json``, says that bcnb made the folder and what it holds (a single
``run``, a ``protocol`` of folds or repeats, or a ``sweep``), and keeps the SHA-256 of the
record from its first write: a hand-edited record no longer matches and is refused, so a
report can never describe a run by parameters it was not made with. Only a folder with a
marker of the same kind is ever replaced (:func:`check_destination`).

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
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bcnb.config import CONFIG_FILE, NOTEBOOK_OF_STAGE, STAGES, Config, defines_the_run, field_names
from bcnb.run.files import write_json_atomic, write_text_atomic

# bcnb reproduce sets this to the folder it holds when its kernels work in that folder itself.
HELD_BY_PARENT = "BCNB_RUN_FOLDER_HELD"
MARKER_FILE = ".bcnb.json"
KINDS = {"run": "single run", "protocol": "cross-validation or repeats", "sweep": "sweep"}


class RunFolderBusy(ValueError):
    """Another process is writing the run folder."""


class RecordMismatch(ValueError):
    """Parameters that differ from the ones the run folder was made with."""


class RecordTampered(ValueError):
    """A record that is not the one bcnb wrote (edited, removed, or without its digest)."""


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
    found = folder_kind(folder)
    if found == kind:
        return folder
    if found is not None or (folder.is_dir() and any(folder.iterdir())):
        raise DestinationRefused(
            f"{folder}: {_what_it_is(folder)}; bcnb starts a {KINDS[kind]} only in a new folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MARKER_FILE, {"kind": kind, "made_by": made_by()})
    return folder


def made_by() -> dict[str, str]:
    """The versions a folder was made with (those importable without starting TensorFlow)."""
    import platform

    from bcnb import __version__

    return {
        "bcnb": __version__,
        "python": platform.python_version(),
        "made": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _what_it_is(folder: Path) -> str:
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
        found = folder_kind(out) if out.is_dir() and not out.is_symlink() else None
        empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
        if found != kind and not empty:
            raise DestinationRefused(
                f"{option}: {out} {_what_it_is(out)}; bcnb only replaces a {KINDS[kind]} folder it made: "
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


# --------------------------------------------------------------------------- the record
def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The parameters recorded in ``run_dir/config.yaml`` so far ({} before the first),
    after checking that the file is the one bcnb wrote (RecordTampered otherwise)."""
    path = Path(run_dir) / CONFIG_FILE
    marker = read_marker(run_dir) if Path(run_dir).is_dir() else None
    digests = (marker or {}).get("record_sha256", [])
    if not path.is_file():
        if digests:
            raise RecordTampered(f"{path} has been removed: this run folder no longer says how it was made")
        return {}
    data = _read_bytes(path)
    if not digests:
        raise RecordTampered(
            f"{path}: no digest of it in {MARKER_FILE}, so bcnb cannot tell whether it was edited "
            "(made by an older bcnb, or by hand): start a new run folder"
        )
    if hashlib.sha256(data).hexdigest() not in digests:
        raise RecordTampered(
            f"{path} was changed after bcnb wrote it (its SHA-256 is not the one in {MARKER_FILE}): a "
            "run's record is never edited; for other parameters start a new run folder"
        )
    return _parse_record(path, data)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None


def _parse_record(path: Path, data: bytes) -> dict[str, Any]:
    try:
        values = yaml.safe_load(data.decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    unknown = sorted(set(values) - set(field_names())) if isinstance(values, dict) else ["?"]
    if unknown:
        raise ValueError(f"{path}: expected parameter: value pairs of bcnb's parameters, found {unknown}")
    return values


def _write_record(run_dir: Path, values: Mapping[str, Any]) -> None:
    """config.yaml and its digest, so that a kill at any moment leaves a pair that checks.

    The marker first accepts the old and the new digest, then the file is replaced, then the
    marker keeps only the new one.
    """
    marker = read_marker(run_dir) or {"kind": "run", "made_by": made_by()}
    text = yaml.safe_dump(dict(values), sort_keys=False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    write_json_atomic(
        run_dir / MARKER_FILE, {**marker, "record_sha256": [*marker.get("record_sha256", []), digest]}
    )
    write_text_atomic(run_dir / CONFIG_FILE, text)
    write_json_atomic(run_dir / MARKER_FILE, {**marker, "record_sha256": [digest]})


def load_run_config(run_dir: str | Path) -> Config:
    """The Config a run folder was made with: its checked record, defaults for what it lacks,
    and ``run_dir`` set to the folder itself. Every reader of a run's parameters uses this."""
    run_dir = Path(run_dir)
    recorded = read_record(run_dir)
    if not recorded:
        raise FileNotFoundError(
            f"{run_dir / CONFIG_FILE} not found: not a run folder (run notebook 01 first)"
        )
    return Config(**{**recorded, "run_dir": str(run_dir)})


def differences(recorded: Mapping[str, Any], cfg: Config, names) -> list[str]:
    """``name=recorded (not new)`` for each run-defining parameter of ``names`` that differs."""
    return [
        f"{name}={recorded[name]!r} (not {getattr(cfg, name)!r})"
        for name in names
        if name in recorded and defines_the_run(name) and recorded[name] != getattr(cfg, name)
    ]


def check_made_with(folder: str | Path, expected: Config, names=None, advice: str = "") -> None:
    """The one check that a folder's record says ``expected`` (for ``names``, else every
    recorded parameter); RecordMismatch naming each parameter and both values otherwise."""
    recorded = read_record(folder)
    changed = differences(recorded, expected, recorded if names is None else names)
    if changed:
        advice = advice or (
            "a run folder keeps the parameters it was made with: for these, start a new run folder "
            "(another run_dir from notebook 01 on, or bcnb reproduce --out NEW)"
        )
        raise RecordMismatch(f"{Path(folder).resolve()} was made with {', '.join(changed)}; {advice}")


def check_runs_made_with(folder: str | Path, kind: str, runs: Mapping[str, Config], advice: str) -> None:
    """A folder to resume or keep holds what is asked for: its kind, and every run already in
    it (finished or not) made with its run's parameters; nothing else in it."""
    folder = Path(folder)
    found = folder_kind(folder)
    if found != kind:
        raise RecordMismatch(f"{folder} {_what_it_is(folder)}, not a {KINDS[kind]}; {advice}")
    if kind == "run":
        check_made_with(folder, next(iter(runs.values())), advice=advice)
        return
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and read_marker(p) is not None)
    extra = [name for name in present if name not in runs]
    if extra:
        raise RecordMismatch(f"{folder} holds {', '.join(extra)}, which this request does not make; {advice}")
    for name in present:
        check_made_with(folder / name, runs[name], advice=advice)


def record_parameters(run_dir: str | Path, cfg: Config, given, stages) -> dict[str, Any]:
    """Check ``given`` (names of parameters set by the caller) against the record, then add
    the parameters of ``stages`` that it lacks; return the record.

    Raises RecordMismatch, naming every parameter whose value differs from the recorded one.
    """
    run_dir = Path(run_dir)
    with _record_mutex(run_dir):
        recorded = read_record(run_dir)
        check_made_with(run_dir, cfg, given)
        # interactive too, as the run's first writer had it: how the run was first shown.
        names = [name for stage in stages for name in STAGES[stage]] + ["interactive"]
        new = {name: getattr(cfg, name) for name in names if name not in recorded}
        if new:
            merged = {**recorded, **new}
            _write_record(run_dir, {name: merged[name] for name in field_names() if name in merged})
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
    if not recorded:  # a new run folder: never in the middle of someone's own files
        start_folder(run_dir, "run")
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
