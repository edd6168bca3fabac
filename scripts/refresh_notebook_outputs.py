"""Re-execute notebooks/01-04 with their default parameters and store only checked outputs.

The committed notebooks carry the outputs of cells marked `# NBVAL_CHECK_OUTPUT` (small,
deterministic facts that nbval compares in CI) and nothing else: no figures, no logs.
Run it after changing a notebook or anything those outputs depend on:

    .venv/bin/python scripts/refresh_notebook_outputs.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def refresh(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
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
