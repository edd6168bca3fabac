"""Shared fixtures: the real BreakHis sample, tiny built-in datasets and configs."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

# Quieter TensorFlow, and keep generated datasets out of the user's home.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
BREAKHIS_SAMPLE = ROOT.parent / "shared" / "data" / "breakhis_sample"


@pytest.fixture(scope="session", autouse=True)
def bcnb_cache(tmp_path_factory) -> Path:
    """Generated datasets go to a per-session folder, not ~/.cache."""
    cache = tmp_path_factory.mktemp("bcnb_cache")
    os.environ["BCNB_CACHE"] = str(cache)
    return cache


@pytest.fixture
def breakhis_sample() -> Path:
    if not (BREAKHIS_SAMPLE / "manifest.csv").is_file():
        pytest.skip(f"the real BreakHis sample is not at {BREAKHIS_SAMPLE} (it lives in ../shared/)")
    return BREAKHIS_SAMPLE


@pytest.fixture(scope="session")
def tiny_cfg():
    """A config for a small, fast run: 12 patients, one image per magnification, 32x32."""
    from bcnb import Config

    return Config(
        synthetic_patients=12,
        synthetic_images_per_patient=1,
        img_size=32,
        batch_size=8,
        epochs=3,
        weights="none",
        learning_rate=0.03,
        run_dir="unused",
    )


@pytest.fixture(scope="session")
def tiny_split(tiny_cfg):
    from bcnb.data import loading, splitting

    table = loading.load_dataset(tiny_cfg).table
    return splitting.split_by_patient(table, tiny_cfg.val_fraction, tiny_cfg.test_fraction, tiny_cfg.seed)


# --------------------------------------------------------------------------- the stored lessons
def lesson(name: str):
    """The stored notebook ``name`` (e.g. "02_model.ipynb"), as nbformat reads it."""
    import nbformat

    from bcnb.batch.notebooks import NOTEBOOKS_DIR

    return nbformat.read(NOTEBOOKS_DIR / name, as_version=4)


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def cell_with(name: str, text: str) -> str:
    """The source of the one code cell of notebook ``name`` that contains ``text``."""
    (cell,) = [cell for cell in code_cells(lesson(name)) if text in cell.source]
    return cell.source


# --------------------------------------------------------------------------- a tiny base
# ResNet50V2 is built, traced and trained only where the architecture itself is under test
# (test_model.py, test_backbones.py, the notebooks). Every test of the plumbing around a base
# (training, checkpoints, the feature cache, shards, clusters, Grad-CAM, prediction) runs on
# this one: the bcnb model made by the same bcnb.model.transfer.build_model, with a base of a
# few layers in ResNet50V2's place. It is registered as a backbone only while build_model
# runs, so neither Config, the command line nor the notebooks ever see it; its saved model
# holds standard layers only and loads (safe mode) in any process.
TINY_BACKBONE = "tiny"
TINY_TOP_CONV = "top_conv"  # the last convolution: what fine-tuning's top layers include


def tiny_base(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """A base as keras.applications builds one, of ResNet50V2's kinds of layer: convolutions,
    BatchNormalization (which fine-tuning must keep frozen), ReLU, and a post-activation
    BatchNormalization on top, with a 4-D output (8x8x16 for 32x32 images) for Grad-CAM."""
    import keras

    assert not include_top
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv1_conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name=TINY_TOP_CONV)(x)
    x = keras.layers.BatchNormalization(name="post_bn")(x)
    x = keras.layers.ReLU(name="post_relu")(x)
    base = keras.Model(inputs, x, name=TINY_BACKBONE)
    if weights is not None:
        base.load_weights(weights)
    return base


def build_tiny_model(img_size=32, weights=None, dropout=0.2, precision="float32", task="binary"):
    """bcnb.model.transfer.build_model on the tiny base (see TINY_BACKBONE)."""
    from bcnb.model import backbones, transfer

    spec = backbones.Backbone(
        TINY_BACKBONE,
        "Tiny (tests only)",
        tiny_base,
        backbones.scale_to_minus_one_one,
        lambda size: "https://example.invalid/tiny_notop.h5",
        None,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backbones.BACKBONES, TINY_BACKBONE, spec)
        return transfer.build_model(img_size, weights, dropout, precision, TINY_BACKBONE, task)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished run as bcnb predict sees it: model.keras, decision.json and config.yaml
    (the model on the tiny base: predict reads the model file, whatever its base)."""
    import keras

    from bcnb import Config
    from bcnb.evaluate import decision
    from bcnb.model import transfer
    from bcnb.run.record import record_all

    folder = tmp_path_factory.mktemp("finished_run")
    keras.utils.set_random_seed(4)
    model = build_tiny_model(32)
    model.get_layer("classifier").bias.assign([0.3])
    transfer.save_model(model, folder / "model.keras")
    decision.save_decision({"temperature": 2.0, "threshold": 0.5, "threshold_rule": "fixed"}, folder, model)
    record_all(folder, Config(img_size=32, resize="center_crop"))
    return folder


@contextmanager
def small_file_system(folder: Path, size: str = "64m"):
    """A tmpfs of ``size`` mounted at ``folder``: a disk that can fill up, or be made read-only
    (:func:`remount_read_only`), for real, even for root. Skips where mounting is not allowed."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN, as CI has): {mounted.stderr!r}"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount_read_only(folder: Path) -> None:
    """Make a :func:`small_file_system` read-only: writes fail with EROFS, for root too."""
    import subprocess

    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def patient_parts(split) -> dict[str, str]:
    """Which part (train, val, test) of a split table each patient is in."""
    return split.drop_duplicates("patient_id").set_index("patient_id")["split"].to_dict()


# --------------------------------------------------------------------------- killing a run
def process_tree(pid: int) -> list[int]:
    """``pid`` and every process it started, parents first. A kernel is started in a session of
    its own (jupyter_client does so), so a signal to ``bcnb reproduce``'s process group misses it."""
    from bcnb.run.lock import parent_of

    parents = {}
    for process in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(process.name)] = parent_of(int(process.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    tree = [pid]
    for parent in tree:  # grows while it is walked: children, then theirs
        tree += [child for child, its_parent in parents.items() if its_parent == parent]
    return tree


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (not ended, nor a zombie waiting to be reaped)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(") ", 1)[1][0] != "Z"  # after "(name) ": its state
    except (OSError, IndexError):
        return False


def signal_tree(pid: int, signal_number: int) -> None:
    """Send ``signal_number`` to ``pid`` and to every process it started (a kill -9 of the
    machine's job, or SIGSTOP to freeze a run and its kernel where they are)."""
    for member in process_tree(pid):
        try:
            os.kill(member, signal_number)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- headless Chromium
@contextmanager
def headless_chromium(chromium: str, driver: str, height: int):
    """A Selenium driver of Debian's chromium and chromedriver, headless, 1400 pixels wide."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size=1400,{height}",
    ):
        options.add_argument(argument)  # no sandbox: Chromium refuses it as root otherwise
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(driver, condition, timeout: float, what: str, poll: float = 0.5):
    """Selenium's WebDriverWait: ``condition`` once it holds, or TimeoutException naming ``what``."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=poll).until(condition, message=what)


# --------------------------------------------------------------------------- several test processes
# `make test` runs the suite in one pytest process per core and one more (pytest-xdist, see the
# Makefile). A file's tests
# stay in one process, so a module-scoped end-to-end run is made once; the stored notebooks
# checked by nbval stay together too, in order, as each reads what the one before wrote.
# A process that is free takes the next file in the order collected, so the longest files are
# put first (longest-first: the processes then end within a short file of each other), then
# the other files with slow tests. The order is that of their seconds in a full run on the
# 2-core machine (`--durations`, 2026-11-30); a file missing here only starts later.
LONGEST_FIRST = (
    "test_notebooks.py", "test_crossval.py", "test_lessons_in_process.py",
    "stored notebooks", "test_model.py", "test_cluster.py", "test_book.py", "test_backbones.py",
    "test_train.py", "test_sweep.py", "test_cli.py",
)  # fmt: skip


def _file_of(path: Path) -> str:
    return "stored notebooks" if path.suffix == ".ipynb" else path.name


def pytest_collection_modifyitems(config, items):
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, bool]:
        name = _file_of(item.path)
        return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)), (
            item.path not in slow_files
        )

    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByFileNotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "stored notebooks" if path.endswith(".ipynb") else path

    return ByFileNotebooksTogether(config, log)
