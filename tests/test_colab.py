"""Colab: the setup cell of every notebook, and the badges, from pyproject.toml's address."""

import html.parser
import importlib.machinery
import importlib.util
import sys
import tomllib
import types

import mistune  # nbconvert's Markdown renderer
import nbformat
import pytest
from markdown_it import MarkdownIt  # CommonMark

from bcnb.batch.notebooks import NOTEBOOKS, NOTEBOOKS_DIR, ROOT_DIR

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
        assert colab_badges.MARK in text
    # no public address: only an HTML comment, for whoever maintains the project
    unpublished = colab_badges.badge("02_model.ipynb", ADDRESS)
    assert unpublished.startswith("<!--") and unpublished.endswith("-->") and unpublished.count("-->") == 1
    link = colab_badges.badge("02_model.ipynb", "https://github.com/someone/bcnb")
    assert "colab.research.google.com/github/someone/bcnb/blob/main/notebooks/02_model.ipynb" in link


class _Shown(html.parser.HTMLParser):
    """What a reader sees of rendered HTML: its text (comments are not shown) and its links."""

    def __init__(self):
        super().__init__()
        self.text, self.links = [], []

    def handle_data(self, data):
        self.text.append(data)

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])


def _rendered(markdown, renderer):
    """``markdown`` as a reader sees it, rendered as CommonMark (JupyterLab's marked follows
    it) or by mistune (nbconvert's HTML)."""
    if renderer == "commonmark":
        page = MarkdownIt("commonmark").render(markdown)
    else:
        page = mistune.html(markdown)
    shown = _Shown()
    shown.feed(page)
    return "".join(shown.text), shown.links


@pytest.mark.parametrize("renderer", ["commonmark", "mistune"])
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_first_cell_renders_without_a_maintainers_note(name, renderer):
    """The Colab line renders as Markdown, never as literal asterisks and backticks, and while
    bcnb has no public address a student sees nothing of it: no note on pyproject.toml."""
    first = nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells[0].source
    text, links = _rendered(first, renderer)
    assert "*" not in text and "`" not in text, text[:300]
    assert "pyproject" not in text and "colab_badges" not in text and "Colab" not in text
    assert not any("colab" in link for link in links)


@pytest.mark.parametrize("renderer", ["commonmark", "mistune"])
def test_with_a_public_address_the_badge_renders_as_a_link(renderer):
    name = "03_train.ipynb"
    first = nbformat.read(NOTEBOOKS_DIR / name, as_version=4).cells[0].source
    published = colab_badges.with_badge(first, colab_badges.badge(name, "https://github.com/someone/bcnb"))
    text, links = _rendered(published, renderer)
    assert links == [f"https://colab.research.google.com/github/someone/bcnb/blob/main/notebooks/{name}"]
    assert "colab badge" not in text and "*" not in text
    # and back: the same script takes the badge out again when the address goes
    assert colab_badges.with_badge(published, colab_badges.badge(name, ADDRESS)) == first


def test_the_stored_files_are_what_the_script_writes(tmp_path):
    """Nobody edited a badge or a setup cell by hand: the script would write the same."""
    for name in NOTEBOOKS:
        copy = tmp_path / name
        copy.write_text((NOTEBOOKS_DIR / name).read_text())
        colab_badges.update_notebook(copy, ADDRESS)
        assert nbformat.read(copy, as_version=4) == nbformat.read(NOTEBOOKS_DIR / name, as_version=4), name
