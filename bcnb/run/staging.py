"""Staging and the swap: how a run folder is built beside its target and only then put in place.

Every job builds in a staging folder beside its target (``.NAME.partial``, kept after a
failure or a kill for ``--resume``; ``.NAME.rerun`` for ``--only``, which starts as a
hard-linked copy of the finished run). Only when every notebook has succeeded does the staging
folder replace the target, so a failed, interrupted or refused job never damages an earlier
run. A staging folder to resume must hold what is asked for: every run already in it is
checked against its parameters (:func:`bcnb.run.record.check_runs_made_with`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from bcnb.config import Config
from bcnb.run.artifacts import ALL_FEATURES, FEATURES_DIR, KERNEL_LOG, feature_cache_files
from bcnb.run.files import link_or_copy
from bcnb.run.folder import DestinationRefused, folder_kind, start_folder
from bcnb.run.record import check_runs_made_with

RESUME_ADVICE = "run without --resume to start afresh"


# --------------------------------------------------------------------------- staging
def staging_folder(out: Path) -> Path:
    """Where a job builds the folder that will become ``out``."""
    return out.parent / f".{out.name}.partial"


def rerun_folder(out: Path) -> Path:
    """Where ``--only`` runs notebooks again before the result replaces ``out``."""
    return out.parent / f".{out.name}.rerun"


def run_folder(out: str | Path) -> Path:
    """A finished run folder, or else the unfinished (staging) one of the same name."""
    out = Path(out).resolve()
    staging = staging_folder(out)
    return staging if folder_kind(out) is None and folder_kind(staging) == "run" else out


def open_staging(out: Path, kind: str, runs: Mapping[str, Config], resume: bool) -> Path:
    """The staging folder of ``out``: a new one, or with ``resume`` the interrupted one,
    once every run already in it is known to be one of ``runs`` made with its parameters."""
    staging = staging_folder(out)
    if resume:
        if not staging.is_dir():
            raise FileNotFoundError(f"--resume: no interrupted run to resume ({staging} does not exist)")
        check_runs_made_with(staging, kind, runs, RESUME_ADVICE)
        return staging
    discard(staging)
    return start_folder(staging, kind)


def discard(folder: Path) -> None:
    """Remove a staging folder bcnb left (an earlier failed or interrupted job); a folder
    there that bcnb did not make is refused, not removed."""
    if not (folder.exists() or folder.is_symlink()):
        return
    if folder_kind(folder) is None and (not folder.is_dir() or folder.is_symlink() or any(folder.iterdir())):
        raise DestinationRefused(f"{folder} is in the way and bcnb did not make it: move it away first")
    shutil.rmtree(folder)


def copy_for_rerun(out: Path, staging: Path) -> None:
    """A copy of the run ``out`` to run notebooks again in: files hard-linked (bcnb replaces
    files by renaming, so the run's own files are never changed through a link), the kernel
    log copied (it is appended to)."""
    discard(staging)
    shutil.copytree(out, staging, copy_function=_link_or_copy)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    if Path(source).name == KERNEL_LOG:  # appended to by the next run: its own bytes
        shutil.copy2(source, target)
    else:
        link_or_copy(source, target)


def swap_into_place(staging: Path, out: Path) -> None:
    """Tidy ``staging``, then let it replace ``out``; the old run is removed after the swap."""
    tidy(staging)
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def tidy(folder: Path) -> None:
    """Leave no empty kernel log and no empty folder (a finished run's checkpoint/) behind."""
    for log in folder.rglob(KERNEL_LOG):
        if log.stat().st_size == 0:
            log.unlink()
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def share_features(staging: Path, folder: Path) -> None:
    """Link a sibling run's feature cache into ``folder`` (one extraction for all the runs):
    the one of most images, so that a run of fewer images finds its rows in it.

    Its key still decides: notebook 03 uses it if it is this run's, takes this run's rows of it
    if it holds them under this run's model (:func:`bcnb.train.features.cached_features`), and
    extracts the features again otherwise.
    """
    target = folder / FEATURES_DIR / ALL_FEATURES
    if target.exists():
        return
    caches = [sibling / FEATURES_DIR / ALL_FEATURES for sibling in sorted(staging.iterdir())]
    caches = [path for path in caches if path.parent.parent != folder and path.is_file()]
    rows = {path: _rows_of(path.with_suffix(".key.json")) for path in caches}
    usable = [path for path in caches if rows[path] is not None]
    if not usable:
        return
    source = max(usable, key=lambda path: rows[path])  # the first of the largest
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in feature_cache_files(source):
        _link_or_copy(path, target.parent / path.name)


def _rows_of(key: Path) -> int | None:
    """How many rows a feature cache's key file says it holds (0 where it does not say); None
    without a key file (an unfinished cache: nothing to hand over)."""
    if not key.is_file():
        return None
    try:
        return int(json.loads(key.read_text()).get("rows", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0
