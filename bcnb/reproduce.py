"""Batch reproduction: run the notebooks headless with papermill into one run folder.

The notebooks run in a staging folder beside the target (``.NAME.partial``). Only when all
of them succeed does the staging folder replace the target, so a failed or interrupted run
never damages an earlier run folder; the failed one stays for inspection. The target is
locked for the whole run (:mod:`bcnb.runfolder`): a second ``bcnb reproduce``, ``--resume``
or notebook on it is refused at once. Every parameter is recorded in the staging folder
before notebook 01 starts; each notebook gets the parameters of its own cell, and the rest
from that record.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bcnb.config import CONFIG_FILE, NOTEBOOK_OF_STAGE, Config, defines_the_run
from bcnb.datasets import dataset_path, load_dataset, split_for_run, stain_target_parameters
from bcnb.runfolder import (
    HELD_BY_PARENT,
    RecordMismatch,
    RunLock,
    differences,
    read_record,
    record_parameters,
)

NOTEBOOKS = tuple(NOTEBOOK_OF_STAGE.values())
# 05 trains every backbone again: it runs only when asked for (bcnb reproduce --compare).
COMPARISON = NOTEBOOK_OF_STAGE["compare"]
STAGE_OF_NOTEBOOK = {notebook: stage for stage, notebook in NOTEBOOK_OF_STAGE.items()}
ROOT_DIR = Path(__file__).resolve().parent.parent  # the project's folder
NOTEBOOKS_DIR = ROOT_DIR / "notebooks"
# What the kernels write outside the notebooks (TensorFlow's C++ log) goes to this file.
KERNEL_LOG = "kernels.log"


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""


def check_inputs(cfg: Config, compare: bool = False) -> None:
    """Fail before any notebook runs if the weights, dataset or split cannot work (the
    weights first: checking them takes no time, reading the dataset may)."""
    if cfg.weights.lower() not in {"imagenet", "none"}:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights: file {path.resolve()} does not exist")
    elif cfg.weights.lower() == "imagenet" and not cfg.allow_random_weights:
        with _native_stderr_silenced():  # importing TensorFlow: only when needed
            from bcnb.model import resolve_weights
        for backbone in {cfg.backbone, *(cfg.backbones_to_compare() if compare else [])}:
            resolve_weights(cfg.weights, False, backbone, cfg.img_size)
    split_for_run(cfg, load_dataset(cfg).table)
    if cfg.stain_normalization != "none" and cfg.stain_target:
        stain_target_parameters(cfg)


@contextmanager
def _native_stderr_silenced():
    """Hide TensorFlow's C++ start-up lines (CUDA probing), which bypass Python's streams
    and TF_CPP_MIN_LOG_LEVEL, so that a bad input still ends in one line."""
    with native_stderr_to(Path(os.devnull)):
        yield


@contextmanager
def native_stderr_to(path: Path):
    """Send file descriptor 2 (and so the kernels' C++ logging) to ``path``, while Python's
    own ``sys.stderr`` (progress, errors) keeps writing to the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1)
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)


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
    last = notebook_named(stop_after, "--stop-after") if stop_after else chosen[-1]
    out = Path(out).resolve()
    notebooks_dir = Path(notebooks_dir)
    check_notebooks(notebooks_dir, chosen)
    with RunLock(out, "bcnb reproduce"):
        cfg = headless(cfg)
        progress("checking the dataset and parameters")
        check_inputs(cfg, compare)
        staging = staging_folder(out)
        if resume:
            check_resumable(staging, cfg)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        record_parameters(staging, cfg, (), [STAGE_OF_NOTEBOOK[name] for name in chosen])
        cfg = cfg.replace(run_dir=str(staging))
        (staging / "notebooks").mkdir(parents=True, exist_ok=True)
        with kernels_work_in(staging), native_stderr_to(staging / "notebooks" / KERNEL_LOG):
            for number, name in enumerate(chosen, start=1):
                progress(f"[{number}/{len(chosen)}] {name}")
                execute(notebooks_dir / name, staging / "notebooks" / name, cfg, progress_bar)
                if name == last and stop_after:
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
    """Run some notebooks again, in place, on the finished run folder ``out``.

    Every parameter comes from the run's record; ``given`` (from --config and --set) may
    change only how results are shown (``interactive``, ``predict_images``): another value
    of a parameter that defines the run is refused before any notebook starts. Each
    executed notebook replaces the earlier one only once it has run to its end.
    """
    out = Path(out).resolve()
    names = [notebook_named(name, "--only") for name in notebooks]
    check_notebooks(Path(notebooks_dir), names)
    with RunLock(out, "bcnb reproduce --only"):
        recorded = read_record(out)
        if not recorded:
            raise FileNotFoundError(f"--only: {out} is not a finished run folder (it has no {CONFIG_FILE})")
        cfg = headless(Config(**{**recorded, **given, "run_dir": str(out)}))
        changed = differences(recorded, cfg, given)
        if changed:
            raise RecordMismatch(
                f"--only: {out} was made with {', '.join(changed)}; a run folder keeps the parameters "
                "it was made with: for a run with these, use bcnb reproduce --out NEW"
            )
        with kernels_work_in(out), native_stderr_to(out / "notebooks" / KERNEL_LOG):
            for number, name in enumerate(names, start=1):
                progress(f"[{number}/{len(names)}] {name} (again, in {out})")
                running = out / "notebooks" / f".{name}.running.ipynb"
                execute(Path(notebooks_dir) / name, running, cfg, progress_bar)
                os.replace(running, out / "notebooks" / name)
    return out


@contextmanager
def kernels_work_in(folder: Path):
    """The kernels started meanwhile write into ``folder``, which this process holds for them."""
    os.environ[HELD_BY_PARENT] = str(folder)
    try:
        yield
    finally:
        os.environ.pop(HELD_BY_PARENT, None)


def headless(cfg: Config) -> Config:
    """``cfg`` for kernels that run in other folders and draw no widgets."""
    # Paths in the parameters must not depend on the kernels' working folder.
    if cfg.dataset != "synthetic":
        cfg = cfg.replace(dataset=str(dataset_path(cfg)))
    if cfg.weights.lower() not in {"imagenet", "none"}:
        cfg = cfg.replace(weights=str(Path(cfg.weights).expanduser().resolve()))
    # Headless: no front end draws widgets, so the notebooks show their static equivalents.
    return cfg.replace(interactive=False)


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


def staging_folder(out: Path) -> Path:
    """Where ``bcnb reproduce`` builds the run that will become ``out``."""
    return out.parent / f".{out.name}.partial"


def run_folder(out: str | Path) -> Path:
    """A finished run folder, or else the unfinished (staging) one of the same name."""
    out = Path(out).resolve()
    staging = staging_folder(out)
    return staging if not (out / CONFIG_FILE).is_file() and (staging / CONFIG_FILE).is_file() else out


def check_resumable(staging: Path, cfg: Config) -> None:
    """An interrupted run to resume must exist and must have used the same parameters."""
    if not staging.is_dir():
        raise FileNotFoundError(f"--resume: no interrupted run to resume ({staging} does not exist)")
    before = read_record(staging)
    changed = [
        f"{name}: {value!r} -> {getattr(cfg, name)!r}"
        for name, value in before.items()
        if defines_the_run(name) and value != getattr(cfg, name)
    ]
    if changed:
        raise ValueError(
            f"--resume: the interrupted run in {staging} used other parameters ({'; '.join(changed)}); "
            "run without --resume to start afresh"
        )


def parameter_names(notebook: Path) -> list[str]:
    """The names a notebook's ``parameters`` cell assigns: what papermill should pass it."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return []
    tree = ast.parse("".join(cell["source"]))
    return [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]


def execute(source: Path, target: Path, cfg: Config, progress_bar: bool) -> None:
    """Run one notebook with the parameters its own cell names (the rest are in the record)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Quieter TensorFlow in the kernels; they inherit this process' environment.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    values = cfg.to_dict()
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters={name: values[name] for name in parameter_names(source) if name in values},
            cwd=str(source.parent),
            progress_bar=progress_bar,
            kernel_name="python3",
            # The kernel's own start-up warnings (e.g. about its local TCP sockets) are noise here.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as error:
        message = f"{source.name} failed at cell {error.exec_count}: {error.ename}: {error.evalue.strip()}"
        if error.ename in (RecordMismatch.__name__, "RunFolderBusy"):
            raise RecordMismatch(message) from None  # refused input, not a failed run
        raise NotebookFailed(f"{message} (executed notebook kept in {target})") from None


def swap_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging``; the old run is removed only after the swap."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
