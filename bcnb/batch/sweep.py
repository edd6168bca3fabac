"""Batch sweeps: the pipeline for every combination of some parameters, and one table.

``bcnb sweep --out DIR --grid magnification=40X,100X,200X,400X --grid backbone=resnet50v2,vgg19``
runs one complete run folder per combination (``DIR/backbone=vgg19,magnification=40X``), or a
cross-validation per combination with ``--folds K``. Magnification-specific models, as BreakHis
papers report them, are a sweep over ``magnification``.

Run again, a sweep goes on where it stopped: a finished cell (its report or summary is there)
is kept, a cell cut short goes on from what it had finished (its folds, its training
checkpoint), as ``--resume`` would. Both must have been made with the cell's parameters (a
single run for a cell without ``--folds``, a protocol of those folds with it), else the sweep
stops and says so. Cell folders are safe names inside ``DIR`` whatever the values (see
:func:`cell_name`), and ``DIR`` itself must be a sweep's folder, or new or empty.
``sweep.md`` and ``sweep.csv`` hold one row per finished cell.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from bcnb.config import PRESENTATION, Config, parse_override
from bcnb.run.artifacts import SWEEP_TABLE
from bcnb.run.files import write_text_atomic
from bcnb.run.folder import check_destination, start_folder
from bcnb.run.lock import RunLock
from bcnb.run.record import check_runs_made_with

SHOWN = ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate")
# A grid multiplies: past this many cells, --max-cells says the size was meant.
MAX_CELLS = 200
NAME_LIMIT = 150  # characters of a cell's folder name before its hash (file systems allow 255 bytes)


def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """``["magnification=40X,100X", ...]`` -> {"magnification": ["40X", "100X"], ...}, each value
    typed and checked like ``--set`` (an unknown parameter or a bad value: ValueError)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, values = (part.strip() for part in text.partition("="))
        listed = [value.strip() for value in values.split(",") if value.strip()]
        if not sep or not key or not listed:
            raise ValueError(f"--grid {text!r}: expected key=value1,value2,... (a parameter and its values)")
        if key in grid:
            raise ValueError(f"--grid: {key} is given twice")
        if key in PRESENTATION:
            raise ValueError(f"--grid: {key} changes how a run is shown, not the run: it cannot be swept")
        grid[key] = [parse_override(f"{key}={value}")[1] for value in listed]
    return grid


def cells(cfg: Config, grid: dict[str, list[Any]], max_cells: int = MAX_CELLS) -> dict[str, Config]:
    """Every combination, by folder name (``key=value,key=value``, keys in alphabetical order);
    each is checked as a whole Config, so a bad value stops the sweep before it starts."""
    keys = sorted(grid)
    count = math.prod(len(grid[key]) for key in keys)
    if count > max_cells:
        sizes = " x ".join(str(len(grid[key])) for key in keys)
        raise ValueError(
            f"--grid: {count} cells ({sizes}), over {max_cells}: to run them all, add --max-cells {count}"
        )
    by_name = {}
    for values in itertools.product(*(grid[key] for key in keys)):
        changes = dict(zip(keys, values))
        try:
            by_name[cell_name(changes)] = cfg.replace(**changes)
        except ValueError as error:
            raise ValueError(f"--grid: {error}") from None
    return by_name


def cell_name(changes: dict[str, Any]) -> str:
    """A cell's folder name, one name inside the sweep's folder whatever the values hold: other
    characters than letters, digits and ``.+-_`` become ``_`` (``../x.png`` -> ``.._x.png``),
    and a name so changed, or too long, ends with a hash of the real values to stay unique."""
    readable = ",".join(f"{key}={value}" for key, value in changes.items())
    safe = re.sub(r"[^A-Za-z0-9.+_=,-]", "_", readable)
    if safe == readable and len(safe) <= NAME_LIMIT:
        return safe
    digest = hashlib.sha256(readable.encode()).hexdigest()[:10]
    return f"{safe[:NAME_LIMIT]}~{digest}"


def run_sweep(
    cfg: Config,
    out: str | Path,
    grid: dict[str, list[Any]],
    folds: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    run_cell: Callable[[Config, Path], Path] | None = None,
    max_cells: int = MAX_CELLS,
    runner=None,
) -> Path:
    """Run every unfinished cell into ``out``, then write the table; return ``out``.

    ``runner`` carries out each cell's runs (one after the other here by default; see
    :func:`bcnb.batch.on_dask.runner_on`). With one, the cells go side by side: each is still
    built by this process (its lock, record and swap), while the workers run the notebooks."""
    from bcnb.batch.reproduce import one_kernel_runner
    from bcnb.run.staging import staging_folder

    out = Path(out).resolve()
    todo = cells(cfg, grid, max_cells)
    check_destination(out, "sweep")
    # Here, one cell after the other, every cell's runs share one kernel (imports once).
    cells_runner = nullcontext(runner) if runner or run_cell else one_kernel_runner()
    with RunLock(out, "bcnb sweep"), cells_runner as each_run:
        run_cell = run_cell or _cell_runner(folds, progress, each_run)
        start_folder(out, "sweep")
        unfinished = {}
        for number, (name, cell_cfg) in enumerate(todo.items(), start=1):
            folder = out / name
            if finished(folder):
                check_cell(folder, cell_cfg, folds)
                progress(f"[{number}/{len(todo)}] {name}: finished before, kept")
                continue
            if staging_folder(folder).is_dir():  # cut short before: it goes on, if it is this cell's
                check_cell(staging_folder(folder), cell_cfg, folds)
            unfinished[f"[{number}/{len(todo)}] {name}"] = (cell_cfg, folder)
        run_cells(unfinished, run_cell, progress, side_by_side=runner is not None)
        write_table(out, sweep_table(out, todo, grid))
    return out


def run_cells(cells_to_run: dict, run_cell, progress, side_by_side: bool) -> None:
    """Build each cell: in turn, or side by side (a thread per cell that waits on its runs'
    Dask tasks). The first failure is raised once every cell has stopped; finished cells stay."""
    if not side_by_side:
        for label, (cell_cfg, folder) in cells_to_run.items():
            progress(label)
            run_cell(cell_cfg, folder)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(len(cells_to_run), 1)) as pool:
        started = {label: pool.submit(run_cell, *cell, label) for label, cell in cells_to_run.items()}
        progress(f"{len(started)} cells handed to the Dask cluster")
        failures = [future.exception() for future in started.values() if future.exception()]
    if failures:
        raise failures[0]


def _cell_runner(folds: int, outer, runner=None) -> Callable[[Config, Path], Path]:
    from bcnb.run.staging import staging_folder

    def run(cell_cfg: Config, folder: Path, label: str = "") -> Path:
        cut_short = staging_folder(folder).is_dir()  # go on with what it had finished
        progress = _labelled(outer, label)  # cells side by side: each line says whose it is
        if folds:
            from bcnb.batch.protocol import run_protocol

            return run_protocol(
                cell_cfg, folder, folds=folds, progress=progress, resume=cut_short, runner=runner
            )
        from bcnb.batch.reproduce import reproduce

        return reproduce(cell_cfg, folder, progress=progress, resume=cut_short, runner=runner)

    return run


def _labelled(progress: Callable[[str], None], label: str) -> Callable[[str], None]:
    if not label:
        return progress

    def say(message: str) -> None:
        progress(f"{label} {message}")

    return say


def check_cell(folder: Path, cell_cfg: Config, folds: int) -> None:
    """A finished cell kept by a sweep must be what the cell asks for: a K-fold protocol with
    ``folds``, a single run without, every run in it made with the cell's parameters."""
    from bcnb.batch.protocol import protocol_runs
    from bcnb.batch.reproduce import headless

    expected = headless(cell_cfg)
    kind, runs = ("protocol", protocol_runs(expected, folds)) if folds else ("run", {"": expected})
    advice = "a sweep keeps the cells it has made: for other parameters or --folds, use another --out"
    check_runs_made_with(folder, kind, runs, f"--out: {advice}")


def finished(folder: Path) -> bool:
    """A cell whose run is complete: one run's report, or a protocol's summary."""
    return (folder / "report.md").is_file() or (folder / "summary.json").is_file()


def sweep_table(out: Path, todo: dict[str, Config], grid: dict[str, list[Any]]) -> pd.DataFrame:
    """One row per finished cell: its grid values, then its test figures (a protocol's mean
    and sd over its runs)."""
    rows = []
    for name, cell_cfg in todo.items():
        folder = out / name
        if finished(folder):
            rows.append({**{key: getattr(cell_cfg, key) for key in sorted(grid)}, **_figures(folder)})
    return pd.DataFrame(rows)


def _figures(folder: Path) -> dict[str, str]:
    """The lowest validation loss (to choose by), then the test figures (to report)."""
    import json

    from bcnb.run.artifacts import load_history, load_metrics

    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        runs = [folder / run["run"] for run in summary["runs"]]
        at_half = summary["summary"]["at_0.5"]
        test = {name: f"{at_half[name]['mean']:.3f} +- {at_half[name]['sd'] or 0:.3f}" for name in SHOWN}
    else:
        runs, metrics = [folder], load_metrics(folder)
        values = {name: metrics["test_accuracy" if name == "accuracy" else name] for name in SHOWN}
        test = {name: "n/a" if value is None else f"{value:.3f}" for name, value in values.items()}
    val_loss = sum(load_history(run)["val_loss"].min() for run in runs) / len(runs)
    return {"val loss": f"{val_loss:.4f}", **{f"test {name}": value for name, value in test.items()}}


def write_table(out: Path, table: pd.DataFrame) -> None:
    from bcnb.report.run_report import markdown_table

    write_text_atomic(out / f"{SWEEP_TABLE}.csv", table.to_csv(index=False))
    note = (
        "One row per finished cell. Choose between cells by the validation loss; the test figures "
        "(at the paper's threshold of 0.5; mean +- sd over the runs with --folds) are to report."
    )
    write_text_atomic(
        out / f"{SWEEP_TABLE}.md", "\n\n".join(["# bcnb sweep", note, markdown_table(table)]) + "\n"
    )
