"""Cross-validation by patient and repeated splits: the runs, the shared cache, the summary,
one model per magnification beside them, and the same protocol on a Dask cluster with a
worker killed mid-fold. One protocol, killed and resumed, serves every end-to-end test here."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import signal_tree
from scipy import stats as scipy_stats

from bcnb import Config
from bcnb.batch import protocol
from bcnb.run import staging
from bcnb.run.lock import kernels_working_in, parent_of

TINY = {
    "synthetic_patients": 12,
    "synthetic_images_per_patient": 1,
    "img_size": 32,
    "batch_size": 8,
    "epochs": 12,  # long enough for a test to kill a Dask worker while a fold trains
    "weights": "none",
    "learning_rate": 0.03,
    "bootstrap_samples": 200,
}


def test_protocol_runs_are_the_folds_or_the_seeds():
    folds = protocol.protocol_runs(Config(seed=7), folds=3)
    assert {name: (cfg.folds, cfg.fold, cfg.seed) for name, cfg in folds.items()} == {
        "fold-1": (3, 1, 7),
        "fold-2": (3, 2, 7),
        "fold-3": (3, 3, 7),
    }
    repeats = protocol.protocol_runs(Config(seed=7), repeats=2)
    assert {name: (cfg.folds, cfg.seed) for name, cfg in repeats.items()} == {
        "repeat-1": (0, 7),
        "repeat-2": (0, 8),
    }


def test_spread_is_the_mean_sd_and_corrected_t_interval_of_the_runs():
    values = [0.80, 0.90, 0.85, 0.95]
    found = protocol.spread(values, 1 / 4)  # five folds: n_test / n_train = 1/4
    sd = np.std(values, ddof=1)
    half = scipy_stats.t.ppf(0.975, 3) * sd * np.sqrt(1 / 4 + 1 / 4)  # Nadeau & Bengio, not sd / sqrt(4)
    assert found["mean"] == pytest.approx(0.875) and found["sd"] == pytest.approx(sd)
    interval = found["interval"]
    assert [interval["low"], interval["high"]] == pytest.approx([0.875 - half, 0.875 + half])
    assert found["runs"] == 4 and interval["past_range"]  # past 1: shown and flagged, never cut
    assert protocol.spread([0.7], 0.25)["sd"] is None and protocol.spread([], 0.25)["mean"] is None


def test_a_sibling_cache_is_linked_not_copied(tmp_path):
    for name, content in (("all.npy", b"features"), ("all.key.json", b'{"key": "k"}')):
        (tmp_path / "fold-1" / "features").mkdir(parents=True, exist_ok=True)
        (tmp_path / "fold-1" / "features" / name).write_bytes(content)
    (tmp_path / "fold-2").mkdir()
    staging.share_features(tmp_path, tmp_path / "fold-2")
    first, second = (tmp_path / fold / "features" / "all.npy" for fold in ("fold-1", "fold-2"))
    assert os.stat(first).st_ino == os.stat(second).st_ino
    assert (tmp_path / "fold-2" / "features" / "all.key.json").read_bytes() == b'{"key": "k"}'


def _command(out, *extra, settings=TINY):
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "bcnb", "reproduce", "--out", str(out), *sets, *extra]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--folds", "7"], "folds: 7 folds need 7 patients of each class; benign has"),
        (["--folds", "1"], "--folds: expected at least 2"),
        (["--folds", "2", "--repeats", "2"], "expected one of them, not both"),
        (["--folds", "2", "--compare"], "they go without --only, --stop-after and --compare"),
    ],
)
def test_a_protocol_that_cannot_run_stops_before_any_notebook(tmp_path, extra, message):
    result = subprocess.run(_command(tmp_path / "cv", *extra), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("bcnb: error:")]) == 1
    assert not (tmp_path / "cv").exists() and not (tmp_path / ".cv.partial").exists()


FOLDS = 3
MAGNIFICATIONS = ("40X", "400X")
# The protocol's settings: TINY's on a manifest of the built-in images at two magnifications
# (the protocol with --per-magnification trains 2 heads a fold instead of 4).
PROTOCOL = {key: value for key, value in TINY.items() if not key.startswith("synthetic_")}


@pytest.fixture(scope="module")
def two_magnifications(tmp_path_factory) -> Path:
    """A manifest of the built-in 12 patients' images at 40X and 400X."""
    from bcnb.data.synthetic import SyntheticSpec, ensure_synthetic_dataset

    root = ensure_synthetic_dataset(SyntheticSpec(patients=12, images_per_patient=1))
    manifest = pd.read_csv(root / "manifest.csv")
    manifest = manifest[manifest["magnification"].isin(MAGNIFICATIONS)]
    path = tmp_path_factory.mktemp("two_magnifications") / "m.csv"
    manifest.assign(path=[str(root / image) for image in manifest["path"]]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def finished_protocol(two_magnifications, tmp_path_factory):
    """--folds 3 --per-magnification, killed once fold-1's notebooks are finished (while its
    model of 40X trains), then --resume: the finished protocol. It is also what the same
    protocol on Dask must give (below); tests/test_per_magnification.py reads the rest."""
    out = tmp_path_factory.mktemp("protocol") / "cv"
    staging = out.parent / ".cv.partial"
    settings = {**PROTOCOL, "dataset": two_magnifications}
    command = _command(out, "--folds", str(FOLDS), "--per-magnification", settings=settings)
    victim = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while (  # fold-1's model of 40X starts as its notebooks end
        not (staging / "fold-1" / "magnifications" / "40X").exists()
        and victim.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    signal_tree(victim.pid, signal.SIGKILL)  # the run and its kernel, as a killed job
    victim.wait()
    assert (staging / "fold-1" / "report.md").exists() and not out.exists()
    assert not (staging / "fold-1" / "magnifications" / "400X" / "predictions.csv").exists()  # not finished
    finished_before = (staging / "fold-1" / "report.md").stat().st_mtime_ns
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return out, finished_before, resumed.stderr


FOLD_NAMES = [f"fold-{fold}" for fold in range(1, FOLDS + 1)]


@pytest.mark.slow
def test_every_image_is_tested_once_across_the_folds(finished_protocol):
    out, _, _ = finished_protocol
    splits = [pd.read_csv(out / fold / "split.csv", dtype={"patient_id": str}) for fold in FOLD_NAMES]
    assert all((split["path"] == splits[0]["path"]).all() for split in splits)  # same images, same order
    tested = pd.concat([split[split["split"] == "test"] for split in splits])
    assert sorted(tested["path"]) == sorted(splits[0]["path"])
    for split in splits:  # validation carved by patient from the fold's training part
        assert split.groupby("patient_id")["split"].nunique().max() == 1 and "val" in set(split["split"])


@pytest.mark.slow
def test_one_feature_extraction_serves_every_fold(finished_protocol):
    out, _, _ = finished_protocol
    inodes = {os.stat(out / fold / "features" / "all.npy").st_ino for fold in FOLD_NAMES}
    assert len(inodes) == 1


@pytest.mark.slow
def test_the_summary_holds_the_folds_own_metrics(finished_protocol, two_magnifications):
    out, _, _ = finished_protocol
    summary = json.loads((out / "summary.json").read_text())
    # The caveats follow the runs' records (which caveat each dataset gets: tests/test_caveats.py):
    # generated images read through a manifest are a dataset of files, not the built-in one.
    assert summary["dataset"] == str(two_magnifications) and summary["weights_pretrained"] is False
    folds = [json.loads((out / fold / "metrics.json").read_text()) for fold in FOLD_NAMES]
    assert [run["run"] for run in summary["runs"]] == FOLD_NAMES
    accuracies = [metrics["test_accuracy"] for metrics in folds]
    assert summary["summary"]["at_0.5"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    prr = [metrics["decision"]["image_level"]["patient_recognition_rate"] for metrics in folds]
    assert summary["summary"]["at_chosen_threshold"]["patient_recognition_rate"]["mean"] == pytest.approx(
        np.mean(prr)
    )
    report = (out / "summary.md").read_text()
    assert "RANDOM weights" in report and "never for diagnosis" in report
    assert "| fold-3 |" in report and (out / "summary.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_killed_protocol_resumes_keeping_finished_folds(finished_protocol):
    out, finished_before, stderr = finished_protocol
    assert "fold-1: its notebooks finished before, kept; its models of one magnification go on" in stderr
    assert (out / "fold-1" / "report.md").stat().st_mtime_ns == finished_before
    assert "fold-1 (1/3) [1/4]" not in stderr  # its notebooks were not run again


# --------------------------------------------------------------------------- per magnification
MAGNIFICATION_RUNS = [
    f"fold-{fold}-{magnification}" for fold in range(1, FOLDS + 1) for magnification in MAGNIFICATIONS
]


@pytest.mark.slow
def test_every_magnification_is_tested_on_its_folds_test_images(finished_protocol):
    out, _, _ = finished_protocol
    for fold in FOLD_NAMES:
        split = pd.read_csv(out / fold / "split.csv", dtype={"patient_id": str})
        for magnification in MAGNIFICATIONS:
            own = pd.read_csv(out / fold / "magnifications" / magnification / "predictions.csv")
            tested = split[(split["split"] == "test") & (split["magnification"] == magnification)]
            assert len(own) and list(own["path"]) == list(tested["path"])


@pytest.mark.slow
def test_the_models_of_one_magnification_are_heads_on_the_folds_features(finished_protocol):
    """No feature is extracted for them: each head, loaded, gives its predictions from fold-1's cache."""
    import keras

    out, _, _ = finished_protocol
    everything = np.load(out / "fold-1" / "features" / "all.npy")
    split = pd.read_csv(out / "fold-1" / "split.csv")
    for magnification in MAGNIFICATIONS:
        folder = out / "fold-1" / "magnifications" / magnification
        rows = np.flatnonzero((split["split"] == "test") & (split["magnification"] == magnification))
        again = keras.saving.load_model(folder / "head.keras").predict(everything[rows], verbose=0)[:, 0]
        predicted = pd.read_csv(folder / "predictions.csv")["malignant_probability"]
        assert np.allclose(predicted, again, atol=1e-6) and not (folder / "features").exists()


@pytest.mark.slow
def test_models_of_one_magnification_killed_and_resumed_equal_ones_made_at_once(finished_protocol, tmp_path):
    """fold-1's were killed while its 40X head trained, and made on --resume: the same again."""
    import shutil

    from bcnb.batch.magnifications import train_magnification_models
    from bcnb.run.record import read_record

    out, _, _ = finished_protocol
    fold = shutil.copytree(
        out / "fold-1", tmp_path / "fold-1", ignore=shutil.ignore_patterns("magnifications")
    )
    train_magnification_models(fold, Config(**read_record(out / "fold-1")), MAGNIFICATIONS)
    for magnification, name in itertools.product(MAGNIFICATIONS, ("predictions.csv", "history.csv")):
        made = (fold / "magnifications" / magnification / name).read_text()
        assert made == (out / "fold-1" / "magnifications" / magnification / name).read_text()


@pytest.mark.slow
def test_the_summary_holds_the_per_magnification_table(finished_protocol):
    out, _, stderr = finished_protocol
    summary = json.loads((out / "summary.json").read_text())
    assert [run["run"] for run in summary["runs"]] == FOLD_NAMES and summary["pooled"]["applies"]
    table = summary["per_magnification"]
    assert table["columns"] == [*MAGNIFICATIONS, "all"] and sorted(table["runs"]) == sorted(
        MAGNIFICATION_RUNS
    )
    accuracy = table["rows"]["separate"]["40X"]["accuracy"]
    assert accuracy["runs"] == FOLDS and accuracy["interval"]["method"].startswith("corrected resampled t")
    text = (out / "summary.md").read_text()
    assert "## Per magnification" in text and "| one model for all magnifications |" in text


# --------------------------------------------------------------------------- the same on Dask
def _figures(out: Path) -> dict:
    """What summary.json says, without the words that name how it was run."""
    summary = json.loads((out / "summary.json").read_text())
    return {key: summary[key] for key in ("runs", "pooled", "summary", "test_to_train", "per_magnification")}


def _kill_the_worker_running(fold: Path, killed: list, stop: threading.Event) -> None:
    """Once ``fold`` trains (its 02 is done), SIGKILL the Dask worker whose kernel runs it."""
    fold = fold.resolve()
    while not stop.is_set():
        if (fold / "notebooks" / "02_model.ipynb").exists():
            for kernel in kernels_working_in(fold):
                try:
                    worker = parent_of(kernel)
                    os.kill(worker, signal.SIGKILL)
                except OSError:
                    continue
                killed.append(worker)
                return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_protocol_on_dask_with_a_worker_killed_mid_fold_ends_as_here(
    finished_protocol, two_magnifications, tmp_path
):
    """The protocol's runs, with their models of one magnification, on a local cluster of two
    workers, one of them killed while fold-2 trains: the summary of the same protocol run here
    (the killed and resumed one above), per-magnification table included."""
    pytest.importorskip("dask.distributed", reason="--dask needs the [dask] extra")
    from dask.distributed import Client, LocalCluster

    from bcnb.batch.on_dask import runner_on

    here, out = finished_protocol[0], tmp_path / "cv"
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
                protocol.run_protocol(
                    Config(**PROTOCOL, dataset=str(two_magnifications)),
                    out,
                    folds=FOLDS,
                    progress=said.append,
                    per_magnification=True,
                    runner=runner_on(client),
                )
            finally:
                stop.set()
    assert killed, "no worker was killed while fold-2 trained: the test did not test that"
    assert sum("done on" in line for line in said) == FOLDS  # each fold finished once, fold-2 after a retry
    assert _figures(out) == _figures(here)
    for fold in FOLD_NAMES:  # every run's record is the driver's, as here
        assert (out / fold / "config.yaml").read_text() == (here / fold / "config.yaml").read_text()
