"""Refresh notebooks/01-06: parameters cells from bcnb.Config, then the checked outputs.

Each notebook's `parameters` cell is rewritten to hold every Config field at its default.
The notebooks are then executed with those defaults, and they keep the outputs of cells
marked `# NBVAL_CHECK_OUTPUT` (small, deterministic facts that nbval compares in CI) and
nothing else: no figures, no logs. Run it after changing a notebook, Config, or anything
those outputs depend on:

    .venv/bin/python scripts/refresh_notebook_outputs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from bcnb import Config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def parameters_source() -> str:
    lines = ["# Parameters: papermill and `bcnb reproduce` replace these values."]
    lines += [f"{name} = {_literal(value)}" for name, value in Config().to_dict().items()]
    return "\n".join(lines)


def _literal(value) -> str:
    # json.dumps writes strings with double quotes, as ruff format wants; Python reads them.
    return json.dumps(value) if isinstance(value, str) else repr(value)


def refresh(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters[0].source = parameters_source()
    NotebookClient(
        notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if CHECK_MARK not in cell.source:
            # nbval treats a cell with outputs but no execution count as broken, so only
            # the checked cells keep both.
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for notebook_path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        print(f"executing {notebook_path.name}", flush=True)
        refresh(notebook_path)
