"""The run's record, ``config.yaml``: how the run was made, written once and checked.

Each parameter is recorded once, by the first notebook that uses it (01 the data and split,
02 the model, 03 training, 04 evaluation, see ``config.STAGES``), or by ``bcnb reproduce`` for
every stage it runs before notebook 01 starts. A recorded value never changes: a notebook run
on the folder with another value stops with one line naming the parameter and both values.
Only parameters that change how results are shown (``config.PRESENTATION``: ``interactive``,
``predict_images``, ``run_dir``) may differ.

The record is tamper-evident: the folder's marker (:mod:`bcnb.run.folder`) keeps its SHA-256
from the first write, so a hand-edited record is refused wherever it is read and no report can
describe a run by parameters it was not made with. Whether a folder to resume or keep holds
what is asked for is checked here too, run by run (:func:`check_runs_made_with`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bcnb.config import CONFIG_FILE, NOTEBOOK_OF_STAGE, STAGES, Config, defines_the_run, field_names
from bcnb.run.artifacts import MARKER_FILE
from bcnb.run.files import write_json_atomic, write_text_atomic
from bcnb.run.folder import (
    KINDS,
    RecordTampered,
    describe_folder,
    folder_kind,
    made_by,
    read_marker,
    start_folder,
)
from bcnb.run.lock import hold_for_notebook


class RecordMismatch(ValueError):
    """Parameters that differ from the ones the run folder was made with."""


# In the marker's record_sha256 while the first record is being written: no config.yaml is
# also a state that checks (the marker is written before the file).
NO_RECORD = None


# --------------------------------------------------------------------------- the record
def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The parameters recorded in ``run_dir/config.yaml`` so far ({} before the first),
    after checking that the file is the one bcnb wrote (RecordTampered otherwise)."""
    path = Path(run_dir) / CONFIG_FILE
    marker = read_marker(run_dir) if Path(run_dir).is_dir() else None
    digests = (marker or {}).get("record_sha256", [])
    if not path.is_file():
        if digests and NO_RECORD not in digests:
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
    marker keeps only the new one. Before the first record the old state is "no record yet"
    (NO_RECORD): a run killed just as it starts is a folder to resume, not a tampered one.
    """
    marker = read_marker(run_dir) or {"kind": "run", "made_by": made_by()}
    text = yaml.safe_dump(dict(values), sort_keys=False)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    accepted = marker.get("record_sha256") or [NO_RECORD]
    write_json_atomic(run_dir / MARKER_FILE, {**marker, "record_sha256": [*accepted, digest]})
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
    existing_kind = folder_kind(folder)
    if existing_kind != kind:
        raise RecordMismatch(f"{folder} {describe_folder(folder)}, not a {KINDS[kind]}; {advice}")
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
