"""Executing notebooks headless: the one place papermill runs a notebook.

Each notebook runs in its run folder's ``notebooks/`` with ``run_dir = ".."``: the executed
notebooks name no staging folder, and each can be run again in place, in JupyterLab or by
papermill, once the run is finished. A run's notebooks, and the runs of a protocol done here,
share one kernel, one after the other (:class:`RunKernel`). The kernel works on the folder this
process holds for it (one writer), and what it writes to file descriptor 2 (TensorFlow's C++
log) goes to the run's ``notebooks/kernels.log``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from bcnb.config import NOTEBOOK_OF_STAGE, Config
from bcnb.run.artifacts import EXECUTED_DIR, KERNEL_LOG
from bcnb.run.files import write_text_atomic
from bcnb.run.folder import DestinationRefused
from bcnb.run.lock import HELD_BY_PARENT
from bcnb.run.nativelog import native_stderr
from bcnb.run.record import RecordMismatch

NOTEBOOKS = tuple(NOTEBOOK_OF_STAGE.values())
# 05 trains every backbone again: it runs only when asked for (bcnb reproduce --compare).
COMPARISON = NOTEBOOK_OF_STAGE["compare"]
STAGE_OF_NOTEBOOK = {notebook: stage for stage, notebook in NOTEBOOK_OF_STAGE.items()}
ROOT_DIR = Path(__file__).resolve().parents[2]  # the project's folder, in a checkout
# The notebooks travel inside the package when it is installed (pip install .); in a checkout
# (and an editable install) they are the project's notebooks/.
_PACKAGED = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS_DIR = _PACKAGED if _PACKAGED.is_dir() else ROOT_DIR / "notebooks"
# A notebook's run folder, as the executed notebook names it: the folder it lies in is
# RUN/notebooks, so ".." is RUN wherever the run is moved (staging, then its final name).
RUN_DIR_FROM_NOTEBOOK = ".."


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""


class WriteFailed(DestinationRefused):
    """A file could not be written (disk full, read-only, no permission)."""


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
    kernel: RunKernel | None = None,
) -> None:
    """Execute ``names`` in order into ``folder/notebooks``, the kernel working on ``folder``
    (which this process holds for it) with its C++ log in ``kernels.log``: ``kernel``, which
    may have run other runs' notebooks, or one started for this run.

    Each executed notebook takes its name only once it has run to its end. A notebook that
    raises stops the job (NotebookFailed, the executed notebook kept for inspection); a file
    that cannot be written (disk full, read-only) stops it too (WriteFailed, one line).
    """
    target_dir = folder / EXECUTED_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    with run_kernel(kernel) as kernel, kernels_work_in(folder), native_stderr(target_dir / KERNEL_LOG):
        for number, name in enumerate(names, start=1):
            where = f" (again, in {folder.name})" if again else ""
            progress(f"{label}[{number}/{len(names)}] {name}{where}")
            running = target_dir / f".{name}.running.ipynb"
            try:
                kernel.next_notebook(folder)
                execute(notebooks_dir / name, running, cfg, progress_bar, kernel.manager)
            except NotebookFailed:
                os.replace(running, target_dir / name)  # the failed notebook, to read
                raise
            except BaseException:
                running.unlink(missing_ok=True)
                raise
            record_final_name(running, name)
            os.replace(running, target_dir / name)


@contextmanager
def run_kernel(given: RunKernel | None = None):
    """``given``, left running for its owner; or a :class:`RunKernel` for one run's notebooks
    (or a protocol's runs), shut down however they end."""
    if given is not None:
        yield given
        return
    kernel = RunKernel()
    try:
        yield kernel
    finally:
        kernel.shutdown()


# Run in a shared kernel between two notebooks: the namespace emptied, then what the process
# still remembers of the previous notebook forgotten, and the kernel moved to the run folder of
# the next (begin_like_a_new_kernel).
FRESH_START = """%reset -f
import bcnb.batch.notebooks as _notebooks
_notebooks.begin_like_a_new_kernel({run_folder!r})
del _notebooks
"""


def begin_like_a_new_kernel(run_folder: str | None = None) -> None:
    """Forget, in this kernel, what the previous notebook left beyond its variables; with
    ``run_folder``, work there next, as a kernel started for that run would.

    Keras' session is cleared (layer names numbered from the start), and TensorFlow's count
    of recent retracings emptied (:func:`bcnb.model.transfer.forget_retracings`): the models
    of 03 and of 04 would add up to a warning that neither notebook gives in a kernel of its own.
    """
    import sys

    if run_folder is not None:
        work_in(Path(run_folder))
    if "keras" in sys.modules:  # %reset has just collected the garbage: no second gc pass
        sys.modules["keras"].backend.clear_session(free_memory=False)
    if "tensorflow" in sys.modules:
        from bcnb.model.transfer import forget_retracings

        forget_retracings()


def work_in(run_folder: Path) -> None:
    """In a kernel that ran another run's notebooks: the working folder, the folder held for it
    (:func:`kernels_work_in`) and its C++ log become those a kernel started for ``run_folder``
    would have been given."""
    import sys

    notebooks = run_folder / EXECUTED_DIR
    os.chdir(notebooks)
    os.environ[HELD_BY_PARENT] = str(run_folder.resolve())
    # ipykernel (on Linux and macOS) reads file descriptor 2 through a pipe of its own and
    # passes what it reads on to its copy of the descriptor it was started with: that copy is
    # what must now be the log. Without the pipe, descriptor 2 itself is.
    copy = getattr(sys.stderr, "_original_stdstream_copy", None)
    with open(notebooks / KERNEL_LOG, "ab") as log:
        os.dup2(log.fileno(), 2 if copy is None else copy)


class RunKernel:
    """One kernel for a run's notebooks, one notebook after the other.

    A kernel of its own per notebook would start Python and import TensorFlow, Keras and bcnb
    again for each (several seconds each on 2 cores, four or six times a run, a hundred times
    in a per-magnification protocol). Here they are imported once, for all the runs given to
    it. Each notebook still starts as in a kernel of its own: the namespace the previous one
    left is emptied, Keras' session cleared and the kernel moved to the notebook's run folder
    (``FRESH_START``), and its first cell seeds every generator
    (:func:`bcnb.run.seeds.seed_everything`), so it sees no variable, layer name or random state
    of the one before, and the executed notebooks are those of separate kernels.
    """

    def __init__(self) -> None:
        from jupyter_client.manager import AsyncKernelManager

        # nbclient starts it, in the notebook's folder, for the first notebook and leaves it
        # running for the next: a kernel manager it did not make is not its to shut down.
        self.manager = AsyncKernelManager(kernel_name="python3")
        self._notebooks = 0
        self._client = None  # ours, for FRESH_START: connected once (a connection waits ~0.2 s)

    def next_notebook(self, run_folder: Path | None = None) -> None:
        """Empty the namespace the previous notebook left, if any, and move to ``run_folder``
        (the kernel's first notebook starts it there)."""
        if self._notebooks and self.manager.has_kernel:
            fresh_start = FRESH_START.format(run_folder=run_folder and str(run_folder))
            self._connected().execute_interactive(fresh_start, store_history=False, timeout=60)
        self._notebooks += 1

    def _connected(self):
        if self._client is None:
            from jupyter_client import BlockingKernelClient

            client = BlockingKernelClient()
            client.load_connection_info(self.manager.get_connection_info())
            client.start_channels()
            client.wait_for_ready(timeout=60)
            self._client = client
        return self._client

    def is_alive(self) -> bool:
        """False once its kernel has died; True before the first notebook starts one."""
        if not self.manager.has_kernel:
            return True
        from jupyter_core.utils import run_sync

        return run_sync(self.manager.is_alive)()

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
        if self.manager.has_kernel:
            from jupyter_core.utils import run_sync

            run_sync(self.manager.shutdown_kernel)(now=True)


def record_final_name(executed: Path, name: str) -> None:
    """Papermill records where it wrote the notebook: the temporary name in the staging folder.
    Record the name it is read under instead, relative to the folder it lies in (the run
    folder moves; the notebook's place in it does not)."""
    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata.setdefault("papermill", {})["output_path"] = name
    write_text_atomic(executed, nbformat.writes(notebook) + "\n")


def ran_to_its_end(folder: Path, name: str) -> bool:
    """Whether the executed ``name`` in ``folder`` ran to its end. A failed notebook is kept
    under its name too (to read); only a finished one has that name recorded in it."""
    executed = folder / EXECUTED_DIR / name
    try:
        papermill = json.loads(executed.read_text(encoding="utf-8"))["metadata"]["papermill"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return papermill.get("output_path") == name and not papermill.get("exception")


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


def execute(source: Path, target: Path, cfg: Config, progress_bar: bool, kernel_manager=None) -> None:
    """Run one notebook with the parameters its own cell names (the rest are in the record),
    in the folder of ``target``, which lies in the run folder's ``notebooks/``, in the kernel of
    ``kernel_manager`` (a :class:`RunKernel`'s; a kernel of its own without one)."""
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
            km=kernel_manager,
            # Written once, when it ends (or fails): papermill would otherwise write the whole
            # notebook, figures and all, as each cell starts and again as it ends.
            request_save_on_cell_execute=False,
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
    match = re.match(r"\[Errno (\d+)\]", evalue.strip())
    return ename in ("OSError", "PermissionError") and bool(match) and int(match[1]) in _WRITE_ERRORS
