"""--dask: a protocol's runs on a Dask cluster give the summary of the same protocol run here,
also when a worker is killed in the middle of a fold."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bcnb import Config

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
FOLDS = 3


def _command(out, *extra):
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), *sets, *extra]


def _figures(out: Path) -> dict:
    """What summary.json says, without the words that name how it was run."""
    summary = json.loads((out / "summary.json").read_text())
    return {key: summary[key] for key in ("runs", "pooled", "summary", "test_to_train")}


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    """The 3-fold protocol run in this machine's kernels, one fold after the other."""
    out = tmp_path_factory.mktemp("here") / "cv"
    result = subprocess.run(_command(out, "--folds", str(FOLDS)), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _kill_the_worker_running(fold: Path, killed: list, stop: threading.Event) -> None:
    """Once ``fold`` trains (its 02 is done), SIGKILL the Dask worker whose kernel runs it."""
    notebooks = (fold / "notebooks").resolve()
    while not stop.is_set():
        if (notebooks / "02_model.ipynb").exists():
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if (
                        Path(os.readlink(proc / "cwd")) == notebooks
                        and b"ipykernel" in (proc / "cmdline").read_bytes()
                    ):
                        worker = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
                        os.kill(worker, signal.SIGKILL)
                        killed.append(worker)
                        return
                except (OSError, ValueError, IndexError):
                    continue
        time.sleep(0.05)


@pytest.mark.slow
def test_a_protocol_on_dask_with_a_worker_killed_mid_fold_ends_as_here(here, tmp_path):
    from dask.distributed import Client, LocalCluster

    from bcnb.batch.on_dask import runner_on
    from bcnb.batch.protocol import run_protocol

    out = tmp_path / "cv"
    killed, stop, said = [], threading.Event(), []
    killer = threading.Thread(
        target=_kill_the_worker_running, args=(tmp_path / ".cv.partial" / "fold-2", killed, stop), daemon=True
    )
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        with Client(cluster) as client:
            killer.start()
            try:
                run_protocol(Config(**TINY), out, folds=FOLDS, progress=said.append, runner=runner_on(client))
            finally:
                stop.set()
    assert killed, "no worker was killed while fold-2 trained: the test did not test that"
    assert sum("done on" in line for line in said) == FOLDS  # each fold finished once, fold-2 after a retry
    assert _figures(out) == _figures(here)
    for fold in range(1, FOLDS + 1):  # every run's record is the driver's, as here
        assert (out / f"fold-{fold}" / "config.yaml").read_text() == (
            here / f"fold-{fold}" / "config.yaml"
        ).read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        pytest.param(
            ["--folds", "2", "--dask", "tcp://127.0.0.1:9"],
            "--dask: cannot reach a Dask scheduler at tcp://127.0.0.1:9",
            marks=pytest.mark.slow,  # waits for the connection to time out
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
