"""Batch sweeps: the pipeline for every combination of some parameters, and one table.

``bcnb sweep --out DIR --grid magnification=40X,100X,200X,400X --grid backbone=resnet50v2,vgg19``
runs one complete run folder per combination (``DIR/backbone=vgg19,magnification=40X``), or a
cross-validation per combination with ``--folds K``. Magnification-specific models, as BreakHis
papers report them, are a sweep over ``magnification``.

Run again, a sweep goes on where it stopped: a finished cell (its report or summary is there)
is kept, a cell cut short goes on from what it had finished (its folds, its training
checkpoint), as ``--resume`` would. Both must have been made with the cell's parameters, else
the sweep stops and says so. ``sweep.md`` and ``sweep.csv`` hold one row per finished cell.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bcnb.config import Config, parse_override
from bcnb.files import write_text_atomic
from bcnb.runfolder import RunLock

TABLE = "sweep"  # sweep.md, sweep.csv
SHOWN = ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate")


def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """``["magnification=40X,100X", ...]`` -> {"magnification": ["40X", "100X"], ...}, each value
    typed and checked like ``--set`` (an unknown parameter or a bad value: ValueError)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not values.strip():
            raise ValueError(f"--grid {text!r}: expected key=value1,value2,...")
        if key.strip() in grid:
            raise ValueError(f"--grid: {key.strip()} is given twice")
        parsed = [parse_override(f"{key}={value.strip()}") for value in values.split(",") if value.strip()]
        grid[parsed[0][0]] = [value for _, value in parsed]
    return grid


def cells(cfg: Config, grid: dict[str, list[Any]]) -> dict[str, Config]:
    """Every combination, by folder name (``key=value,key=value``, keys in alphabetical order);
    each is checked as a whole Config, so a bad value stops the sweep before it starts."""
    keys = sorted(grid)
    found = {}
    for values in itertools.product(*(grid[key] for key in keys)):
        changes = dict(zip(keys, values))
        try:
            found[",".join(f"{key}={value}" for key, value in changes.items())] = cfg.replace(**changes)
        except ValueError as error:
            raise ValueError(f"--grid: {error}") from None
    return found


def run_sweep(
    cfg: Config,
    out: str | Path,
    grid: dict[str, list[Any]],
    folds: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    run_cell: Callable[[Config, Path], Path] | None = None,
) -> Path:
    """Run every unfinished cell into ``out``, then write the table; return ``out``."""
    out = Path(out).resolve()
    todo = cells(cfg, grid)
    run_cell = run_cell or _cell_runner(folds, progress)
    with RunLock(out, "bcnb sweep"):
        for number, (name, cell_cfg) in enumerate(todo.items(), start=1):
            if finished(out / name):
                check_made_with(out / name, cell_cfg)
                progress(f"[{number}/{len(todo)}] {name}: finished before, kept")
                continue
            progress(f"[{number}/{len(todo)}] {name}")
            run_cell(cell_cfg, out / name)
        write_table(out, sweep_table(out, todo, grid))
    return out


def _cell_runner(folds: int, progress) -> Callable[[Config, Path], Path]:
    from bcnb.reproduce import staging_folder

    def run(cell_cfg: Config, folder: Path) -> Path:
        cut_short = staging_folder(folder).is_dir()  # go on with what it had finished
        if folds:
            from bcnb.crossval import run_protocol

            return run_protocol(cell_cfg, folder, folds=folds, progress=progress, resume=cut_short)
        from bcnb.reproduce import reproduce

        return reproduce(cell_cfg, folder, progress=progress, resume=cut_short)

    return run


def check_made_with(folder: Path, cell_cfg: Config) -> None:
    """A finished cell kept by a sweep must have been made with the cell's parameters."""
    from bcnb.reproduce import headless
    from bcnb.runfolder import RecordMismatch, differences, read_record

    record = (
        folder / "config.yaml" if (folder / "config.yaml").is_file() else next(folder.glob("*/config.yaml"))
    )
    made_with = read_record(record.parent)
    expected = headless(cell_cfg)
    changed = differences(made_with, expected, [k for k in made_with if k not in ("folds", "fold")])
    if changed:
        raise RecordMismatch(
            f"--out: {folder} was made with {', '.join(changed)}; a sweep keeps its finished cells: "
            "for other parameters, use another --out"
        )


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

    from bcnb.evaluate import load_metrics
    from bcnb.train import load_history

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
    from bcnb.report import markdown_table

    write_text_atomic(out / f"{TABLE}.csv", table.to_csv(index=False))
    note = (
        "One row per finished cell. Choose between cells by the validation loss; the test figures "
        "(at the paper's threshold of 0.5; mean +- sd over the runs with --folds) are to report."
    )
    write_text_atomic(out / f"{TABLE}.md", "\n\n".join(["# bcnb sweep", note, markdown_table(table)]) + "\n")
