"""Sphinx's settings for the course book (scripts/build_book.py copies this file beside the
sources it assembles, with _run.json: what the run the book shows was made with).

Offline by design: the notebooks are shown as the run executed them (nothing is executed),
no script or style is loaded from the network (no ipywidgets bundle, no MathJax: the lessons
hold no math), and search is Sphinx's own index, which works from file://.
"""

import html
import json
from pathlib import Path

HERE = Path(__file__).parent
RUN = json.loads((HERE / "_run.json").read_text())
LESSONS = sorted(path.stem for path in HERE.glob("[0-9][0-9]_*.ipynb"))

project = "bcnb: the course"
html_title = "bcnb: the course"
author = ""
copyright = ""
extensions = ["myst_nb"]
exclude_patterns = ["_build", "_run_notebooks", "**.ipynb_checkpoints"]

# The notebooks as the run left them: outputs, figures and banners are the run's own.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # its default loads require.js and the widget bundle from CDNs
nb_merge_streams = True
myst_heading_anchors = 3  # links to a section, e.g. index.md#the-path

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_last_updated_fmt = None
_footer = " ".join(
    f"<span><strong>{html.escape(name)}</strong> {html.escape(value)}.</span>"
    for name, value in RUN["footer"]
)
html_theme_options = {
    "home_page_in_toc": True,
    "navbar_persistent": [],  # search lives in the sidebar (and Ctrl+K)
    "show_navbar_depth": 1,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "extra_footer": f'<div class="bcnb-run">{_footer}</div>',
    "announcement": "<br>".join(html.escape(f"{line}.") for line in RUN["announcement"]),
    # A lesson page carries its own table of contents at the top; other pages get the sidebar.
    "secondary_sidebar_items": {"**": ["page-toc"], **{lesson: [] for lesson in LESSONS}},
}
