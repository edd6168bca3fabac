"""Staging and the swap: how a run folder is built beside its target and only then put in place.

Every job builds in a staging folder beside its target (``.NAME.partial``, kept after a
failure or a kill for ``--resume``; ``.NAME.rerun`` for ``--only``, which starts as a
hard-linked copy of the finished run). Only when every notebook has succeeded does the staging
folder replace the target, so a failed, interrupted or refused job never damages an earlier
run. A staging folder to resume must hold what is asked for: every run already in it is
checked against its parameters (:func:`bcnb.run.record.check_runs_made_with`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from bcnb.config import Config
from bcnb.run.artifacts import ALL_FEATURES, FEATURES_DIR, KERNEL_LOG
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
    if Path(source).name == KERNEL_LOG:
        shutil.copy2(source, target)
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links: a copy does as well
        shutil.copy2(source, target)


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
    """Link a sibling run's feature cache into ``folder`` (one extraction for all folds).

    Its key still decides: notebook 03 recomputes the cache if it is not this run's.
    """
    target = folder / FEATURES_DIR / ALL_FEATURES
    if target.exists():
        return
    for sibling in sorted(p for p in staging.iterdir() if p.is_dir() and p != folder):
        source = sibling / FEATURES_DIR / ALL_FEATURES
        key = source.with_suffix(".key.json")
        if source.is_file() and key.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            for path in (source, key):
                _link_or_copy(path, target.parent / path.name)
            return
