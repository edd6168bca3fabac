"""--dask refused in one line before anything runs. The protocol on a Dask cluster, with a
worker killed mid-fold, is tested beside the protocol run here that it must equal
(tests/test_crossval.py)."""

import subprocess
import sys

import pytest

pytest.importorskip("dask.distributed", reason="--dask needs the [dask] extra")

TINY = {
    "synthetic_patients": 12,
    "synthetic_images_per_patient": 1,
    "img_size": 32,
    "batch_size": 8,
    "epochs": 12,
    "weights": "none",
    "learning_rate": 0.03,
    "bootstrap_samples": 200,
}


def _command(out, *extra):
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), *sets, *extra]


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--folds", "2", "--dask", "tcp://127.0.0.1:9"],
            "--dask: cannot reach a Dask scheduler at tcp://127.0.0.1:9",
        ),
        (["--folds", "2", "--dask", "local:two"], "--dask: expected local:N with N >= 1"),
        (["--dask", "local:2"], "--dask: hands out the runs of --folds, --repeats or a sweep"),
    ],
)
def test_a_bad_scheduler_or_a_single_run_stops_in_one_line_before_anything_runs(tmp_path, extra, message):
    result = subprocess.run(_command(tmp_path / "cv", *extra), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cv").exists() and not (tmp_path / ".cv.partial").exists()


def test_a_sweep_refuses_a_bad_scheduler_in_one_line(tmp_path):
    command = [sys.executable, "-m", "bcnb", "sweep", "--out", str(tmp_path / "s"), "--grid", "seed=1,2"]
    result = subprocess.run([*command, "--dask", "local:0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--dask: expected local:N with N >= 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s").exists()
