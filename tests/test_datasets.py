import shutil

import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.data import loading, pipeline, splitting
from bcnb.data.images import read_rgb
from bcnb.run import artifacts


def test_load_dataset_on_the_real_sample(breakhis_sample):
    dataset = loading.load_dataset(Config(dataset=str(breakhis_sample)))
    assert sorted(dataset.table["label"].value_counts().items()) == [("benign", 11), ("malignant", 5)]
    # manifest.csv at the top is not inside an image folder: ignored, not a bad file
    assert (
        dataset.layout == "breakhis" and dataset.bad.empty and dataset.notes == ["layout: detected breakhis"]
    )


def test_decoding_a_real_image(breakhis_sample):
    table = loading.load_dataset(Config(dataset=str(breakhis_sample))).table.head(3)
    images, labels = next(iter(pipeline.make_dataset(table, pipeline.Preparation(64), batch_size=3)))
    assert images.shape == (3, 64, 64, 3) and labels.shape == (3, 1)
    pixels = images.numpy()
    assert 0 <= pixels.min() and pixels.max() <= 255 and pixels.std() > 10  # real content, 0-255 scale
    original = read_rgb(table.iloc[0]["path"])
    assert original.shape == (460, 700, 3)
    # Squashing keeps the colour balance of the whole field of view.
    np.testing.assert_allclose(pixels[0].mean(axis=(0, 1)), original.mean(axis=(0, 1)), atol=3)


# --------------------------------------------------------------------------- errors
def test_missing_dataset_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loading.load_dataset(Config(dataset=str(tmp_path / "nowhere")))


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        loading.load_dataset(Config(dataset=str(tmp_path)))


def test_folder_of_unknown_layout(tmp_path):
    (tmp_path / "benign").mkdir()
    (tmp_path / "benign" / "img1.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the layout"):
        loading.load_dataset(Config(dataset=str(tmp_path)))


def test_one_class_only(breakhis_sample, tmp_path):
    benign = breakhis_sample / "BreaKHis_v1/histology_slides/breast/benign"
    with pytest.raises(ValueError, match="has only benign images; need both"):
        loading.load_dataset(Config(dataset=str(benign)))


def test_file_that_is_not_a_manifest(tmp_path):
    path = tmp_path / "images.zip"
    path.write_bytes(b"PK")
    with pytest.raises(ValueError, match="not a .csv manifest"):
        loading.load_dataset(Config(dataset=str(path)))


def test_layout_can_be_forced(breakhis_sample):
    with pytest.raises(ValueError, match="layout=csv expects a .csv manifest"):
        loading.load_dataset(Config(dataset=str(breakhis_sample), layout="csv"))


# --------------------------------------------------------------------------- selection
def test_select_magnification(breakhis_sample):
    table = loading.load_dataset(Config(dataset=str(breakhis_sample), magnification="200X")).table
    assert set(table["magnification"]) == {"200X"} and len(table) == 3


def test_select_absent_magnification(breakhis_sample, tmp_path):
    for path in breakhis_sample.rglob("*-40-*.png"):
        shutil.copy(path, tmp_path / path.name)  # a flat folder is fine for BreakHis names
    with pytest.raises(ValueError, match=r"magnification: no 400X images .* \(found 40X\)"):
        loading.load_dataset(Config(dataset=str(tmp_path), magnification="400X"))


def test_max_images_samples_each_class(tiny_cfg):
    table = loading.load_dataset(tiny_cfg.replace(max_images=24)).table
    full = loading.load_dataset(tiny_cfg).table
    assert len(table) == 24
    share = (table["label"] == "malignant").mean()
    assert abs(share - (full["label"] == "malignant").mean()) < 0.05


# --------------------------------------------------------------------------- split
def _split(table, seed=0, val=0.2, test=0.2):
    return splitting.split_by_patient(table, val, test, seed)


@pytest.fixture(scope="module")
def table():
    return loading.load_dataset(Config(synthetic_patients=40, synthetic_images_per_patient=1)).table


def test_no_patient_in_two_splits(table):
    split = _split(table)
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_split_is_stratified_by_class(table):
    split = _split(table)
    overall = (split["label"] == "malignant").mean()
    for name, part in split.groupby("split"):
        assert abs((part["label"] == "malignant").mean() - overall) < 0.1, name
    shares = split["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.2) < 0.06 and abs(shares["val"] - 0.2) < 0.06


def test_same_seed_same_split_other_seed_other_split(table):
    assert _split(table, seed=1)["split"].equals(_split(table, seed=1)["split"])
    assert not _split(table, seed=1)["split"].equals(_split(table, seed=2)["split"])


def test_split_does_not_depend_on_row_order(table):
    shuffled = table.sample(frac=1, random_state=3)
    assert (
        _split(shuffled).sort_values("path")["split"].tolist()
        == _split(table).sort_values("path")["split"].tolist()
    )


def test_too_few_patients_for_a_split(breakhis_sample):
    table = loading.load_dataset(Config(dataset=str(breakhis_sample))).table  # 5 malignant patients
    few = table[(table["label"] == "benign") | table["patient_id"].isin(["14-2523", "14-3909"])]
    with pytest.raises(ValueError, match="malignant has 2 patient\\(s\\); .* needs at least 3"):
        _split(few)


def test_split_manifest_round_trip(table, tmp_path):
    split = _split(table)
    path = splitting.save_split(split, tmp_path)
    assert path.name == "split.csv"
    loaded = artifacts.load_split(tmp_path)
    # the built-in data has BreakHis names, so the tumour type travels with each image
    assert list(loaded.columns) == ["path", "label", "patient_id", "magnification", "subtype", "split"]
    pd.testing.assert_frame_equal(loaded, split[list(loaded.columns)].reset_index(drop=True))


def test_load_split_says_which_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 01_data"):
        artifacts.load_split(tmp_path)


def test_summaries(table):
    split = _split(table)
    summary = splitting.summarize_split(split)
    assert list(summary["split"].unique()) == ["train", "val", "test"]
    assert summary["images"].sum() == len(table)
    counts = loading.count_images(table)
    assert (
        counts.loc["malignant", "patients"] == table.loc[table.label == "malignant", "patient_id"].nunique()
    )


def test_patients_with_both_classes_stay_in_one_split():
    """IDC-style data: every patient has patches of both classes."""
    rows = [
        {"path": f"p{p}_{i}.png", "label": label, "patient_id": f"p{p}", "magnification": "unknown"}
        for p in range(12)
        for i, label in enumerate(["malignant"] * (1 + p % 3) + ["benign"] * 2)
    ]
    split = _split(pd.DataFrame(rows))
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}


def test_tiles_keep_their_patient_and_split(tiny_cfg):
    table = loading.load_dataset(tiny_cfg.replace(tiles_per_image=3)).table
    assert (
        len(table) == 3 * 48
        and table.groupby("path")["tile"].apply(list).map(sorted).eq([[0, 1, 2]] * 48).all()
    )
    split = _split(table)
    assert split.groupby("path")["split"].nunique().max() == 1
    assert splitting.summarize_split(split)["images"].sum() == 48  # images, not tiles


def test_tiles_are_different_crops_of_one_image(breakhis_sample):
    table = loading.load_dataset(Config(dataset=str(breakhis_sample))).table.head(1)
    table = loading.expand_tiles(table, 2)
    images, _ = next(iter(pipeline.make_dataset(table, pipeline.Preparation(64), batch_size=2)))
    assert images.shape == (2, 64, 64, 3) and not np.allclose(images[0], images[1])


def test_mixed_patients_with_a_rare_majority_class_are_split_as_one_group():
    """IDC-style: most patients mostly benign patches; few have a malignant majority."""
    rows = [
        {"path": f"p{p}_{i}.png", "label": label, "patient_id": f"p{p}", "magnification": "unknown"}
        for p in range(10)
        for i, label in enumerate(["malignant"] * (5 if p < 2 else 1) + ["benign"] * 3)
    ]
    split = _split(pd.DataFrame(rows))
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test"}
