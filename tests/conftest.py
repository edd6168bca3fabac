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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished run as bcnb predict sees it: model.keras, decision.json and config.yaml."""
    import keras

    from bcnb import Config
    from bcnb.evaluate import decision
    from bcnb.model import transfer
    from bcnb.run.record import record_all

    folder = tmp_path_factory.mktemp("finished_run")
    keras.utils.set_random_seed(4)
    model = transfer.build_model(32, None)
    model.get_layer("classifier").bias.assign([0.3])
    transfer.save_model(model, folder / "model.keras")
    decision.save_decision({"temperature": 2.0, "threshold": 0.5, "threshold_rule": "fixed"}, folder)
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
