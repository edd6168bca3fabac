"""Write the "Open in Colab" badges and the Colab setup cells from pyproject.toml's address.

The project's public address lives in one place, ``[project.urls] Repository``. This script
puts it into the README's badge line, a badge at the top of each notebook, and each notebook's
first code cell, which installs bcnb on Colab only. Run it whenever the address changes:

    .venv/bin/python scripts/colab_badges.py

Colab opens notebooks straight from GitHub, so badges need a github.com address. Until there
is one, the badge's place holds only an HTML comment saying what to set: a student has nothing
to do about it, and the rendered notebook shows nothing there.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
MARK = "colab badge: scripts/colab_badges.py"  # finds the line to replace, whatever it says
BADGE_MARK = f"<!-- {MARK} -->"
SETUP_TAG = "colab-setup"
SETUP = """# Colab only (elsewhere this cell does nothing): bcnb beside Colab's TensorFlow and Keras.
import importlib.util
import shutil
import subprocess
import sys

REPOSITORY = "{repository}"  # pyproject.toml [project.urls]
if importlib.util.find_spec("google.colab"):
    if importlib.util.find_spec("bcnb") is None:  # --no-deps keeps Colab's own TensorFlow
        install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"git+{{REPOSITORY}}"]
        subprocess.run(install, check=True)
    from google.colab import output

    output.enable_custom_widget_manager()  # the notebooks' widgets render in Colab
    print("GPU:", "yes" if shutil.which("nvidia-smi") else "none (Runtime > Change runtime type)")"""


def repository() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def badge(notebook: str, address: str) -> str:
    """The badge line for one notebook (or the README, notebook="").

    The line must render as Markdown: a line that *starts* with an HTML comment is an HTML
    block, shown verbatim up to its end, so the comment comes after the badge, or alone.
    """
    found = re.match(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", address)
    if not found:
        return (
            f"<!-- {MARK}: no Colab badge until bcnb has a public GitHub address; set "
            "[project.urls] Repository in pyproject.toml, then run this script -->"
        )
    target = f"notebooks/{notebook}" if notebook else "notebooks/01_data.ipynb"
    link = f"https://colab.research.google.com/github/{found[1]}/blob/main/{target}"
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link}) {BADGE_MARK}"
    )


def with_badge(text: str, line: str) -> str:
    """``text`` with its badge line replaced, or inserted after its first heading."""
    lines = text.splitlines()
    kept = [current for current in lines if MARK not in current]
    heading = next(i for i, current in enumerate(kept) if current.startswith("# "))
    return "\n".join([*kept[: heading + 1], "", line, *kept[heading + 1 :]]).replace("\n\n\n", "\n\n")


def update_notebook(path: Path, address: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].source = with_badge(notebook.cells[0].source, badge(path.name, address))
    setup = [cell for cell in notebook.cells if SETUP_TAG in cell.metadata.get("tags", [])]
    if not setup:
        setup = [nbformat.v4.new_code_cell(metadata={"tags": [SETUP_TAG]})]
        notebook.cells.insert(1, setup[0])
    setup[0].source = SETUP.format(repository=address)
    setup[0].outputs, setup[0].execution_count = [], None
    nbformat.write(notebook, path)


def main() -> None:
    address = repository()
    readme = ROOT / "README.md"
    readme.write_text(with_badge(readme.read_text(), badge("", address)) + "\n")
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        update_notebook(path, address)
        print(f"{path.name}: badge and Colab setup cell for {address}")


if __name__ == "__main__":
    main()
