"""Splits stratified by tumour type within class, where the types are known."""

import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.data import loading, splitting
from bcnb.data.tasks import class_of_type

BUILT_IN = {"A": 3, "F": 3, "PT": 3, "TA": 3, "DC": 7, "LC": 7, "MC": 7, "PC": 7}  # 40 patients


def _typed_table(patients_per_type: dict[str, int], images=4) -> pd.DataFrame:
    rows = [
        {
            "path": f"/d/{code}-{p}-{i}.png",
            "label": class_of_type(code),
            "patient_id": f"{code}-{p}",
            "magnification": "40X",
            "subtype": code,
        }
        for code, count in patients_per_type.items()
        for p in range(count)
        for i in range(images)
    ]
    return pd.DataFrame(rows)


def _split_of(table: pd.DataFrame, split: dict[str, str]) -> pd.DataFrame:
    return table.assign(split=table["patient_id"].map(split))


def test_types_missing_from_training_are_listed_with_where_they_went():
    table = _typed_table({"A": 2, "F": 2, "PT": 2, "DC": 3})
    split = _split_of(
        table,
        {"A-0": "test", "A-1": "test", "F-0": "train", "F-1": "test", "PT-0": "val", "PT-1": "test"}
        | {"DC-0": "train", "DC-1": "val", "DC-2": "test"},
    )
    assert splitting.types_missing_from_training(split) == [
        "no adenosis patient in training (2 in test)",
        "no phyllodes tumour patient in training (1 in validation, 1 in test)",
    ]
    assert splitting.types_missing_from_training(split.assign(split="train")) == []
    assert splitting.types_missing_from_training(split.drop(columns="subtype")) == []  # types unknown


@pytest.mark.parametrize("seed", range(6))
def test_a_type_with_fewer_patients_than_folds_reaches_as_many_folds_and_every_training_part(seed):
    """Three adenosis patients, five folds: three folds test one each, and every fold trains on
    the other two (by class alone they could share a fold, or all land in test and validation)."""
    table = _typed_table({"A": 3, "F": 6, "PT": 5, "TA": 6, "DC": 12, "LC": 5, "MC": 6, "PC": 5})
    fold_of = splitting.assign_folds(table, 5, seed)
    adenosis = table.assign(fold=fold_of)[table["subtype"] == "A"].groupby("patient_id")["fold"].first()
    assert adenosis.nunique() == 3
    for fold in range(1, 6):
        split = splitting.split_for_fold(table, 5, fold, 0.2, seed)
        assert splitting.types_missing_from_training(split) == []
        assert split[split["split"] == "test"]["label"].nunique() == 2


@pytest.mark.parametrize("seed", range(8))
def test_every_test_fold_holds_both_classes_even_where_types_alone_would_not(seed):
    """Four benign types of one patient each: by type alone a fold can get no benign patient;
    then the folds are stratified by class."""
    table = _typed_table({"A": 1, "F": 1, "PT": 1, "TA": 1, "DC": 2, "LC": 2, "MC": 2, "PC": 2})
    for folds in (2, 3, 4):
        fold_of = splitting.assign_folds(table, folds, seed)
        for fold in range(1, folds + 1):
            assert set(table["label"][fold_of == fold]) == {"benign", "malignant"}


@pytest.mark.parametrize("seed", range(10))
def test_the_split_deals_each_type_like_its_class_and_keeps_the_class_shares(seed):
    """The built-in mix (three patients of each benign type): no type left out of training, and
    benign training keeps about 60% of the benign images (types as strata of their own would
    give one patient of each type to each split: a third)."""
    table = _typed_table(BUILT_IN)
    split = splitting.split_by_patient(table, 0.2, 0.2, seed)
    assert splitting.types_missing_from_training(split) == []
    benign = split[split["label"] == "benign"]
    assert (benign["split"] == "train").mean() == pytest.approx(0.6, abs=0.1)
    assert split.groupby("patient_id")["split"].nunique().max() == 1


def test_without_types_the_split_is_by_class_as_before():
    """No subtype column: the type-blind dealing, whose draws are unchanged."""
    table = _typed_table(BUILT_IN)
    blind = splitting.split_by_patient(table.drop(columns="subtype"), 0.2, 0.2, 3)
    rng = np.random.default_rng(3)
    images = table.groupby("patient_id").size().sort_index()
    expected = {}
    shares = {"test": 0.2, "val": 0.2, "train": 0.6}
    for _label, patients in splitting.patient_strata(table, 3).items():
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        filled, total = dict.fromkeys(shares, 0), images[patients].sum()
        for number, patient in enumerate(shuffled):
            split = (
                list(shares)[number]
                if number < 3
                else max(shares, key=lambda s: shares[s] * total - filled[s])
            )
            expected[patient] = split
            filled[split] += images[patient]
    assert blind.drop_duplicates("patient_id").set_index("patient_id")["split"].to_dict() == expected


def test_the_validation_carve_keeps_every_type_in_training():
    table = _typed_table(BUILT_IN, images=3)
    rest = table[~table["patient_id"].isin(["A-0", "F-0", "DC-0", "LC-0"])]
    for seed in range(10):
        carved = rest.assign(split=splitting.carve_validation(rest, 0.25, seed).to_numpy())
        assert splitting.types_missing_from_training(carved) == []


def test_split_for_run_stratifies_a_binary_run_by_type_on_the_built_in_data():
    cfg = Config(synthetic_patients=40, synthetic_images_per_patient=1)
    loaded = loading.load_dataset(cfg)
    assert splitting.has_types(loaded.table) and cfg.task == "binary"
    for fold in range(1, 6):
        split = splitting.split_for_run(cfg.replace(folds=5, fold=fold), loaded.table, loaded.whole)
        assert splitting.types_missing_from_training(split) == []


def test_a_manifest_with_types_is_stratified_by_them_and_one_without_usable_types_says_so(tmp_path):
    rows = []
    for p, (word, label) in enumerate([("adenosis", "benign"), ("ductal_carcinoma", "malignant")] * 3):
        (tmp_path / f"{p}.png").write_bytes(_png(p))
        rows.append({"path": f"{p}.png", "label": label, "patient_id": f"p{p}", "subtype": word})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    loaded = loading.load_dataset(Config(dataset=str(tmp_path / "m.csv")))
    assert loaded.table["subtype"].tolist() == ["A", "DC"] * 3 and splitting.has_types(loaded.whole)
    rows[0]["subtype"] = "medullary"
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    loaded = loading.load_dataset(Config(dataset=str(tmp_path / "m.csv")))
    assert "subtype" not in loaded.table
    (note,) = [note for note in loaded.notes if note.startswith("tumour types not used")]
    assert "'medullary'" in note and note.endswith("the split is stratified by class only")


def _png(seed: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
