"""Notebook 01 in JupyterLab in a real browser: it runs, and its widget is live.

papermill and nbval run notebooks without a front end, so they cannot tell whether a widget
renders or answers. This test starts JupyterLab (127.0.0.1, a free port, a random token),
opens notebook 01 in headless Chromium driven by Selenium with Debian's chromium-driver (no
download), runs every cell, and checks that no cell failed, that the dataset browser is a real
<select> and that choosing another class changes the image shown. The screenshot is saved in
the test's folder. JupyterLab is stopped however the test ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import headless_chromium, wait_for

from bcnb.batch.notebooks import NOTEBOOKS_DIR

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium and chromedriver here: .ci/run installs Debian's chromium and "
        "chromium-driver, which failed or was not run on this machine",
    ),
]
SMALLER = {"synthetic_patients": 8, "synthetic_images_per_patient": 1}  # a quick notebook 01
# Read from JupyterLab's own notebook model, not from the page: cells scrolled out of view
# are not in the page at all.
CODE_CELLS = "window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code')"
# Finished: the kernel idle and every cell run, or one failed (Run All stops there).
ALL_RAN = f"""return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'
    && ({CODE_CELLS}.every(c => c.model.executionCount !== null)
        || {CODE_CELLS}.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error')))"""
ERRORS = f"""return {CODE_CELLS}.flatMap(c => c.model.outputs.toJSON())
    .filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _copy_notebook(folder: Path) -> None:
    """Notebook 01 with a smaller built-in dataset (the parameters cell edited, as papermill would)."""
    notebook = nbformat.read(NOTEBOOKS_DIR / "01_data.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    lines = [
        f"{name} = {SMALLER[name]}" if (name := line.split(" = ")[0]) in SMALLER else line
        for line in cell.source.splitlines()
    ]
    cell.source = "\n".join(lines)
    nbformat.write(notebook, folder / "01_data.ipynb")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on the copy; yields its base URL and token, then stops it."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _copy_notebook(notebooks)
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={notebooks}",
        "--allow-root",  # CI runs as root, which JupyterLab refuses otherwise
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run all cells by command
    ]
    # Its own settings and workspaces: nothing of the user's, and every cell kept in the page
    # (JupyterLab 4 otherwise leaves cells out of view out of the page).
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    environment = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environment
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base, token, server)
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_for_server(base: str, token: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("JupyterLab exited at start; see jupyterlab.log in the test's folder")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as answer:
                json.load(answer)
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {timeout} s")


@pytest.fixture
def browser():
    with headless_chromium(CHROMIUM, DRIVER, height=2000) as driver:
        yield driver


def _wait(driver, condition, timeout: float, what: str):
    return wait_for(driver, condition, timeout, what)


def test_notebook_01_runs_in_jupyterlab_and_its_widget_answers(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, token = lab
    browser.get(f"{base}/lab/tree/01_data.ipynb?token={token}")
    opened = "return !!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-CodeCell'))"
    _wait(browser, lambda d: d.execute_script(opened), 120, "the notebook did not open")
    idle = "return window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
    _wait(browser, lambda d: d.execute_script(idle), 120, "the kernel did not start")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        _wait(browser, lambda d: d.execute_script(ALL_RAN), 300, "the cells did not all run")
    finally:
        browser.save_screenshot(str(tmp_path / "notebook_01_in_jupyterlab.png"))
    errors = browser.execute_script(ERRORS)
    assert not errors, errors[0][:1000]
    select = _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, ".widget-dropdown select"),
        30,
        "the dataset browser did not render as a <select>",
    )
    image = browser.find_element(By.CSS_SELECTOR, ".widget-image")
    before = image.get_attribute("src")
    assert before, "the dataset browser shows no image"
    Select(select).select_by_visible_text("benign")
    _wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, ".widget-image").get_attribute("src") != before,
        30,
        "choosing another class did not change the image",
    )
    assert browser.find_element(By.CSS_SELECTOR, ".bcnb-caption").text.startswith("benign, patient")
    browser.save_screenshot(str(tmp_path / "notebook_01_in_jupyterlab.png"))  # with the new image
    assert (tmp_path / "notebook_01_in_jupyterlab.png").stat().st_size > 10_000
