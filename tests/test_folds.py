"""Patient-level folds and BreakHis' official fold files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb import folds
from bcnb.datasets import listed_in_fold_file


def _table(patients_per_class=(6, 9), images=3):
    rows = []
    for label, count in zip(("benign", "malignant"), patients_per_class):
        for p in range(count):
            for i in range(images):
                rows.append(
                    {
                        "path": f"/d/{label}-{p}-{i}.png",
                        "label": label,
                        "patient_id": f"{label[0]}{p}",
                        "magnification": "40X",
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_image_is_in_exactly_one_test_fold_and_patients_do_not_straddle(k):
    table = _table()
    fold_of = folds.assign_folds(table, k, seed=1)
    assert sorted(set(fold_of)) == list(range(1, k + 1))
    assert table.assign(fold=fold_of).groupby("patient_id")["fold"].nunique().max() == 1
    for fold in range(1, k + 1):  # stratified: each test fold holds both classes
        assert set(table[fold_of == fold]["label"]) == {"benign", "malignant"}
    tested = np.concatenate(
        [
            np.flatnonzero(folds.split_for_fold(table, k, f, 0.2, 1)["split"] == "test")
            for f in range(1, k + 1)
        ]
    )
    assert sorted(tested) == list(range(len(table)))  # each image tested once over the K runs


def test_a_fold_run_carves_validation_by_patient_from_its_training_part():
    table = _table(patients_per_class=(10, 20))
    split = folds.split_for_fold(table, 5, 2, val_fraction=0.2, seed=3)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    counts = split["split"].value_counts(normalize=True)
    assert counts["test"] == pytest.approx(0.2, abs=0.05) and counts["val"] == pytest.approx(0.2, abs=0.07)
    for part in ("train", "val"):
        assert set(split[split["split"] == part]["label"]) == {"benign", "malignant"}
    again = folds.split_for_fold(table, 5, 2, val_fraction=0.2, seed=3)
    pd.testing.assert_frame_equal(split, again)  # the seed alone decides


def test_more_folds_than_patients_of_the_smaller_class_is_refused():
    with pytest.raises(ValueError, match="folds: 7 folds need 7 patients of each class; benign has 6"):
        folds.assign_folds(_table(), 7, seed=0)


# --------------------------------------------------------------------------- fold files
def _fold_file(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fold_file_rows(tmp_path):
    path = _fold_file(
        tmp_path / "dsfold1.txt",
        ["SOB_B_A-14-22549AB-40-001.png|40|1|train", "SOB_M_DC-14-13412-100-002.png|100|1|test", ""],
    )
    rows = folds.read_fold_file(path)
    assert rows.to_dict("records") == [
        {"file": "SOB_B_A-14-22549AB-40-001.png", "magnification": "40X", "fold": 1, "group": "train"},
        {"file": "SOB_M_DC-14-13412-100-002.png", "magnification": "100X", "fold": 1, "group": "test"},
    ]


@pytest.mark.parametrize(
    "line", ["a.png|40|1", "a.png|forty|1|train", "a.png|40|1|validation", "a.png,40,1,train"]
)
def test_a_fold_file_in_the_wrong_format_names_the_line(tmp_path, line):
    path = _fold_file(tmp_path / "dsfold1.txt", ["b.png|40|1|train", line])
    with pytest.raises(
        ValueError, match=r"split_file: .*dsfold1.txt line 2: expected file name\|magnification"
    ):
        folds.read_fold_file(path)


def test_a_fold_file_splits_the_listed_images_and_names_the_missing_ones(tmp_path):
    table = _table(patients_per_class=(4, 4), images=2)
    names = [Path(p).name for p in table["path"]]
    test_patients = {"b0", "m0"}
    lines = [
        f"{name}|40|1|{'test' if pid in test_patients else 'train'}"
        for name, pid in zip(names, table["patient_id"])
        if not name.startswith("malignant-3")
    ]
    lines.append("SOB_B_A-99-0000-40-001.png|40|1|train")  # listed, not on disk
    path = _fold_file(tmp_path / "f.txt", lines)
    listed, bad = listed_in_fold_file(table, str(path))
    assert not listed["path"].str.contains("malignant-3").any()  # on disk, not listed: left out
    assert bad["path"].tolist() == ["SOB_B_A-99-0000-40-001.png"] and "not found" in bad["problem"][0]
    split = folds.split_from_fold_file(listed, path, 0.2, seed=0)
    assert set(split[split["split"] == "test"]["patient_id"]) == test_patients
    assert {"train", "val", "test"} == set(split["split"])
    with pytest.raises(ValueError, match="split_file: f.txt does not list 2 image"):
        folds.split_from_fold_file(table, path, 0.2, seed=0)


def test_a_fold_file_of_the_real_breakhis_sample(breakhis_sample, tmp_path):
    from bcnb.layouts import read_layout

    table = read_layout(breakhis_sample, "breakhis").table
    patients = sorted(table["patient_id"].unique())
    lines = [
        f"{Path(p).name}|{m.rstrip('X')}|1|{'test' if pid == patients[0] else 'train'}"
        for p, m, pid in zip(table["path"], table["magnification"], table["patient_id"])
    ]
    rows = folds.read_fold_file(_fold_file(tmp_path / "dsfold1.txt", lines))
    assert len(rows) == len(table) and set(rows["magnification"]) <= {"40X", "100X", "200X", "400X"}
