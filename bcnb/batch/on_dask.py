"""A protocol's runs and a sweep's cells on a Dask cluster: ``--dask SCHEDULER``.

A sweep of 20 settings x 5 folds is 100 runs of notebooks 01-04: more than one machine should
do one after the other. Here each run is a Dask task: a worker executes the run's notebooks
(:func:`bcnb.batch.notebooks.run_notebooks`, in the kernel it keeps for its runs) into the run's folder in
the staging folder. Everything that makes the result one result stays with this process, the
driver: the lock on the destination, each run's record (written before the run is handed
out), the summary and the final swap (:func:`bcnb.batch.reproduce.build`).

- The first run goes alone: it extracts the features every other run then takes from its
  cache (:func:`bcnb.run.staging.share_features`), so they are extracted once.
- A worker that dies mid-run has its task given to another worker by the scheduler; the run
  starts again from notebook 01 in the same folder, as ``--resume`` goes on with a run cut
  short (training carries on from its checkpoint), so it ends as it would have.
- The workers find the notebooks, the data and the staging folder by path: on a cluster they
  must share the file system with the driver. Each worker should run one task at a time
  (one thread): a run redirects its process' standard error into its own kernels.log.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from bcnb.batch.notebooks import NotebookFailed
from bcnb.batch.reproduce import Runner, RunTask
from bcnb.config import Config


def runner_on(client) -> Runner:
    """A runner (see :func:`bcnb.batch.reproduce.build`) that hands runs to ``client``'s workers."""

    def run_on_cluster(tasks: list[RunTask], notebooks_dir: Path, progress, progress_bar: bool) -> None:
        if not tasks:
            return
        first, rest = tasks[:1], tasks[1:]
        if rest:
            progress(f"{first[0].label}first, alone: the other runs take its features")
        _run_all(client, first, notebooks_dir, progress)
        _run_all(client, rest, notebooks_dir, progress)

    return run_on_cluster


def _run_all(client, tasks: list[RunTask], notebooks_dir: Path, progress: Callable[[str], None]) -> None:
    """Prepare each run here, hand them all out, and wait for every one (the first failure
    cancels the rest and is raised here, as a failed notebook is on one machine)."""
    from dask.distributed import as_completed

    futures = {}
    for task in tasks:
        task.prepare()
        args = (str(task.folder), task.notebooks, task.cfg.to_dict(), str(notebooks_dir), task.magnifications)
        futures[client.submit(run_on_worker, *args, pure=False)] = task
    try:
        for done, future in enumerate(as_completed(futures), start=1):
            where = _result(future, futures[future])
            progress(f"{futures[future].label}done on {where} ({done} of {len(futures)} handed out)")
    except BaseException:
        client.cancel(list(futures))
        raise


def _result(future, task: RunTask) -> str:
    """The task's result; a run whose workers kept dying is a failed run, said in one line."""
    from dask.distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        raise NotebookFailed(
            f"{task.folder.name}: the Dask workers running it died, again and again (KilledWorker); "
            "its folder is kept: run the same command with --resume to go on"
        ) from None


def run_on_worker(
    folder: str, notebooks: list[str], values: dict, notebooks_dir: str, magnifications: tuple[str, ...] = ()
) -> str:
    """On a worker: the run's notebooks into ``folder``, then its models of one magnification;
    returns where they ran."""
    from bcnb.batch.magnifications import one_thread_for_heads, train_magnification_models

    cfg = Config(**values)
    if notebooks:
        _notebooks_on_worker(Path(folder), notebooks, cfg, Path(notebooks_dir))
    if magnifications:
        one_thread_for_heads()  # the worker's process trains nothing larger (its kernels do)
        train_magnification_models(Path(folder), cfg, magnifications)
    return f"{socket.gethostname()} (process {os.getpid()})"


def _notebooks_on_worker(folder: Path, notebooks: list[str], cfg: Config, notebooks_dir: Path) -> None:
    from bcnb.batch.notebooks import run_kernel, run_notebooks

    # The worker's own kernel where it is free (one task at a time, as advised); a second
    # task of a worker with more threads gets a kernel of its own.
    mine = _WORKER_KERNEL_FREE.acquire(blocking=False)
    try:
        with run_kernel(_worker_kernel() if mine else None) as kernel:
            run_notebooks(folder, notebooks, cfg, notebooks_dir, kernel=kernel)
    finally:
        if mine:
            _WORKER_KERNEL_FREE.release()


# A worker process runs all the runs it is given in one kernel, as a protocol run on one
# machine does (:class:`bcnb.batch.notebooks.RunKernel`): TensorFlow is imported once per
# worker instead of once per run. It is shut down when the worker process exits.
_WORKER_KERNEL: list = []
_WORKER_KERNEL_FREE = threading.Lock()


def _worker_kernel():
    """This worker process' kernel: started for its first run, kept for the next, started
    again if it died (a notebook that crashed it)."""
    from bcnb.batch.notebooks import RunKernel

    if _WORKER_KERNEL and not _WORKER_KERNEL[0].is_alive():
        _WORKER_KERNEL.pop().shutdown()
    if not _WORKER_KERNEL:
        _WORKER_KERNEL.append(RunKernel())
        atexit.register(_WORKER_KERNEL[0].shutdown)
    return _WORKER_KERNEL[0]
