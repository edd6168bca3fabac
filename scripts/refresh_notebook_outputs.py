"""Refresh notebooks/01-06: parameters cells from bcnb.Config, then the checked outputs.

Each notebook's `parameters` cell is rewritten to hold the Config fields of its own stage
(config.STAGES) at their defaults, with `interactive` where the notebook shows widgets, and
`run_dir`.
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
from bcnb.batch.notebooks import STAGE_OF_NOTEBOOK
from bcnb.config import STAGES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def parameters_source(stage: str, shows_widgets: bool) -> str:
    names = [*STAGES[stage], *(["interactive"] if shows_widgets else []), "run_dir"]
    defaults = Config().to_dict()
    lines = ["# Parameters: papermill and `bcnb reproduce` replace these values."]
    lines += [f"{name} = {_literal(defaults[name])}" for name in names]
    return "\n".join(lines)


def _literal(value) -> str:
    # json.dumps writes strings with double quotes, as ruff format wants; Python reads them.
    return json.dumps(value) if isinstance(value, str) else repr(value)


def refresh(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    code = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    parameters[0].source = parameters_source(STAGE_OF_NOTEBOOK[path.name], "cfg.interactive" in code)
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
    notebook.metadata.pop("widgets", None)  # the widgets' state from this run: bulky, not a lesson
    nbformat.write(notebook, path)


if __name__ == "__main__":
    # The notebooks' default run folder: a run made with other parameters would be refused.
    previous = NOTEBOOKS.parent / "runs" / "notebooks"
    if previous.exists():
        raise SystemExit(f"{previous} exists: remove it first (the notebooks run at their defaults afresh)")
    for notebook_path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        print(f"executing {notebook_path.name}", flush=True)
        refresh(notebook_path)
