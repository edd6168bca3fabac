"""Build the course as a static HTML book from a finished bcnb run (`make book`, RUN=runs/demo).

    .venv/bin/python scripts/build_book.py --run runs/demo --out build/book

It assembles BUILD/src and runs Sphinx (MyST-NB, sphinx-book-theme) into BUILD/html:

- docs/course.md as the front page, each lesson's heading linked to its page;
- the run's executed notebooks as the lessons, each copy with its goals, how to open it
  (the notebook file, the JupyterLab command, Colab once pyproject.toml names a GitHub
  repository), a table of contents at the top and its exercises from the guide at the end;
- data_instructions.md and the README's sections as reference pages;
- _run.json, which docs/book/conf.py puts in every page's footer and announcement.

Nothing is executed and nothing is fetched: open BUILD/html/index.html in a browser, offline.
Warnings (a broken link, a missing image) fail the build unless --allow-warnings is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import colab_badges  # noqa: E402  (the notebooks' Colab address, one logic for badges and book)

LESSON = re.compile(r"^### (\d\d) (.+)$", re.MULTILINE)  # a lesson's section in docs/course.md
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")  # a Markdown link, not an image


# --------------------------------------------------------------------------- the run's records
def run_facts(run: Path) -> dict:
    """What the footer and the announcement say, read from the run folder's own records."""
    from bcnb.report import caveats
    from bcnb.run import artifacts, folder, record

    marker = folder.read_marker(run)
    if not marker or marker["kind"] != "run":
        kind = f"a bcnb {marker['kind']} folder" if marker else "not a bcnb run folder"
        raise SystemExit(f"build_book: {run} is {kind}: build from one run (make demo makes runs/demo)")
    config = record.read_record(run)  # refuses a record edited by hand
    metrics = artifacts.load_metrics(run)
    provenance = caveats.Provenance.from_records(config, metrics)
    made, images = marker["made_by"], artifacts.load_dataset_info(run)["n_images"]
    data = caveats.BUILT_IN if config["dataset"] == caveats.SYNTHETIC else config["dataset"]
    return {
        "footer": [
            ("Built from the run", str(run)),
            ("Weights of the base", caveats.label_weights(provenance)),
            ("Data set", f"{data}, {images} images"),
            ("Made", made["made"]),
            ("bcnb", f"{made['bcnb']} (TensorFlow {made['tensorflow']}, Keras {made['keras']})"),
        ],
        "announcement": caveats.short_lines(provenance),  # none for ImageNet weights on real data
    }


# --------------------------------------------------------------------------- the guide
def slug(heading: str) -> str:
    """The anchor MyST gives a heading (myst_heading_anchors)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def lessons_in_guide(course: str) -> dict[str, dict[str, str]]:
    """Each lesson's section of docs/course.md, by number: its heading, goals and exercises."""
    starts = list(LESSON.finditer(course))
    found = {}
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else course.find("\n## ", start.end())
        body = course[start.end() : end if end != -1 else None]
        goals, _, exercises = body.partition("**Exercises.**")
        found[start[1]] = {
            "heading": f"{start[1]} {start[2]}",
            "goals": goals.replace("**Goals.**", "").strip(),
            "exercises": exercises.strip(),
        }
    return found


def rewrite_links(text: str, source: str, pages: dict[str, str], repository: str | None) -> str:
    """Links between the repository's files, made links between the book's pages.

    ``source`` is the file's path in the repository; a file the book does not hold becomes
    its path in code (a link to it on GitHub once the repository is known).
    """
    folder = Path(source).parent

    def link(match: re.Match) -> str:
        label, target = match[1], match[2]
        if re.match(r"[a-z]+:|#", target):
            return match[0]
        path, _, fragment = target.partition("#")
        path = os.path.normpath(folder / path)
        if path in pages:
            return f"[{label}]({pages[path]}{'#' + fragment if fragment else ''})"
        if repository:
            return f"[{label}]({repository}/blob/main/{path})"
        return f"`{path}`" if label.strip("`") == path else f"{label} (`{path}` in the repository)"

    parts = re.split(r"(^```.*?^```)", text, flags=re.MULTILINE | re.DOTALL)  # not inside code
    return "".join(part if part.startswith("```") else LINK.sub(link, part) for part in parts)


# --------------------------------------------------------------------------- the pages
def front_page(course: str, notebooks: list[str]) -> str:
    """docs/course.md with a link to each lesson's page under its heading, and the book's tree."""
    pages = {name[:2]: name for name in notebooks}

    def with_link(match: re.Match) -> str:
        page = pages.get(match[1])
        if page:
            return f"{match[0]}\n\n[Open the lesson: {match[1]} {match[2]}]({page})"
        return f"{match[0]}\n\n*Not in this book: the run it was built from did not run notebook {match[1]}.*"

    tree = "\n".join(
        [
            "",
            "```{toctree}",
            ":hidden:",
            ":caption: Lessons",
            "",
            *[Path(name).stem for name in notebooks],
            "```",
            "",
            "```{toctree}",
            ":hidden:",
            ":caption: Reference",
            "",
            "data_instructions",
            "reference",
            "```",
            "",
        ]
    )
    return LESSON.sub(with_link, course) + tree


def reference_page(readme: str) -> str:
    """The README's sections (from its first `##` on), under one title."""
    start = readme.index("\n## ")
    return "# Reference: the README\n" + readme[start:]


def open_it(name: str, run: Path, repository_address: str) -> str:
    """How to open the lesson: the executed notebook, the JupyterLab command, Colab if public."""
    shown = run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run.resolve()
    lines = [
        "**Open this notebook.** As the run executed it: "
        f"{{download}}`{name} <_run_notebooks/{name}>`; or from the repository, in place in the "
        f"run folder (it runs again there): `.venv/bin/jupyter lab {shown}/notebooks/{name}`; "
        "or the fresh lesson, for your own run: `make lab`.",
    ]
    badge = colab_badges.badge(name, repository_address)  # an image linked to Colab, or a comment
    colab = re.search(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", badge)
    if colab:
        lines.append(f"In Colab: [open {name} in Colab]({colab[1]}) (needs internet).")
    return "\n\n".join(lines)


def lesson_notebook(source: Path, target: Path, run: Path, guide: dict | None, address: str) -> None:
    """The run's executed notebook with the book's cells added (its own cells untouched)."""
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:  # the Colab setup cell does nothing outside Colab
        if colab_badges.SETUP_TAG in cell.metadata.get("tags", []):
            cell.metadata["tags"] = [*cell.metadata["tags"], "remove-cell"]
    top = []
    if guide:
        top.append(f"**Goals.** {guide['goals']}")
    top += [open_it(source.name, run, address), "```{contents} On this page\n:local:\n:depth: 2\n```"]
    notebook.cells.insert(1, nbformat.v4.new_markdown_cell("\n\n".join(top)))
    if guide:
        back = f"From the course guide, [{guide['heading']}](index.md#{slug(guide['heading'])})."
        notebook.cells.append(
            nbformat.v4.new_markdown_cell(f"## Exercises\n\n{back}\n\n{guide['exercises']}")
        )
    nbformat.write(notebook, target)


# --------------------------------------------------------------------------- the build
def assemble(run: Path, src: Path) -> None:
    executed = sorted((run / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise SystemExit(f"build_book: no executed notebooks in {run}/notebooks (make demo makes runs/demo)")
    address = colab_badges.repository()
    github = re.match(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?/?$", address)
    repository = f"https://github.com/{github[1]}" if github else None
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "docs" / "book", src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "_run.json").write_text(json.dumps(run_facts(run), indent=1))
    (src / "_run_notebooks").mkdir()
    names = [path.name for path in executed]
    pages = {
        "docs/course.md": "index.md",
        "data_instructions.md": "data_instructions.md",
        "README.md": "reference.md",
    }
    pages |= {f"notebooks/{name}": name for name in names}

    course = (ROOT / "docs" / "course.md").read_text()
    guide = lessons_in_guide(course)
    front = front_page(rewrite_links(course, "docs/course.md", pages, repository), names)
    (src / "index.md").write_text(front)
    for name, source in [("data_instructions.md", "data_instructions.md"), ("reference.md", "README.md")]:
        text = (ROOT / source).read_text()
        text = reference_page(text) if source == "README.md" else text
        (src / name).write_text(rewrite_links(text, source, pages, repository))
    for path in executed:
        shutil.copy2(path, src / "_run_notebooks" / path.name)
        lesson_notebook(path, src / path.name, run, guide.get(path.name[:2]), address)


def build(run: Path, out: Path, allow_warnings: bool = False) -> Path:
    """Assemble the sources from ``run`` into ``out``/src and build ``out``/html; returns the front page."""
    from sphinx.cmd.build import build_main

    src, html = out / "src", out / "html"
    assemble(run, src)
    if html.exists():
        shutil.rmtree(html)
    options = ["-q", "-E", "-b", "html", "-d", str(out / "doctrees")]
    if not allow_warnings:
        options += ["-W", "--keep-going"]
    if build_main([*options, str(src), str(html)]) != 0:
        raise SystemExit("build_book: Sphinx failed (the warnings above say where)")
    return html / "index.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished bcnb run folder")
    parser.add_argument("--out", type=Path, default=Path("build/book"), help="the build folder")
    parser.add_argument("--allow-warnings", action="store_true", help="build even with broken links")
    args = parser.parse_args()
    if not (args.run / "notebooks").is_dir():
        raise SystemExit(f"build_book: {args.run} holds no executed notebooks; run `make demo` first")
    started = time.monotonic()
    try:
        index = build(args.run, args.out, args.allow_warnings)
    except (OSError, ValueError) as error:  # a record missing or edited by hand: one line, no trace
        raise SystemExit(f"build_book: {error}") from None
    print(f"build_book: {index} ({time.monotonic() - started:.0f} s); open it in a browser, offline")


if __name__ == "__main__":
    main()
