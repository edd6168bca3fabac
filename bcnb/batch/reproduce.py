"""Batch reproduction: run the notebooks headless with papermill into one run folder.

Every command that runs notebooks (``bcnb reproduce``, ``--resume``, ``--only``, ``--folds``,
``--repeats`` and each cell of ``bcnb sweep``) goes through the same three steps:

1. **The destination** is checked once (:func:`bcnb.run.record.check_destination`): only a
   folder bcnb made, of the same kind, is ever replaced; anything else stops in one line with
   nothing touched. The folder is then locked for the whole job (one writer).
2. **Staging**: the notebooks run in a folder beside the target (``.NAME.partial``, kept after
   a failure or a kill for ``--resume``; ``.NAME.rerun`` for ``--only``, which starts as a
   hard-linked copy of the finished run). A resumed folder must hold what is asked for: every
   run already in it is checked against its parameters (:func:`bcnb.run.record.check_runs_made_with`).
3. **The swap**: only when every notebook has succeeded does the staging folder replace the
   target, so a failed, interrupted or refused job never damages an earlier run.

Each notebook runs in its run folder's ``notebooks/`` with ``run_dir = ".."``: the executed
notebooks name no staging folder, and each can be run again in place, in JupyterLab or by
papermill, once the run is finished.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bcnb.config import NOTEBOOK_OF_STAGE, Config, resolve_paths
from bcnb.data.loading import load_dataset
from bcnb.data.pipeline import stain_target_parameters
from bcnb.data.splitting import split_for_run
from bcnb.run.artifacts import KERNEL_LOG
from bcnb.run.files import write_text_atomic
from bcnb.run.nativelog import native_stderr
from bcnb.run.record import (
    HELD_BY_PARENT,
    DestinationRefused,
    RecordMismatch,
    RunLock,
    check_destination,
    check_made_with,
    check_runs_made_with,
    check_writable,
    folder_kind,
    read_record,
    record_parameters,
    start_folder,
)

NOTEBOOKS = tuple(NOTEBOOK_OF_STAGE.values())
# 05 trains every backbone again: it runs only when asked for (bcnb reproduce --compare).
COMPARISON = NOTEBOOK_OF_STAGE["compare"]
STAGE_OF_NOTEBOOK = {notebook: stage for stage, notebook in NOTEBOOK_OF_STAGE.items()}
ROOT_DIR = Path(__file__).resolve().parents[2]  # the project's folder
NOTEBOOKS_DIR = ROOT_DIR / "notebooks"
# A notebook's run folder, as the executed notebook names it: the folder it lies in is
# RUN/notebooks, so ".." is RUN wherever the run is moved (staging, then its final name).
RUN_DIR_FROM_NOTEBOOK = ".."
RESUME_ADVICE = "run without --resume to start afresh"


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""


class WriteFailed(DestinationRefused):
    """A file could not be written (disk full, read-only, no permission)."""


def check_inputs(cfg: Config, compare: bool = False) -> None:
    """Fail before any notebook runs if the weights, dataset or split cannot work (the
    weights first: checking them takes no time, reading the dataset may)."""
    if cfg.weights.lower() not in {"imagenet", "none"}:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights: file {path.resolve()} does not exist")
    elif cfg.weights.lower() == "imagenet" and not cfg.allow_random_weights:
        with native_stderr():  # importing TensorFlow: only when needed
            from bcnb.model.transfer import resolve_weights
        for backbone in {cfg.backbone, *(cfg.backbones_to_compare() if compare else [])}:
            resolve_weights(cfg.weights, False, backbone, cfg.img_size)
    split_for_run(cfg, load_dataset(cfg).table)
    if cfg.stain_normalization != "none" and cfg.stain_target:
        stain_target_parameters(cfg)


def headless(cfg: Config) -> Config:
    """``cfg`` for kernels that run in other folders and draw no widgets."""
    # Paths in the parameters must not depend on the kernels' working folder.
    return resolve_paths(cfg).replace(interactive=False)


# --------------------------------------------------------------------------- the jobs
def reproduce(
    cfg: Config,
    out: str | Path,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
    resume: bool = False,
    stop_after: str | None = None,
    compare: bool = False,
) -> Path:
    """Run the notebooks on ``cfg`` and leave the results in ``out``; return ``out``.

    Every notebook but 05, which compares backbones and runs only with ``compare``.

    With ``resume``, an interrupted run's staging folder is kept: its split, model, feature
    cache (shards included) and training checkpoint are used again, so training continues
    where it stopped. ``stop_after`` (a notebook's name) ends the run there, unfinished, and
    returns the staging folder, for ``bcnb extract --shard`` to fill before ``--resume``.
    """
    chosen = [name for name in NOTEBOOKS if compare or name != COMPARISON]
    last = chosen.index(notebook_named(stop_after, "--stop-after")) if stop_after else len(chosen) - 1
    out = Path(out).resolve()
    check_notebooks(Path(notebooks_dir), chosen)
    cfg = headless(cfg)
    check_destination(out, "run")
    with RunLock(out, "bcnb reproduce"):
        progress("checking the dataset and parameters")
        check_inputs(cfg, compare)
        staging = open_staging(out, "run", {"": cfg}, resume)
        # Every stage's parameters are recorded before 01 starts: the record is whole from the start.
        record_parameters(staging, cfg, (), [STAGE_OF_NOTEBOOK[name] for name in chosen])
        run_notebooks(staging, chosen[: last + 1], cfg, Path(notebooks_dir), progress, progress_bar)
        if stop_after:
            return staging
        swap_into_place(staging, out)
    return out


def rerun(
    out: str | Path,
    notebooks: list[str],
    given: Mapping[str, Any],
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
) -> Path:
    """Run some notebooks again on the finished run folder ``out``, as it was made.

    Every parameter comes from the run's record; ``given`` (from --config and --set) may
    change only how results are shown (``interactive``, ``predict_images``): another value
    of a parameter that defines the run is refused before any notebook starts. The notebooks
    run on a hard-linked copy of the run that replaces it only once they all succeed.
    """
    out = Path(out).resolve()
    names = [notebook_named(name, "--only") for name in notebooks]
    check_notebooks(Path(notebooks_dir), names)
    if folder_kind(out) != "run":
        raise FileNotFoundError(f"--only: {out} is not a run folder bcnb made (run bcnb reproduce first)")
    check_writable(out.parent, "--out")
    with RunLock(out, "bcnb reproduce --only"):
        cfg = headless(Config(**{**read_record(out), **given}))
        advice = "for a run with these, use bcnb reproduce --out NEW"
        check_made_with(
            out, cfg, given, advice=f"a run folder keeps the parameters it was made with: {advice}"
        )
        staging = rerun_folder(out)
        try:
            copy_for_rerun(out, staging)
            run_notebooks(staging, names, cfg, Path(notebooks_dir), progress, progress_bar, again=True)
        except NotebookFailed:
            raise  # its executed notebook stays in the copy, to read
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise WriteFailed(
                f"--only: cannot write {error.filename or staging} ({error.strerror})"
            ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of the attempt is left
            raise
        swap_into_place(staging, out)
    return out


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


def _link_or_copy(source: str, target: str) -> None:
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


# --------------------------------------------------------------------------- notebooks
def run_notebooks(
    folder: Path,
    names: list[str],
    cfg: Config,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
    again: bool = False,
    label: str = "",
) -> None:
    """Execute ``names`` in order into ``folder/notebooks``, the kernels working on ``folder``
    (which this process holds for them) with their C++ log in ``kernels.log``.

    Each executed notebook takes its name only once it has run to its end. A notebook that
    raises stops the job (NotebookFailed, the executed notebook kept for inspection); a file
    that cannot be written (disk full, read-only) stops it too (WriteFailed, one line).
    """
    target_dir = folder / "notebooks"
    target_dir.mkdir(parents=True, exist_ok=True)
    with kernels_work_in(folder), native_stderr(target_dir / KERNEL_LOG):
        for number, name in enumerate(names, start=1):
            where = f" (again, in {folder.name})" if again else ""
            progress(f"{label}[{number}/{len(names)}] {name}{where}")
            running = target_dir / f".{name}.running.ipynb"
            try:
                execute(notebooks_dir / name, running, cfg, progress_bar)
            except NotebookFailed:
                os.replace(running, target_dir / name)  # the failed notebook, to read
                raise
            except BaseException:
                running.unlink(missing_ok=True)
                raise
            record_final_name(running, name)
            os.replace(running, target_dir / name)


def record_final_name(executed: Path, name: str) -> None:
    """Papermill records where it wrote the notebook: the temporary name in the staging folder.
    Record the name it is read under instead, relative to the folder it lies in (the run
    folder moves; the notebook's place in it does not)."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata.setdefault("papermill", {})["output_path"] = name
    write_text_atomic(executed, nbformat.writes(notebook) + "\n")


@contextmanager
def kernels_work_in(folder: Path):
    """The kernels started meanwhile write into ``folder``, which this process holds for them."""
    os.environ[HELD_BY_PARENT] = str(folder.resolve())
    try:
        yield
    finally:
        os.environ.pop(HELD_BY_PARENT, None)


def check_notebooks(notebooks_dir: Path, names: list[str]) -> None:
    missing = [name for name in names if not (notebooks_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"notebooks: {notebooks_dir} lacks {', '.join(missing)}")


def notebook_named(name: str, option: str = "--stop-after") -> str:
    """The notebook ``name`` stands for: "02_model", "02_model.ipynb" or "02"."""
    matches = [
        notebook
        for notebook in NOTEBOOKS
        if notebook == name or notebook.split("_")[0] == name or notebook.removesuffix(".ipynb") == name
    ]
    if not matches:
        raise ValueError(f"{option}: expected one of {', '.join(NOTEBOOKS)}, got {name!r}")
    return matches[0]


def parameter_names(notebook: Path) -> list[str]:
    """The names a notebook's ``parameters`` cell assigns: what papermill should pass it."""
    from papermill.inspection import inspect_notebook

    return list(inspect_notebook(str(notebook)))


def execute(source: Path, target: Path, cfg: Config, progress_bar: bool) -> None:
    """Run one notebook with the parameters its own cell names (the rest are in the record),
    in the folder of ``target``, which lies in the run folder's ``notebooks/``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Quieter TensorFlow in the kernels; they inherit this process' environment.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    values = {**cfg.to_dict(), "run_dir": RUN_DIR_FROM_NOTEBOOK}
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters={name: values[name] for name in parameter_names(source) if name in values},
            cwd=str(target.parent),
            progress_bar=progress_bar,
            kernel_name="python3",
            # The kernel's own start-up warnings (e.g. about its local TCP sockets) are noise here.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as error:
        message = f"{source.name} failed at cell {error.exec_count}: {error.ename}: {error.evalue.strip()}"
        if error.ename in (RecordMismatch.__name__, "RecordTampered", "RunFolderBusy"):
            raise RecordMismatch(message) from None  # refused input, not a failed run
        if _is_write_error(error.ename, error.evalue):
            raise WriteFailed(f"{source.name}: cannot write: {error.evalue.strip()}") from None
        raise NotebookFailed(f"{message} (executed notebook kept in {target.parent / source.name})") from None
    except OSError as error:  # papermill writing the executed notebook
        raise WriteFailed(f"cannot write {error.filename or target} ({error.strerror})") from None


# The errors of a destination that takes no more files, whoever meets them first.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def _is_write_error(ename: str, evalue: str) -> bool:
    found = re.match(r"\[Errno (\d+)\]", evalue.strip())
    return ename in ("OSError", "PermissionError") and bool(found) and int(found[1]) in _WRITE_ERRORS
