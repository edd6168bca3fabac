"""Batch reproduction: the notebooks run headless into a run folder, or a protocol's folders.

Every command that runs notebooks (``bcnb reproduce``, ``--resume``, ``--folds``, ``--repeats``
and each cell of ``bcnb sweep``) is one call of :func:`build`, which takes the same steps:

1. **The destination** is checked once (:func:`bcnb.run.folder.check_destination`): only a
   folder bcnb made, of the same kind, is ever replaced; anything else stops in one line with
   nothing touched. The folder is then locked for the whole job (one writer).
2. **The inputs** (weights, dataset, split) are checked before any notebook starts.
3. **Staging** (:mod:`bcnb.run.staging`): the runs are built beside the target; a staging
   folder to resume must hold only runs made with the parameters asked for.
4. **The notebooks** run into each run folder (:mod:`bcnb.batch.notebooks`), then a fold's
   models of one magnification are trained on its cached features (:mod:`bcnb.batch.magnifications`).
5. **The swap**: only when every notebook has succeeded does the staging folder replace the
   target.

``--only`` (:func:`rerun`) runs notebooks of a finished run again on a hard-linked copy of it,
swapped in the same way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bcnb.batch.notebooks import (
    COMPARISON,
    NOTEBOOKS,
    NOTEBOOKS_DIR,
    STAGE_OF_NOTEBOOK,
    NotebookFailed,
    RunKernel,
    WriteFailed,
    check_notebooks,
    notebook_named,
    ran_to_its_end,
    run_kernel,
    run_notebooks,
)
from bcnb.config import Config, resolve_paths
from bcnb.data.loading import load_dataset
from bcnb.data.pipeline import stain_target_parameters
from bcnb.data.splitting import split_for_run
from bcnb.run.folder import check_destination, check_writable, folder_kind, start_folder
from bcnb.run.lock import RunLock
from bcnb.run.nativelog import native_stderr
from bcnb.run.record import check_made_with, read_record, record_parameters
from bcnb.run.staging import copy_for_rerun, open_staging, rerun_folder, share_features, swap_into_place


def check_inputs(cfg: Config, compare: bool = False) -> None:
    """Fail before any notebook runs if the weights, stain target, dataset or split cannot
    work (the files first: checking them takes no time, reading the dataset may)."""
    if cfg.weights.lower() not in {"imagenet", "none"}:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights: file {path.resolve()} does not exist")
    elif cfg.weights.lower() == "imagenet" and not cfg.allow_random_weights:
        with native_stderr():  # importing TensorFlow: only when needed
            from bcnb.model.transfer import resolve_weights
        for backbone in {cfg.backbone, *(cfg.backbones_to_compare() if compare else [])}:
            resolve_weights(cfg.weights, False, backbone, cfg.img_size)
    if cfg.stain_normalization != "none" and cfg.stain_target:
        stain_target_parameters(cfg)
    loaded = load_dataset(cfg)
    split_for_run(cfg, loaded.table, loaded.whole)


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
    runner: Runner | None = None,
) -> Path:
    """Run the notebooks on ``cfg`` and leave the results in ``out``; return ``out``.

    Every notebook but 05, which compares backbones and runs only with ``compare``.

    With ``resume``, an interrupted run's staging folder is kept: its split, model, feature
    cache (shards included) and training checkpoint are used again, so training continues
    where it stopped. ``stop_after`` (a notebook's name) ends the run there, unfinished, and
    returns the staging folder, for ``bcnb extract --shard`` to fill before ``--resume``.
    """
    chosen = [name for name in NOTEBOOKS if compare or name != COMPARISON]
    job = Job("run", {"": headless(cfg)}, chosen, "bcnb reproduce", compare=compare)
    return build(
        job, out, Path(notebooks_dir), progress, progress_bar, resume, stop_after, runner or run_here
    )


@dataclass(frozen=True)
class Job:
    """What to build: a folder of ``kind`` holding ``runs`` (by subfolder, "" for the folder
    itself), each made by ``notebooks`` and given a model of each of ``magnifications`` (a
    protocol's, --per-magnification), then ``finish``ed (a protocol's summary)."""

    kind: str
    runs: Mapping[str, Config]
    notebooks: list[str]
    what: str  # the holder's name, as a refused writer is told
    compare: bool = False
    finish: Callable[[Path], None] | None = None
    magnifications: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunTask:
    """One run of a job still to make: its folder in the staging folder, its parameters, the
    notebooks to run there (none when they ran before), the job's stages (what its record is
    written for) and the magnifications to train a model of on its features afterwards."""

    name: str  # the subfolder ("" for the job's folder itself)
    folder: Path
    cfg: Config
    notebooks: list[str]
    stages: list[str]
    staging: Path
    label: str
    magnifications: tuple[str, ...] = ()

    def prepare(self) -> None:
        """Make the run's folder ready, just before its notebooks run: the folder, its whole
        record (every stage's parameters before 01 starts), and the feature cache of a run that
        ran before it (one extraction serves all of a protocol's runs). A run whose notebooks
        ran before keeps its folder and record as they are."""
        if not self.notebooks:
            return
        start_folder(self.folder, "run")
        record_parameters(self.folder, self.cfg, (), self.stages)
        if self.name:
            share_features(self.staging, self.folder)

    def train_magnification_models(self, progress=lambda message: None) -> None:
        """After the notebooks: the run's models of one magnification, on its cached features."""
        if self.magnifications:
            from bcnb.batch.magnifications import train_magnification_models

            train_magnification_models(self.folder, self.cfg, self.magnifications, progress)


# How a job's runs are carried out: one after the other here (run_here), or handed to a Dask
# cluster (bcnb.batch.on_dask). Either way the caller holds the lock, the records and the swap.
Runner = Callable[[list[RunTask], Path, Callable[[str], None], bool], None]


def run_here(
    tasks: list[RunTask], notebooks_dir: Path, progress, progress_bar: bool, kernel: RunKernel | None = None
) -> None:
    """Each run in turn, all in one kernel (Python, TensorFlow and bcnb imported once):
    ``kernel``, or one started for these runs.

    A run's heads of one magnification train in this process, one run's after another, while
    the kernel (another process) runs the next run's notebooks: a head needs one core, and much
    of a notebook leaves one idle. A head that fails stops the job once the notebook running
    then has ended; the job ends only when every head has.
    """
    with run_kernel(kernel) as kernel, ThreadPoolExecutor(1, thread_name_prefix="bcnb-heads") as heads:
        trained = []
        for task in tasks:
            _raise_failed(trained)
            task.prepare()
            if task.notebooks:
                run_notebooks(
                    task.folder,
                    task.notebooks,
                    task.cfg,
                    notebooks_dir,
                    progress,
                    progress_bar,
                    label=task.label,
                    kernel=kernel,
                )
            if task.magnifications:
                trained.append(heads.submit(task.train_magnification_models, progress))
        for done in trained:
            done.result()


def _raise_failed(futures: list[Future]) -> None:
    """Raise the error of the first finished task that failed, if any."""
    for future in futures:
        if future.done() and future.exception() is not None:
            future.result()


@contextmanager
def one_kernel_runner():
    """A runner like :func:`run_here` whose runs all share one kernel, whichever job they are
    of (a sweep's cells, one after the other); the kernel ends with the block."""
    with run_kernel() as kernel:
        yield partial(run_here, kernel=kernel)


def pending_runs(job: Job, staging: Path, notebooks: list[str], progress) -> list[RunTask]:
    """The runs of ``job`` that are not finished in ``staging`` (a finished one is kept; one
    whose notebooks ran but whose models of one magnification did not is given those only)."""
    from bcnb.batch.magnifications import check_asked_for, unfinished

    stages = [STAGE_OF_NOTEBOOK[name] for name in job.notebooks]
    tasks = []
    for number, (name, run_cfg) in enumerate(job.runs.items(), start=1):
        folder = staging / name if name else staging
        check_asked_for(folder, job.magnifications)
        # report.md, written inside the last notebook, would not say that the notebook ended
        ran = bool(name) and ran_to_its_end(folder, job.notebooks[-1])
        if ran and not unfinished(folder, job.magnifications):
            progress(f"{name}: finished before, kept")
            continue
        if ran:
            progress(f"{name}: its notebooks finished before, kept; its models of one magnification go on")
        label = f"{name} ({number}/{len(job.runs)}) " if name else ""
        to_run = [] if ran else notebooks
        tasks.append(RunTask(name, folder, run_cfg, to_run, stages, staging, label, job.magnifications))
    return tasks


def build(
    job: Job,
    out: str | Path,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    progress: Callable[[str], None] = lambda message: None,
    progress_bar: bool = False,
    resume: bool = False,
    stop_after: str | None = None,
    runner: Runner = run_here,
) -> Path:
    """The one way bcnb builds a run or a protocol into ``out``: destination, lock, inputs,
    staging, notebooks (by ``runner``), swap (see the module's note). Returns ``out``, or with
    ``stop_after`` the unfinished staging folder."""
    out = Path(out).resolve()
    check_notebooks(notebooks_dir, job.notebooks)
    last = job.notebooks.index(notebook_named(stop_after)) if stop_after else len(job.notebooks) - 1
    check_destination(out, job.kind)
    with RunLock(out, job.what):
        progress("checking the dataset and parameters")
        check_inputs(next(iter(job.runs.values())), job.compare)
        staging = open_staging(out, job.kind, job.runs, resume)
        runner(
            pending_runs(job, staging, job.notebooks[: last + 1], progress),
            notebooks_dir,
            progress,
            progress_bar,
        )
        if stop_after:
            return staging
        if job.finish:
            job.finish(staging)
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
        advice = "a run folder keeps the parameters it was made with: for a run with these, use --out NEW"
        check_made_with(out, cfg, given, advice=advice)
        staging = rerun_folder(out)
        try:
            copy_for_rerun(out, staging)
            run_notebooks(staging, names, cfg, Path(notebooks_dir), progress, progress_bar, again=True)
        except NotebookFailed:
            raise  # its executed notebook stays in the copy, to read
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            where = error.filename or staging
            raise WriteFailed(f"--only: cannot write {where} ({error.strerror})") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of the attempt is left
            raise
        swap_into_place(staging, out)
    return out
