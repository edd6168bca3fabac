"""Patient-level folds and BreakHis' official fold files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb.data import splitting
from bcnb.data.loading import listed_in_fold_file


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
    fold_of = splitting.assign_folds(table, k, seed=1)
    assert sorted(set(fold_of)) == list(range(1, k + 1))
    assert table.assign(fold=fold_of).groupby("patient_id")["fold"].nunique().max() == 1
    for fold in range(1, k + 1):  # stratified: each test fold holds both classes
        assert set(table[fold_of == fold]["label"]) == {"benign", "malignant"}
    tested = np.concatenate(
        [
            np.flatnonzero(splitting.split_for_fold(table, k, f, 0.2, 1)["split"] == "test")
            for f in range(1, k + 1)
        ]
    )
    assert sorted(tested) == list(range(len(table)))  # each image tested once over the K runs


def test_a_fold_run_carves_validation_by_patient_from_its_training_part():
    table = _table(patients_per_class=(10, 20))
    split = splitting.split_for_fold(table, 5, 2, val_fraction=0.2, seed=3)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    counts = split["split"].value_counts(normalize=True)
    assert counts["test"] == pytest.approx(0.2, abs=0.05) and counts["val"] == pytest.approx(0.2, abs=0.07)
    for part in ("train", "val"):
        assert set(split[split["split"] == part]["label"]) == {"benign", "malignant"}
    again = splitting.split_for_fold(table, 5, 2, val_fraction=0.2, seed=3)
    pd.testing.assert_frame_equal(split, again)  # the seed alone decides


def test_more_folds_than_patients_of_the_smaller_class_is_refused():
    with pytest.raises(ValueError, match="folds: 7 folds need 7 patients of each class; benign has 6"):
        splitting.assign_folds(_table(), 7, seed=0)


# --------------------------------------------------------------------------- fold files
def _fold_file(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fold_file_rows(tmp_path):
    path = _fold_file(
        tmp_path / "dsfold1.txt",
        ["SOB_B_A-14-22549AB-40-001.png|40|1|train", "SOB_M_DC-14-13412-100-002.png|100|1|test", ""],
    )
    rows = splitting.read_fold_file(path)
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
        splitting.read_fold_file(path)


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
    split = splitting.split_from_fold_file(listed, path, 0.2, seed=0)
    assert set(split[split["split"] == "test"]["patient_id"]) == test_patients
    assert {"train", "val", "test"} == set(split["split"])
    with pytest.raises(ValueError, match="split_file: f.txt does not list 2 image"):
        splitting.split_from_fold_file(table, path, 0.2, seed=0)


def test_a_fold_file_of_the_real_breakhis_sample(breakhis_sample, tmp_path):
    from bcnb.data.layouts import read_layout

    table = read_layout(breakhis_sample, "breakhis").table
    patients = sorted(table["patient_id"].unique())
    lines = [
        f"{Path(p).name}|{m.rstrip('X')}|1|{'test' if pid == patients[0] else 'train'}"
        for p, m, pid in zip(table["path"], table["magnification"], table["patient_id"])
    ]
    rows = splitting.read_fold_file(_fold_file(tmp_path / "dsfold1.txt", lines))
    assert len(rows) == len(table) and set(rows["magnification"]) <= {"40X", "100X", "200X", "400X"}


# ------------------------------------------------------------------ fold files refused before training
def _lines_of(table, test_patients):
    """A fold file's lines for ``table``: the images of ``test_patients`` test, the others train."""
    return [
        f"{Path(p).name}|40|1|{'test' if pid in test_patients else 'train'}"
        for p, pid in zip(table["path"], table["patient_id"])
    ]


def test_an_image_listed_as_train_and_as_test_is_refused_naming_both_lines(tmp_path):
    table = _table(patients_per_class=(3, 3), images=2)
    lines = _lines_of(table, {"b0", "m0"})
    lines.insert(4, lines[0].replace("|test", "|train"))  # b0's first image, test on line 1, train on 5
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    message = r"split_file: .*dsfold1.txt lists benign-0-0.png as train \(line 5\) and as test \(line 1\)"
    with pytest.raises(ValueError, match=message):
        splitting.read_fold_file(path)
    with pytest.raises(ValueError, match=message):  # before any split is made
        splitting.split_from_fold_file(table, path, 0.2, seed=0)


def test_the_same_line_twice_is_harmless(tmp_path):
    table = _table(patients_per_class=(3, 3), images=2)
    lines = _lines_of(table, {"b0", "m0"})
    path = _fold_file(tmp_path / "dsfold1.txt", [*lines, lines[0], lines[-1]])
    split = splitting.split_from_fold_file(table, path, 0.2, seed=0)
    assert set(split[split["split"] == "test"]["patient_id"]) == {"b0", "m0"}


@pytest.mark.parametrize("missing", ["test", "train"])
def test_a_fold_file_without_test_or_train_lines_is_refused(tmp_path, missing):
    table = _table(patients_per_class=(3, 3), images=2)
    everyone = set(table["patient_id"])
    lines = _lines_of(table, set() if missing == "test" else everyone)
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    with pytest.raises(ValueError, match=rf"split_file: .*dsfold1.txt has no {missing} lines"):
        splitting.read_fold_file(path)


def test_a_run_whose_images_are_all_on_one_side_is_refused(tmp_path):
    """The file has test lines, but none of this run's images (e.g. another magnification's)."""
    table = _table(patients_per_class=(3, 3), images=2)
    lines = [*_lines_of(table, set()), "SOB_B_A-14-22549AB-400-001.png|400|1|test"]
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    with pytest.raises(
        ValueError, match="split_file: dsfold1.txt puts none of the 12 images of this run in test"
    ):
        splitting.split_from_fold_file(table, path, 0.2, seed=0)


def test_a_patient_on_both_sides_is_refused_naming_the_patient_and_a_line_of_each(tmp_path):
    table = _table(patients_per_class=(3, 3), images=2)
    lines = _lines_of(table, {"b0", "m0"})
    lines[1] = lines[1].replace("|test", "|train")  # b0's second image trains, its first tests
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    with pytest.raises(ValueError) as refused:
        splitting.split_from_fold_file(table, path, 0.2, seed=0)
    message = str(refused.value)
    assert message.startswith(
        "split_file: dsfold1.txt puts patient b0 in train (line 2) and in test (line 1)"
    )
    assert "\n" not in message and "patient_id_from" not in message  # one type: not a shared slide


def test_a_slide_number_under_two_tumour_types_points_to_patient_id_from_folder(tmp_path):
    """BreakHis' SOB_M_DC-14-13412 and SOB_M_LC-14-13412: one patient with patient_id_from=slide_number,
    two in the fold files; a file that tests one and trains the other names the option."""
    names = [f"SOB_M_{kind}-14-13412-40-00{i}.png" for kind in ("DC", "LC") for i in (1, 2)]
    names += [f"SOB_B_A-14-22549AB-40-00{i}.png" for i in (1, 2)] + ["SOB_M_DC-14-2523-40-001.png"]
    table = pd.DataFrame(
        {
            "path": [f"/d/{name}" for name in names],
            "label": ["malignant"] * 4 + ["benign"] * 2 + ["malignant"],
            "subtype": ["DC", "DC", "LC", "LC", "A", "A", "DC"],
            "patient_id": ["14-13412"] * 4 + ["14-22549AB"] * 2 + ["14-2523"],
            "magnification": "40X",
        }
    )
    groups = ["train", "train", "test", "test", "train", "train", "train"]
    path = _fold_file(tmp_path / "dsfold1.txt", [f"{n}|40|1|{g}" for n, g in zip(names, groups)])
    with pytest.raises(
        ValueError,
        match=r"patient 14-13412 in train \(line 1\) and in test \(line 3\).*"
        r"two tumour types \(DC and LC\).*patient_id_from=folder counts BreakHis' patients",
    ):
        splitting.split_from_fold_file(table, path, 0.2, seed=0)


def test_split_for_run_refuses_a_straddling_patient_before_anything_trains(tmp_path):
    """bcnb reproduce's pre-check and notebook 01 make the split through split_for_run."""
    from bcnb import Config
    from bcnb.data import splitting

    table = _table(patients_per_class=(3, 3), images=2)
    lines = _lines_of(table, {"b0", "m0"})
    lines[3] = lines[3].replace("|train", "|test")  # b1's second image
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    cfg = Config(split_file=str(path), run_dir=str(tmp_path / "run"))
    with pytest.raises(
        ValueError, match=r"dsfold1.txt puts patient b1 in train \(line 3\) and in test \(line 4\)"
    ):
        splitting.split_for_run(cfg, table)


def test_a_fold_file_splitting_a_real_breakhis_patient_is_refused(breakhis_sample, tmp_path):
    from bcnb.data.layouts import read_layout

    table = read_layout(breakhis_sample, "breakhis").table
    patient = table["patient_id"].value_counts().index[0]  # one with several images
    first = table.index[table["patient_id"] == patient][0]
    lines = [f"{Path(p).name}|{m.rstrip('X')}|1|train" for p, m in zip(table["path"], table["magnification"])]
    lines[first] = lines[first].replace("|train", "|test")
    path = _fold_file(tmp_path / "dsfold1.txt", lines)
    with pytest.raises(
        ValueError, match=rf"dsfold1.txt puts patient {patient} in train \(line \d+\) and in test"
    ):
        splitting.split_from_fold_file(table, path, 0.2, seed=0)
