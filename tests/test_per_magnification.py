"""bcnb reproduce --folds K --per-magnification: one model per magnification on the same patient folds."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_model, patient_parts

from bcnb import Config
from bcnb.batch import magnifications, protocol
from bcnb.cli import main
from bcnb.data import loading, splitting
from bcnb.run import staging

MAGNIFICATIONS = ("40X", "100X", "200X", "400X")


# --------------------------------------------------------------------------- the folds
def _uneven_table(seed: int = 0) -> pd.DataFrame:
    """Patients with different numbers of images at each magnification (as BreakHis has)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(16):
        label = "benign" if p < 6 else "malignant"
        for magnification in MAGNIFICATIONS:
            for i in range(int(rng.integers(1, 9))):
                rows.append(
                    {
                        "path": f"/d/{p}-{magnification}-{i}.png",
                        "label": label,
                        "patient_id": f"p{p}",
                        "magnification": magnification,
                    }
                )
    return pd.DataFrame(rows)


def test_every_magnification_gets_the_patient_folds_of_the_whole_dataset():
    """Drawn per magnification, the folds would differ (the image counts differ); drawn from the
    whole dataset they are the same for every magnification, validation included."""
    whole = _uneven_table()
    differed = False
    for fold in (1, 2, 3):
        everything = patient_parts(splitting.split_for_fold(whole, 3, fold, 0.2, seed=5))
        for magnification in MAGNIFICATIONS:
            one = whole[whole["magnification"] == magnification].reset_index(drop=True)
            assert patient_parts(splitting.split_for_fold(one, 3, fold, 0.2, 5, whole=whole)) == everything
            differed |= patient_parts(splitting.split_for_fold(one, 3, fold, 0.2, 5)) != everything
    assert differed  # the test means something: per magnification, the folds were not these


def test_split_for_run_of_one_magnification_uses_the_loaded_whole(tmp_path):
    cfg = Config(synthetic_patients=12, synthetic_images_per_patient=1, folds=3, fold=2, seed=3)
    everything = loading.load_dataset(cfg)
    expected = patient_parts(splitting.split_for_run(cfg, everything.table, everything.whole))
    for magnification in MAGNIFICATIONS:
        loaded = loading.load_dataset(cfg.replace(magnification=magnification))
        assert len(loaded.whole) == len(everything.whole) == 4 * len(loaded.table)
        split = splitting.split_for_run(cfg.replace(magnification=magnification), loaded.table, loaded.whole)
        assert patient_parts(split) == expected and set(split["magnification"]) == {magnification}


def test_a_fold_file_of_every_magnification_serves_a_run_of_one(tmp_path):
    """BreakHis' fold files list all four magnifications: a 40X run takes its own lines and
    counts the other magnifications' images as not missing."""
    cfg = Config(synthetic_patients=12, synthetic_images_per_patient=1)
    table = loading.load_dataset(cfg).table
    test_patients = sorted(table["patient_id"].unique())[::3]
    side = {patient: "test" if patient in test_patients else "train" for patient in table["patient_id"]}
    lines = [
        f"{os.path.basename(row.path)}|{row.magnification[:-1]}|1|{side[row.patient_id]}"
        for row in table.itertuples()
    ]
    (tmp_path / "dsfold1.txt").write_text("\n".join(lines) + "\n")
    one = cfg.replace(magnification="40X", split_file=str(tmp_path / "dsfold1.txt"))
    loaded = loading.load_dataset(one)
    assert loaded.bad.empty and set(loaded.table["magnification"]) == {"40X"}
    split = splitting.split_for_run(one, loaded.table, loaded.whole)
    assert sorted(split[split["split"] == "test"]["patient_id"].unique()) == test_patients
    everything = loading.load_dataset(one.replace(magnification="all"))
    mixed = splitting.split_for_run(one.replace(magnification="all"), everything.table, everything.whole)
    # validation too: carved from every magnification's patients
    assert patient_parts(split) == patient_parts(mixed)


# --------------------------------------------------------------------------- the runs
def test_the_runs_are_the_folds_and_the_models_of_one_magnification_go_inside_them():
    runs = protocol.protocol_runs(Config(seed=7), folds=2)
    assert list(runs) == ["fold-1", "fold-2"] and {run.magnification for run in runs.values()} == {"all"}
    design = protocol.Protocol(Config(), folds=2, magnifications=("40X", "400X"))
    assert list(design.runs) == ["fold-1", "fold-2"]
    assert "one model per magnification (40X, 400X) and one on all of them" in design.describe()
    assert "--per-magnification" in design.command
    assert magnifications.magnification_folder(Path("cv/fold-2"), "40X") == Path(
        "cv/fold-2/magnifications/40X"
    )


def test_the_magnifications_to_train_are_the_datasets(tmp_path):
    assert protocol.magnifications_to_train(Config(synthetic_patients=12)) == list(MAGNIFICATIONS)
    with pytest.raises(ValueError, match="--per-magnification: .* expected magnification=all, got 40X"):
        protocol.magnifications_to_train(Config(magnification="40X"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id\na.png,benign,p1\nb.png,malignant,p2\n")
    with pytest.raises(ValueError, match="the dataset has no magnification"):
        protocol.magnifications_to_train(Config(dataset=str(manifest)))


@pytest.mark.parametrize(
    "setting,expected",
    [
        ({"feature_cache": False}, "expected feature_cache=true, got false"),
        ({"fine_tune_layers": 2}, "expected fine_tune_layers=0, got 2"),
        ({"tta": True}, "expected tta=false, got true"),
    ],
)
def test_a_fold_model_that_is_more_than_a_head_on_features_is_refused(setting, expected):
    """The models of one magnification are heads on the folds' cached features: a protocol whose
    fold models learn more (the base, from images) or score more views would set unlike models
    side by side in the table."""
    with pytest.raises(ValueError, match=f"--per-magnification: .*cached features; {expected}"):
        protocol.magnifications_to_train(Config(synthetic_patients=12, **setting))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--per-magnification"], "--per-magnification: trains on patient folds; expected --folds K"),
        (["--repeats", "2", "--per-magnification"], "without --repeats"),
        (["--folds", "2", "--per-magnification", "--set", "magnification=40X"], "expected magnification=all"),
    ],
)
def test_per_magnification_without_folds_or_of_one_magnification_is_refused(tmp_path, capsys, args, message):
    status = main(["reproduce", "--out", str(tmp_path / "cv"), "--set", "synthetic_patients=12", *args])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and message in line and not (tmp_path / "cv").exists()


def test_a_resume_without_per_magnification_refuses_a_fold_holding_such_models(tmp_path):
    from bcnb.batch.reproduce import Job, pending_runs
    from bcnb.run.record import RecordMismatch

    fold = tmp_path / "fold-1"
    (fold / "magnifications" / "40X").mkdir(parents=True)
    runs = protocol.protocol_runs(Config(), folds=2)
    plain = Job("protocol", runs, list(protocol.FOLD_NOTEBOOKS), "bcnb reproduce --folds 2")
    with pytest.raises(RecordMismatch, match=r"fold-1 holds models of one magnification \(40X\) which this"):
        pending_runs(plain, tmp_path, plain.notebooks, print)
    asked = Job("protocol", runs, plain.notebooks, plain.what, magnifications=("40X", "400X"))
    tasks = pending_runs(asked, tmp_path, asked.notebooks, print)  # asked for: goes on
    assert [task.name for task in tasks] == ["fold-1", "fold-2"] and tasks[0].magnifications == (
        "40X",
        "400X",
    )


def test_a_fold_whose_notebooks_ran_is_given_its_unfinished_models_only(tmp_path):
    from bcnb.batch.reproduce import Job, pending_runs

    runs = protocol.protocol_runs(Config(), folds=2)
    job = Job(
        "protocol", runs, list(protocol.FOLD_NOTEBOOKS), "bcnb reproduce", magnifications=("40X", "400X")
    )
    for fold in ("fold-1", "fold-2"):  # both folds' notebooks ran to their end
        executed = tmp_path / fold / "notebooks" / job.notebooks[-1]
        executed.parent.mkdir(parents=True)
        executed.write_text(json.dumps({"metadata": {"papermill": {"output_path": job.notebooks[-1]}}}))
    for fold, done in (("fold-1", ("40X", "400X")), ("fold-2", ("40X",))):
        for name in done:
            folder = magnifications.magnification_folder(tmp_path / fold, name)
            folder.mkdir(parents=True)
            (folder / "predictions.csv").write_text("path\n")
    (magnifications.magnification_folder(tmp_path / "fold-2", "400X")).mkdir()  # started, unfinished
    said = []
    (task,) = pending_runs(job, tmp_path, job.notebooks, said.append)
    assert task.name == "fold-2" and task.notebooks == []  # its notebooks are not run again
    assert magnifications.unfinished(task.folder, task.magnifications) == ["400X"]
    assert said == [
        "fold-1: finished before, kept",
        "fold-2: its notebooks finished before, kept; its models of one magnification go on",
    ]


# --------------------------------------------------------------------------- one extraction
@pytest.fixture(scope="module")
def tiny_model():
    import keras

    keras.utils.set_random_seed(1)
    return build_tiny_model(32)  # the cache's plumbing, not the architecture, is tested


def test_a_run_of_one_magnification_takes_its_rows_of_the_cache_of_all(tmp_path, tiny_model, monkeypatch):
    from bcnb.data.pipeline import Preparation
    from bcnb.train import features

    table = loading.load_dataset(Config(synthetic_patients=12, synthetic_images_per_patient=1)).table
    preparation = Preparation(32)
    full = features.cached_features(tiny_model, table, preparation, 16, tmp_path / "fold-1/features/all.npy")
    (tmp_path / "fold-1-40X").mkdir()
    staging.share_features(tmp_path, tmp_path / "fold-1-40X")
    own = tmp_path / "fold-1-40X/features/all.npy"
    assert os.stat(own).st_ino == os.stat(full).st_ino  # handed over as a link

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(features, "write_features", no_extraction)
    at_40x = table[table["magnification"] == "40X"].reset_index(drop=True)
    features.cached_features(tiny_model, at_40x, preparation, 16, own)
    rows = np.flatnonzero(table["magnification"] == "40X")
    assert np.array_equal(np.load(own), np.load(full)[rows]) and os.stat(own).st_ino != os.stat(full).st_ino
    assert features.is_current(own, features.feature_cache_key(tiny_model, at_40x, preparation), len(rows))
    assert features.recompute_note(own) is None and len(np.load(full)) == len(table)  # the source untouched


def test_a_cache_of_another_model_is_not_taken_from(tmp_path, tiny_model, monkeypatch):
    import keras

    from bcnb.data.pipeline import Preparation
    from bcnb.train import features

    table = loading.load_dataset(Config(synthetic_patients=12, synthetic_images_per_patient=1)).table
    path = features.cached_features(tiny_model, table, Preparation(32), 16, tmp_path / "all.npy")
    keras.utils.set_random_seed(2)
    other = build_tiny_model(32)
    extracted = []
    original = features.write_features
    monkeypatch.setattr(features, "write_features", lambda *a: extracted.append(1) or original(*a))
    features.cached_features(other, table.head(8), Preparation(32), 16, path)
    assert extracted and "computed for other images, settings or weights" in features.recompute_note(path)


def test_the_largest_sibling_cache_is_handed_over(tmp_path):
    for name, rows in (("fold-1-40X", 12), ("fold-1", 48), ("fold-1-100X", 12)):
        folder = tmp_path / name / "features"
        folder.mkdir(parents=True)
        (folder / "all.npy").write_bytes(name.encode())
        (folder / "all.key.json").write_text(json.dumps({"key": "k", "rows": rows}))
        (folder / "all.rows.csv").write_text(f"{name}\n")
    (tmp_path / "fold-2-40X").mkdir()
    staging.share_features(tmp_path, tmp_path / "fold-2-40X")
    handed = tmp_path / "fold-2-40X" / "features"
    assert (handed / "all.npy").read_bytes() == b"fold-1" and (
        handed / "all.rows.csv"
    ).read_text() == "fold-1\n"


# --------------------------------------------------------------------------- the table
def _predictions(patients, magnifications, right, prefix):
    """predictions.csv rows: one malignant image per patient and magnification, right or not."""
    return pd.DataFrame(
        [
            {
                "path": f"/d/{prefix}-{p}-{m}.png",
                "label": "malignant",
                "patient_id": p,
                "magnification": m,
                "malignant_probability": 0.9 if right(p, m) else 0.1,
                "calibrated_probability": 0.9 if right(p, m) else 0.1,
                "predicted": "malignant" if right(p, m) else "benign",
            }
            for p in patients
            for m in magnifications
        ]
    )


def test_the_table_is_laid_out_as_breakhis_papers_print_it(tmp_path):
    design = protocol.Protocol(Config(), folds=2, magnifications=("40X", "400X"))
    folds = {1: ["a", "b"], 2: ["c", "d"]}
    for k, patients in folds.items():
        for name, ms, right in (
            (f"fold-{k}", ("40X", "400X"), lambda p, m: m == "40X" or p in "ac"),  # mixed: 400X of b, d wrong
            (f"fold-{k}/magnifications/40X", ("40X",), lambda p, m: p != "d"),
            (f"fold-{k}/magnifications/400X", ("400X",), lambda p, m: True),
        ):
            (tmp_path / name).mkdir(parents=True)
            _predictions(patients, ms, right, name).to_csv(tmp_path / name / "predictions.csv", index=False)
    table = protocol.by_magnification(tmp_path, design)
    assert table["columns"] == ["40X", "400X", "all"]
    assert table["runs"]["fold-2-40X"]["accuracy"] == 0.5 and table["runs"]["fold-1-400X"]["accuracy"] == 1
    separate, mixed = table["rows"]["separate"], table["rows"]["mixed"]
    assert (
        separate["40X"]["accuracy"]["mean"] == pytest.approx(0.75) and separate["400X"]["accuracy"]["sd"] == 0
    )
    assert separate["all"]["accuracy"]["mean"] == pytest.approx((1 + 0.75) / 2)  # own model per image
    assert (
        mixed["400X"]["accuracy"]["mean"] == pytest.approx(0.5) and mixed["all"]["accuracy"]["mean"] == 0.75
    )
    assert mixed["all"]["patient_recognition_rate"]["mean"] == pytest.approx(0.75)
    assert separate["40X"]["accuracy"]["interval"] == protocol.crossval.corrected_t([1.0, 0.5], 1.0)
    text = "\n".join(protocol._magnification_section(table))
    assert "| model | 40X | 400X | all |" in text and "### Patient recognition rate" in text
    assert "| one model per magnification | 0.750 +- 0.354 | 1.000 +- 0.000 | 0.875 +- 0.177 |" in text
    assert "| one model for all magnifications | 1.000 +- 0.000 | 0.500 +- 0.000 | 0.750 +- 0.000 |" in text


# --------------------------------------------------------------------------- end to end
# The protocol run end to end with --per-magnification (and killed and resumed on the way) is
# tests/test_crossval.py's finished_protocol, read by its per-magnification tests.


# --------------------------------------------------------------------------- the heads
def _fold_as_its_notebooks_leave_it(folder: Path) -> pd.DataFrame:
    """What --per-magnification reads of a fold: split.csv and its feature cache. At 40X the
    features tell the classes apart (feature 0 is the label); at 400X they are noise."""
    from bcnb.train import features

    rng = np.random.default_rng(0)
    rows = []
    for p, part in enumerate(["train"] * 8 + ["val"] * 4 + ["test"] * 4):
        for m in ("40X", "400X"):
            for i in range(3):
                label = "malignant" if p % 2 else "benign"
                rows.append(
                    dict(
                        path=f"/d/{p}-{m}-{i}.png",
                        label=label,
                        patient_id=f"p{p}",
                        magnification=m,
                        split=part,
                    )
                )
    split = pd.DataFrame(rows)
    values = rng.normal(size=(len(split), 16)).astype(np.float32)
    at_40x = (split["magnification"] == "40X").to_numpy()
    values[at_40x, 0] = np.where(split["label"][at_40x] == "malignant", 3.0, -3.0)
    folder.mkdir(parents=True)
    split.to_csv(folder / "split.csv", index=False)
    cache = folder / "features" / "all.npy"
    cache.parent.mkdir()
    np.save(cache, values)
    features.write_rows(cache, split)
    features.write_feature_key(cache, "the fold's key", len(split))
    return split


HEADS = {"epochs": 15, "patience": 15, "learning_rate": 0.05, "batch_size": 8, "seed": 3}


def test_each_magnification_gets_a_head_trained_on_its_rows_of_the_folds_features(tmp_path):
    import keras

    fold = tmp_path / "fold-1"
    split = _fold_as_its_notebooks_leave_it(fold)
    magnifications.train_magnification_models(fold, Config(**HEADS), ("40X", "400X"))
    features = np.load(fold / "features" / "all.npy")
    for m in ("40X", "400X"):
        folder = magnifications.magnification_folder(fold, m)
        predicted = pd.read_csv(folder / "predictions.csv")
        tested = split[(split["split"] == "test") & (split["magnification"] == m)]
        assert list(predicted["path"]) == list(tested["path"])  # its own test images, no other
        head = keras.saving.load_model(folder / "head.keras")
        again = head.predict(features[tested.index.to_numpy()], verbose=0)[:, 0]
        assert np.allclose(predicted["malignant_probability"], again, atol=1e-6)
        history = pd.read_csv(folder / "history.csv")
        assert len(history) == HEADS["epochs"] and not (folder / "checkpoint" / "training.npz").exists()
        assert json.loads((folder / "training.json").read_text())["epochs_run"] == HEADS["epochs"]
    at_40x = protocol.at_half(pd.read_csv(fold / "magnifications/40X/predictions.csv"))
    assert at_40x["accuracy"] == 1.0  # learnt from 40X's own features: the training reached them


def test_a_finished_model_of_one_magnification_is_kept_and_a_changed_cache_refused(tmp_path):
    fold = tmp_path / "fold-1"
    _fold_as_its_notebooks_leave_it(fold)
    cfg = Config(**{**HEADS, "epochs": 2})
    magnifications.train_magnification_models(fold, cfg, ("40X",))
    made = (fold / "magnifications/40X/predictions.csv").stat().st_mtime_ns
    cache = fold / "features" / "all.npy"
    data = bytearray(cache.read_bytes())
    data[-1] ^= 1  # one bit of one feature: same shape, other values
    cache.write_bytes(bytes(data))
    magnifications.train_magnification_models(fold, cfg, ("40X",))  # finished: nothing to read
    assert (fold / "magnifications/40X/predictions.csv").stat().st_mtime_ns == made
    with pytest.raises(
        ValueError, match=r"features/all.npy: expected the finished feature cache of this run's 96"
    ):
        magnifications.train_magnification_models(fold, cfg, ("40X", "400X"))
    assert not (fold / "magnifications/400X/predictions.csv").exists()


def test_a_process_that_trains_only_heads_runs_tensorflow_on_one_thread():
    """Set before TensorFlow's runtime starts, it holds; asked again once it runs, nothing changes
    and nothing is raised (a Dask worker is given the heads of several folds)."""
    import subprocess
    import sys

    script = (
        "import tensorflow as tf\n"
        "from bcnb.batch.magnifications import one_thread_for_heads\n"
        "one_thread_for_heads()\n"
        "tf.constant(1.0) + 1  # the runtime starts\n"
        "one_thread_for_heads()\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1"]


def test_a_magnification_missing_from_a_part_of_a_fold_is_named(tmp_path):
    fold = tmp_path / "fold-2"
    split = _fold_as_its_notebooks_leave_it(fold)
    split = split[~((split["split"] == "val") & (split["magnification"] == "400X"))]
    split.to_csv(fold / "split.csv", index=False)  # the cache lists more rows: it still serves these
    with pytest.raises(
        ValueError, match=r"--per-magnification: .*fold-2 has no val images at 400X; expected"
    ):
        magnifications.train_magnification_models(fold, Config(**{**HEADS, "epochs": 2}), ("40X", "400X"))
    assert magnifications.is_finished(fold, "40X") and magnifications.made_in(fold) == ["40X"]


def _heads_only(fold: Path, cfg: Config):
    from bcnb.batch.reproduce import RunTask

    return RunTask(fold.name, fold, cfg, [], [], fold.parent, "", ("40X", "400X"))


def test_the_heads_train_beside_the_next_runs_and_a_failure_stops_the_job(tmp_path):
    """run_here hands each run's heads to a thread of their own and waits for all of them; the
    first that fails is raised (here fold-2's, which has no validation image at 400X)."""
    from bcnb.batch.reproduce import run_here

    cfg = Config(**{**HEADS, "epochs": 2})
    folds = [tmp_path / f"fold-{k}" for k in (1, 2, 3)]
    for fold in folds:
        _fold_as_its_notebooks_leave_it(fold)
    run_here([_heads_only(fold, cfg) for fold in folds[:2]], Path("."), print, False, kernel=object())
    assert all(magnifications.unfinished(fold, ("40X", "400X")) == [] for fold in folds[:2])
    split = pd.read_csv(folds[1] / "split.csv")
    split[~((split["split"] == "val") & (split["magnification"] == "400X"))].to_csv(
        folds[1] / "split.csv", index=False
    )
    shutil.rmtree(folds[1] / "magnifications")
    tasks = [_heads_only(fold, cfg) for fold in folds[1:]]
    with pytest.raises(ValueError, match="fold-2 has no val images at 400X"):
        run_here(tasks, Path("."), print, False, kernel=object())
