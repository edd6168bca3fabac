"""Colab: the setup cell of every notebook, and the badges, from pyproject.toml's address."""

import importlib.machinery
import importlib.util
import sys
import tomllib
import types

import nbformat
import pytest

from bcnb.reproduce import NOTEBOOKS, NOTEBOOKS_DIR, ROOT_DIR

sys.path.insert(0, str(ROOT_DIR / "scripts"))
import colab_badges  # noqa: E402

ADDRESS = tomllib.loads((ROOT_DIR / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _setup_cell(name):
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    (cell,) = [c for c in notebook.cells if "colab-setup" in c.metadata.get("tags", [])]
    return cell.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_setup_cell_does_nothing_outside_colab(name, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("subprocess.run", lambda *args, **kwargs: ran.append(args))
    exec(_setup_cell(name), {})
    assert ran == [] and capsys.readouterr().out == ""


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_on_colab_it_installs_bcnb_without_replacing_tensorflow(name, monkeypatch, capsys):
    widgets = []
    colab = types.ModuleType("google.colab")
    colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: widgets.append("on"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n: None if n == "bcnb" else real(n)
    )  # not installed yet
    ran = []
    monkeypatch.setattr("subprocess.run", lambda command, **kwargs: ran.append(command))
    exec(_setup_cell(name), {})
    assert ran == [[sys.executable, "-m", "pip", "install", "-q", "--no-deps", f"git+{ADDRESS}"]]
    assert widgets == ["on"] and capsys.readouterr().out.startswith("GPU: ")


def test_badges_come_from_the_one_address():
    assert colab_badges.repository() == ADDRESS
    for text in [
        (ROOT_DIR / "README.md").read_text(),
        *(nbformat.read(NOTEBOOKS_DIR / n, as_version=4).cells[0].source for n in NOTEBOOKS),
    ]:
        assert colab_badges.BADGE_MARK in text
    assert "not yet, bcnb has no public GitHub address" in colab_badges.badge("02_model.ipynb", ADDRESS)
    link = colab_badges.badge("02_model.ipynb", "https://github.com/someone/bcnb")
    assert "colab.research.google.com/github/someone/bcnb/blob/main/notebooks/02_model.ipynb" in link


def test_the_stored_files_are_what_the_script_writes(tmp_path):
    """Nobody edited a badge or a setup cell by hand: the script would write the same."""
    for name in NOTEBOOKS:
        copy = tmp_path / name
        copy.write_text((NOTEBOOKS_DIR / name).read_text())
        colab_badges.update_notebook(copy, ADDRESS)
        assert nbformat.read(copy, as_version=4) == nbformat.read(NOTEBOOKS_DIR / name, as_version=4), name
