"""Batch reproduction: run the notebooks headless with papermill into one run folder.

The notebooks run in a staging folder beside the target (``.NAME.partial``). Only when all
of them succeed does the staging folder replace the target, so a failed or interrupted run
never damages an earlier run folder; the failed one stays for inspection.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from bcnb.config import CONFIG_FILE, Config
from bcnb.datasets import dataset_path, load_dataset, split_by_patient

NOTEBOOKS = ("01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_evaluate.ipynb",
             "05_compare_backbones.ipynb", "06_predict.ipynb")  # fmt: skip
# 05 trains every backbone again: it runs only when asked for (bcnb reproduce --compare).
COMPARISON = "05_compare_backbones.ipynb"
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
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
    split_by_patient(load_dataset(cfg).table, cfg.val_fraction, cfg.test_fraction, cfg.seed)


@contextmanager
def _native_stderr_silenced():
    """Hide TensorFlow's C++ start-up lines (CUDA probing), which bypass Python's streams
    and TF_CPP_MIN_LOG_LEVEL, so that a bad input still ends in one line."""
    with _native_stderr_to(Path(os.devnull)):
        yield


@contextmanager
def _native_stderr_to(path: Path):
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
    last = notebook_named(stop_after) if stop_after else chosen[-1]
    out = Path(out).resolve()
    notebooks_dir = Path(notebooks_dir)
    missing = [name for name in chosen if not (notebooks_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"notebooks: {notebooks_dir} lacks {', '.join(missing)}")
    # Paths in the parameters must not depend on the kernels' working folder.
    if cfg.dataset != "synthetic":
        cfg = cfg.replace(dataset=str(dataset_path(cfg)))
    if cfg.weights.lower() not in {"imagenet", "none"}:
        cfg = cfg.replace(weights=str(Path(cfg.weights).expanduser().resolve()))
    # Headless: no front end draws widgets, so the notebooks show their static equivalents.
    cfg = cfg.replace(interactive=False)
    progress("checking the dataset and parameters")
    check_inputs(cfg, compare)
    staging = out.parent / f".{out.name}.partial"
    if resume:
        check_resumable(staging, cfg)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True, exist_ok=True)
    with _native_stderr_to(staging / "notebooks" / KERNEL_LOG):
        for number, name in enumerate(chosen, start=1):
            progress(f"[{number}/{len(chosen)}] {name}")
            target = staging / "notebooks" / name
            _execute(notebooks_dir / name, target, cfg.replace(run_dir=str(staging)), progress_bar)
            if name == last and stop_after:
                return staging
    _swap_into_place(staging, out)
    return out


def notebook_named(name: str) -> str:
    """The notebook ``name`` stands for: "02_model", "02_model.ipynb" or "02"."""
    matches = [notebook for notebook in NOTEBOOKS if notebook == name or notebook.split("_")[0] == name
               or notebook.removesuffix(".ipynb") == name]  # fmt: skip
    if not matches:
        raise ValueError(f"--stop-after: expected one of {', '.join(NOTEBOOKS)}, got {name!r}")
    return matches[0]


def run_folder(out: str | Path) -> Path:
    """A finished run folder, or else the unfinished (staging) one of the same name."""
    out = Path(out).resolve()
    staging = out.parent / f".{out.name}.partial"
    return staging if not (out / CONFIG_FILE).is_file() and (staging / CONFIG_FILE).is_file() else out


def check_resumable(staging: Path, cfg: Config) -> None:
    """An interrupted run to resume must exist and must have used the same parameters."""
    if not staging.is_dir():
        raise FileNotFoundError(f"--resume: no interrupted run to resume ({staging} does not exist)")
    saved = staging / CONFIG_FILE
    if not saved.is_file():
        return  # interrupted before notebook 01 saved its parameters: nothing to compare
    before = Config.from_file(saved, run_dir=cfg.run_dir).to_dict()
    changed = [
        f"{key}: {before[key]!r} -> {value!r}" for key, value in cfg.to_dict().items() if before[key] != value
    ]
    if changed:
        raise ValueError(
            f"--resume: the interrupted run in {staging} used other parameters ({'; '.join(changed)}); "
            "run without --resume to start afresh"
        )


def _execute(source: Path, target: Path, cfg: Config, progress_bar: bool) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Quieter TensorFlow in the kernels; they inherit this process' environment.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        papermill.execute_notebook(
            str(source),
            str(target),
            parameters=cfg.to_dict(),
            cwd=str(source.parent),
            progress_bar=progress_bar,
            kernel_name="python3",
            # The kernel's own start-up warnings (e.g. about its local TCP sockets) are noise here.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as error:
        raise NotebookFailed(
            f"{source.name} failed at cell {error.exec_count}: {error.ename}: {error.evalue.strip()} "
            f"(executed notebook kept in {target})"
        ) from None


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging``; the old run is removed only after the swap."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)
