"""The course as a book (`make book`, scripts/build_book.py): built from a run, read offline.

The quick tests check the pieces the build assembles: each lesson's part of the guide, the
links between the repository's files, the Colab link. The slow ones make a small run with
`bcnb reproduce`, build its book with warnings as errors (a broken link or a missing image
fails), then read the site: every relative link resolves, nothing is loaded from the network,
the footer tells the run's own records, and in headless Chromium (skipped, with the reason,
where chromium or chromedriver is absent) every page loads with its figures shown and search
finds a word of notebook 04 from file://.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
from conftest import headless_chromium, wait_for

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_BROWSER = (
    "no chromium and chromedriver here: .ci/run installs Debian's chromium and chromium-driver, "
    "which failed or was not run on this machine"
)
SMALL = {
    "synthetic_patients": 12,
    "synthetic_images_per_patient": 1,
    "img_size": 32,
    "epochs": 3,
    "weights": "none",
    "bootstrap_samples": 200,
}
SEARCHED = "Brier"  # a word of notebook 04 (the calibration section)


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = _load_builder()


# --------------------------------------------------------------------------- the pieces
def test_every_lesson_gets_its_goals_and_exercises_from_the_guide():
    course = (ROOT / "docs" / "course.md").read_text()
    guide = build_book.lessons_in_guide(course)
    assert sorted(guide) == ["01", "02", "03", "04", "05", "06"]
    for number, lesson in guide.items():
        assert lesson["heading"].startswith(number) and lesson["goals"] and "**" not in lesson["goals"]
        assert lesson["exercises"].startswith("1. "), number
        assert lesson["exercises"] in course and "\n## " not in lesson["exercises"]
    assert "Upload an image that is not tissue" in guide["06"]["exercises"]  # the last section's end


def test_links_between_repository_files_become_links_between_pages():
    pages = {"data_instructions.md": "data_instructions.md", "docs/course.md": "index.md"}
    text = "\n".join(
        [
            "See [the data](data_instructions.md#breakhis) and [the guide](docs/course.md).",
            "[results](benchmarks/results.md), [benchmarks/scale.md](benchmarks/scale.md)",
            "[Real data](#real-data), <https://example.org>, [web](https://example.org/a.md)",
            "```",
            "[not a link](inside/code.md)",
            "```",
        ]
    )
    rewritten = build_book.rewrite_links(text, "README.md", pages, None)
    assert "[the data](data_instructions.md#breakhis)" in rewritten
    assert "[the guide](index.md)" in rewritten
    assert "results (`benchmarks/results.md` in the repository)" in rewritten
    assert "repository), `benchmarks/scale.md`\n" in rewritten
    assert "[Real data](#real-data)" in rewritten and "[web](https://example.org/a.md)" in rewritten
    assert "[not a link](inside/code.md)" in rewritten
    from_docs = build_book.rewrite_links("[x](../data_instructions.md)", "docs/course.md", pages, None)
    assert from_docs == "[x](data_instructions.md)"
    on_github = build_book.rewrite_links("[r](benchmarks/r.md)", "README.md", pages, "https://github.com/o/r")
    assert on_github == "[r](https://github.com/o/r/blob/main/benchmarks/r.md)"


def test_colab_link_only_once_the_repository_is_on_github():
    run = ROOT / "runs" / "demo"
    placeholder = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert "colab" not in build_book.open_it("02_model.ipynb", run, placeholder).lower()
    public = build_book.open_it("02_model.ipynb", run, "https://github.com/someone/bcnb")
    assert (
        "https://colab.research.google.com/github/someone/bcnb/blob/main/notebooks/02_model.ipynb" in public
    )
    assert "jupyter lab runs/demo/notebooks/02_model.ipynb" in public


def test_the_book_packages_are_pinned_and_installed_by_make_setup():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {re.split("==", line)[0] for line in extras["book"]} >= {"sphinx", "myst-nb", "sphinx-book-theme"}
    assert all(re.fullmatch(r"[a-z0-9_.-]+==[0-9][0-9a-z.]*", line) for line in extras["book"])
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[test,book]"' in makefile and re.search(r"^book:", makefile, re.MULTILINE)


# --------------------------------------------------------------------------- the built book
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A finished run with tiny settings (about 2 minutes on 2 cores): notebooks 01-04 and 06."""
    run = tmp_path_factory.mktemp("book_run") / "run"
    sets = [item for name, value in SMALL.items() for item in ("--set", f"{name}={value}")]
    made = subprocess.run(
        [sys.executable, "-m", "bcnb", "reproduce", "--out", str(run), *sets],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def book(small_run, tmp_path_factory) -> Path:
    """The book of the small run, built as `make book` builds it, warnings as errors."""
    out = tmp_path_factory.mktemp("book")
    built = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_book.py"), "--run", str(small_run), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    return out / "html"


def _lessons(run: Path) -> list[str]:
    return sorted(path.stem for path in (run / "notebooks").glob("[0-9][0-9]_*.ipynb"))


class _Page(HTMLParser):
    """The links, ids and network loads of one HTML page."""

    def __init__(self):
        super().__init__()
        self.hrefs, self.ids, self.loads = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag == "script" and attrs.get("src"):
            self.loads.append(attrs["src"])
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "") and attrs.get("href"):
            self.loads.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.loads.append(attrs["src"])


def _text(page: str) -> str:
    """What a reader sees of an HTML page, its white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


@pytest.mark.slow
def test_every_link_inside_the_book_resolves_and_nothing_comes_from_the_network(book):
    pages = {path: _parse(path) for path in book.glob("*.html")}
    assert len(pages) >= 8, sorted(pages)
    broken = []
    for path, page in pages.items():
        for load in page.loads:
            assert not re.match(r"(https?:)?//", load), f"{path.name} loads {load} from the network"
        for href in page.hrefs:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//"):
                continue  # links out of the book (the data sets' pages) are not needed to read it
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if not target.is_file():
                broken.append(f"{path.name}: {href}")
            elif parts.fragment and target.suffix == ".html":
                if parts.fragment not in (pages.get(target) or _parse(target)).ids:
                    broken.append(f"{path.name}: {href} (no such section)")
    assert not broken, broken
    for css in (book / "_static").rglob("*.css"):
        assert not re.search(r"""(url\(\s*['"]?|@import\s+['"]?)(https?:)?//""", css.read_text()), css


@pytest.mark.slow
def test_each_lesson_page_is_the_executed_notebook_with_the_guide_around_it(small_run, book):
    guide = build_book.lessons_in_guide((ROOT / "docs" / "course.md").read_text())
    lessons = _lessons(small_run)
    assert lessons == ["01_data", "02_model", "03_train", "04_evaluate", "06_predict"]
    front = (book / "index.html").read_text()
    for lesson in lessons:
        text = (book / f"{lesson}.html").read_text()
        assert f'href="{lesson}.html"' in front
        assert 'class="contents' in text and "On this page" in text  # the table of contents
        assert re.search(rf'href="_downloads/[0-9a-f]+/{lesson}\.ipynb"', text), "the notebook to open"
        assert f"jupyter lab {small_run.resolve()}/notebooks/{lesson}.ipynb" in _text(text)
        assert "colab.research.google.com" not in text  # the repository is not on GitHub yet
        assert 'id="exercises"' in text
        first = guide[lesson[:2]]["exercises"].split("\n")[0]
        words = re.sub(r"[`*]", "", first[3:]).split()[:4]  # the first exercise's words, as shown
        assert " ".join(words) in _text(text), lesson
    # The executed notebook, not a new execution: the small run's parameters and outputs.
    model_page = (book / "02_model.html").read_text()
    assert 'img_size</span> <span class="o">=</span> <span class="mi">32</span>' in model_page
    assert "Trainable params" in model_page
    # Notebook 05 is not in this run: the front page says so, and no page pretends it is.
    assert not (book / "05_compare_backbones.html").exists()
    assert "Not in this book: the run it was built from did not run notebook 05" in front


@pytest.mark.slow
def test_every_page_names_the_run_it_was_built_from(small_run, book):
    made = json.loads((small_run / ".bcnb.json").read_text())["made_by"]
    weights = json.loads((small_run / "weights.json").read_text())
    images = json.loads((small_run / "dataset.json").read_text())["n_images"]
    assert weights["used"] == "random"
    for path in book.glob("*.html"):
        footer = _text(re.search(r'<div class="bcnb-run">.*?</div>', path.read_text(), re.DOTALL)[0])
        assert str(small_run) in footer, path.name
        assert "RANDOM (not pretrained)" in footer and f"built-in generated images, {images} images" in footer
        assert made["made"] in footer and f"bcnb {made['bcnb']}" in footer
        assert "WARNING: the base had RANDOM weights" in path.read_text()  # the announcement


# --------------------------------------------------------------------------- in a browser
@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip(NO_BROWSER)
    with headless_chromium(CHROMIUM, DRIVER, height=1400) as driver:
        yield driver


def _wait(driver, condition, timeout: float, what: str):
    return wait_for(driver, condition, timeout, what, poll=0.25)


IMAGES = """return Array.from(document.querySelectorAll('article img'))
    .map(img => [img.getAttribute('src'), img.complete && img.naturalWidth > 0])"""


@pytest.mark.slow
def test_the_book_reads_offline_in_a_browser(small_run, book, browser, tmp_path):
    for page in ["index", *_lessons(small_run), "data_instructions", "reference"]:
        browser.get((book / f"{page}.html").as_uri())
        _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete", 30, page)
        assert browser.find_elements("css selector", "article h1"), f"{page}: no title shown"
        images = browser.execute_script(IMAGES)
        assert all(shown for _, shown in images), f"{page}: figures not shown: {images}"
        notebook = small_run / "notebooks" / f"{page}.ipynb"
        if notebook.is_file():  # every figure the run's notebook holds is on its page
            cells = nbformat.read(notebook, as_version=4).cells
            figures = sum(
                "image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", [])
            )
            assert len(images) >= figures, f"{page}: {len(images)} images for {figures} figures"
    browser.save_screenshot(str(tmp_path / "reference.png"))

    assert SEARCHED in (small_run / "notebooks" / "04_evaluate.ipynb").read_text()
    browser.get(f"{(book / 'search.html').as_uri()}?q={SEARCHED}")
    results = "return Array.from(document.querySelectorAll('#search-results li a')).map(a => a.href)"
    found = _wait(browser, lambda d: d.execute_script(results), 60, f"search found nothing for {SEARCHED}")
    assert any("04_evaluate.html" in href for href in found), found
    browser.save_screenshot(str(tmp_path / "search.png"))
