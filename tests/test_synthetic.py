import hashlib

import numpy as np
import pandas as pd
import pytest

from bcnb.data.images import read_rgb
from bcnb.data.layouts import parse_breakhis_name, read_breakhis
from bcnb.data.synthetic import (
    MAGNIFICATIONS,
    SyntheticSpec,
    ensure_synthetic_dataset,
    render_tissue,
    write_synthetic_dataset,
)

SMALL = SyntheticSpec(patients=8, images_per_patient=1)


def _digest(root):
    files = sorted(root.rglob("*.png"))
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest(), len(files)


def test_same_seed_gives_identical_files(tmp_path):
    write_synthetic_dataset(SMALL, tmp_path / "a")
    write_synthetic_dataset(SMALL, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_other_seed_gives_other_images(tmp_path):
    write_synthetic_dataset(SMALL, tmp_path / "a")
    write_synthetic_dataset(SyntheticSpec(patients=8, images_per_patient=1, seed=1), tmp_path / "b")
    assert _digest(tmp_path / "a")[0] != _digest(tmp_path / "b")[0]


def test_layout_and_names_follow_breakhis(tmp_path):
    manifest = write_synthetic_dataset(SMALL, tmp_path)
    parsed = read_breakhis(tmp_path).table
    assert len(parsed) == len(manifest) == 8 * 4
    merged = parsed.assign(path=[p.split(str(tmp_path) + "/")[1] for p in parsed["path"]]).merge(
        manifest, on="path", suffixes=("", "_truth")
    )
    for column in ("label", "patient_id", "magnification", "subtype"):
        assert (merged[column] == merged[f"{column}_truth"]).all(), column
    first = manifest.iloc[0]["path"]
    assert first.startswith("BreaKHis_v1/histology_slides/breast/benign/SOB/")
    assert parse_breakhis_name(first.rsplit("/", 1)[1])["label"] == "benign"


def test_default_dataset_has_what_the_course_needs(tmp_path):
    spec = SyntheticSpec()
    assert spec.patients >= 24 and spec.images_per_patient >= 2
    manifest = write_synthetic_dataset(SyntheticSpec(patients=spec.patients, images_per_patient=1), tmp_path)
    assert set(manifest["label"]) == {"benign", "malignant"}
    assert set(manifest["magnification"]) == set(MAGNIFICATIONS)
    benign_share = manifest.groupby("label")["patient_id"].nunique()["benign"] / spec.patients
    assert 0.2 < benign_share < 0.4  # about BreakHis' 24 of 82


def test_images_are_rgb_of_the_stated_size(tmp_path):
    manifest = write_synthetic_dataset(SMALL, tmp_path)
    image = read_rgb(tmp_path / manifest.iloc[0]["path"])
    assert image.shape == (230, 350, 3) and image.dtype == np.uint8


def _dark_fraction(image):
    """Share of pixels as dark as nuclei (stroma and lumen are much lighter)."""
    return float((image.mean(axis=2) < 140).mean())


def test_malignant_tissue_has_more_nuclear_material():
    rng = np.random.default_rng(0)
    benign = [_dark_fraction(render_tissue(rng, 0.2, 1.0)) for _ in range(10)]
    malignant = [_dark_fraction(render_tissue(rng, 0.8, 1.0)) for _ in range(10)]
    assert np.mean(malignant) > 1.5 * np.mean(benign)


@pytest.mark.parametrize("difficulty,expected_overlap", [(0.0, False), (1.0, True)])
def test_difficulty_controls_grade_overlap(tmp_path, difficulty, expected_overlap):
    manifest = write_synthetic_dataset(
        SyntheticSpec(patients=40, images_per_patient=1, difficulty=difficulty), tmp_path
    )
    grades = manifest.groupby(["label", "patient_id"])["grade"].first()
    overlap = grades["benign"].max() > grades["malignant"].min()
    assert overlap == expected_overlap


def test_cache_generates_once(tmp_path):
    first = ensure_synthetic_dataset(SMALL, tmp_path)
    stamp = (first / "manifest.csv").stat().st_mtime_ns
    again = ensure_synthetic_dataset(SMALL, tmp_path)
    assert again == first and (again / "manifest.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging folder left


def test_cache_key_changes_with_spec():
    assert SMALL.cache_key() != SyntheticSpec(patients=8, images_per_patient=1, difficulty=0.6).cache_key()


@pytest.mark.parametrize(
    "spec,message",
    [
        (SyntheticSpec(patients=2), "synthetic_patients: expected an integer >= 6, got 2"),
        (SyntheticSpec(images_per_patient=0), "images_per_patient"),
        (SyntheticSpec(difficulty=-0.1), "difficulty"),
    ],
)
def test_bad_spec_is_refused(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(spec, tmp_path)


def test_the_manifest_says_what_the_file_names_say(tmp_path):
    """Each manifest row is a file on disk whose BreakHis name gives its label, subtype,
    patient and magnification: the manifest and the names cannot disagree."""
    write_synthetic_dataset(SMALL, tmp_path)
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str)
    assert len(manifest) == SMALL.patients * SMALL.images_per_patient * 4
    for row in manifest.itertuples():
        assert (tmp_path / row.path).is_file()
        parsed = parse_breakhis_name((tmp_path / row.path).name)
        assert (parsed["label"], parsed["subtype"], parsed["patient_id"], parsed["magnification"]) == (
            row.label,
            row.subtype,
            row.patient_id,
            row.magnification,
        )
