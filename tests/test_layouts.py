"""Every layout bcnb reads: BreakHis, IDC patches, class folders and CSV manifests."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bcnb.data import layouts


def write_image(path: Path, seed: int = 0, size=(24, 24)) -> Path:
    """A small PNG of random content (distinct per seed, so no accidental duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --------------------------------------------------------------------------- BreakHis
def test_parse_breakhis_name_on_every_real_sample_file(breakhis_sample):
    manifest = pd.read_csv(breakhis_sample / "manifest.csv", dtype=str)
    for row in manifest.itertuples():
        parsed = layouts.parse_breakhis_name(Path(row.path).name)
        assert (parsed["label"], parsed["patient_id"], parsed["magnification"], parsed["subtype"]) == (
            row.label,
            row.patient_id,
            row.magnification,
            row.subtype,
        )


def test_a_slide_under_two_tumour_types_is_named_and_read_as_one_patient(tmp_path):
    """SOB_M_DC-14-13412 and SOB_M_LC-14-13412: one slide number, two tumour types."""
    names = [
        "SOB_B_A-14-100-40-001.png",
        "SOB_M_DC-14-13412-40-001.png",
        "SOB_M_LC-14-13412-40-002.png",
        "SOB_M_DC-14-777-40-001.png",
    ]
    for seed, name in enumerate(names):
        write_image(tmp_path / "BreaKHis" / "40X" / name, seed)
    found = layouts.read_layout(tmp_path / "BreaKHis", "breakhis")
    patients = dict(zip(found.table["path"].map(lambda p: Path(p).name), found.table["patient_id"]))
    assert patients[names[1]] == patients[names[2]] == "14-13412"  # so they never straddle splits
    assert any("14-13412 (DC and LC)" in note and "one patient" in note for note in found.notes)
    apart = layouts.read_layout(tmp_path / "BreaKHis", "breakhis", patient_id_from="folder").table
    assert sorted(apart["patient_id"]) == ["A-14-100", "DC-14-13412", "DC-14-777", "LC-14-13412"]


@pytest.mark.parametrize(
    "name",
    ["SOB_B_A-14-22549AB-40.png", "SOB_X_A-14-22549AB-40-001.png", "SOB_B_A-14-22549AB-50-001.png", "a.png"],
)
def test_parse_breakhis_name_rejects_other_names(name):
    with pytest.raises(ValueError, match="not a BreakHis image name"):
        layouts.parse_breakhis_name(name)


@pytest.mark.parametrize(
    "level", ["BreaKHis_v1", "BreaKHis_v1/histology_slides", "BreaKHis_v1/histology_slides/breast", "."]
)
def test_read_breakhis_from_any_level(breakhis_sample, level):
    table = layouts.read_breakhis(breakhis_sample / level).table
    assert len(table) == 16 and (table["problem"] == "").all()
    assert table["patient_id"].nunique() == 12
    assert set(table["magnification"]) == {"40X", "100X", "200X", "400X"}


def test_breakhis_folder_and_csv_manifest_agree(breakhis_sample):
    columns = [*layouts.TABLE_COLUMNS, "subtype"]  # the manifest's subtype column is kept (task=subtype)
    from_folders = layouts.read_breakhis(breakhis_sample).table[columns].sort_values("path")
    found = layouts.read_manifest(breakhis_sample / "manifest.csv")
    from_csv = found.table[columns].sort_values("path")
    pd.testing.assert_frame_equal(from_folders.reset_index(drop=True), from_csv.reset_index(drop=True))
    used, ignored = found.notes[0].split("; ")
    assert used == "manifest columns used: path, label, patient_id, magnification, subtype"
    assert ignored == "ignored: width, height, sha256"


def test_strays_in_breakhis_image_folders(tmp_path):
    folder = tmp_path / "SOB_B_A_14-1" / "40X"
    write_image(folder / "SOB_B_A-14-1-40-001.png")
    write_image(folder / "scan 2.png", seed=1)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (tmp_path / "README.txt").write_text("outside the image folders: ignored")
    table = layouts.read_breakhis(tmp_path).table
    problems = {Path(path).name: problem for path, problem in zip(table["path"], table["problem"])}
    assert problems == {
        "SOB_B_A-14-1-40-001.png": "",
        "scan 2.png": "not a BreakHis image name",
        ".DS_Store": "not an image (hidden file)",
        "Thumbs.db": "not an image (.db)",
    }


# --------------------------------------------------------------------------- IDC
def _idc_tree(root: Path, patients=("8863", "9036", "10253")) -> Path:
    seed = 0
    for patient in patients:
        for cls in ("0", "1"):
            for x in (1, 51):
                seed += 1
                write_image(root / patient / cls / f"{patient}_idx5_x{x}_y1_class{cls}.png", seed, (50, 50))
    return root


def test_read_idc_patients_from_folders_and_classes(tmp_path):
    found = layouts.read_layout(_idc_tree(tmp_path / "idc"), "auto")
    table = found.table
    assert found.layout == "idc" and found.notes[0] == "layout: detected idc"
    assert len(table) == 12 and set(table["patient_id"]) == {"8863", "9036", "10253"}
    ones = table[table["path"].str.contains("/1/")]
    assert (ones["label"] == "malignant").all() and (table.drop(ones.index)["label"] == "benign").all()


def test_idc_second_copy_of_the_archive_is_listed_once(tmp_path):
    _idc_tree(tmp_path)
    _idc_tree(tmp_path / "IDC_regular_ps50_idx5")
    found = layouts.read_idc(tmp_path)
    assert len(found.table) == 12 and "12 patches found twice" in found.notes[-1]


def test_idc_class_folder_and_name_must_agree(tmp_path):
    write_image(tmp_path / "8863" / "1" / "8863_idx5_x1_y1_class0.png")
    write_image(tmp_path / "8863" / "0" / "8863_idx5_x2_y1_class0.png", 1)
    problems = set(layouts.read_idc(tmp_path).table["problem"])
    assert problems == {"", "in folder 1 but named class0"}


# --------------------------------------------------------------------------- class folders
def test_class_folders_with_patient_subfolders(tmp_path):
    for n, (cls, patient) in enumerate(
        [("tumor", "p1"), ("tumor", "p2"), ("normal", "p3"), ("normal", "p4")]
    ):
        write_image(tmp_path / cls / patient / "region" / f"img{n}.jpg".replace(".jpg", ".png"), n)
    found = layouts.read_layout(tmp_path, "auto", positive_class="tumor")
    assert found.layout == "folders" and found.patient_level
    labels = dict(zip(found.table["patient_id"], found.table["label"]))
    assert labels == {"p1": "malignant", "p2": "malignant", "p3": "benign", "p4": "benign"}
    assert "folder 'tumor' is read as malignant, 'normal' as benign" in found.notes[1]


def test_class_folders_patient_from_a_pattern(tmp_path):
    write_image(tmp_path / "malignant" / "case-07_slide2.png")
    write_image(tmp_path / "benign" / "case-11_slide1.png", 1)
    found = layouts.read_class_folders(tmp_path, patient_pattern=r"case-(\d+)")
    assert sorted(found.table["patient_id"]) == ["07", "11"] and found.patient_level


def test_class_folders_without_patients_say_the_split_is_by_image(tmp_path):
    write_image(tmp_path / "malignant" / "a.png")
    write_image(tmp_path / "benign" / "b.png", 1)
    (tmp_path / "benign" / "notes.txt").write_text("x")
    found = layouts.read_class_folders(tmp_path)
    assert not found.patient_level and "split is by image" in found.notes[-1]
    assert set(found.table["problem"]) == {"", "not an image (.txt)"}


@pytest.mark.parametrize(
    "folders,kwargs,message",
    [
        (["a", "b", "c"], {}, "has 3 class folders with images \\(a, b, c\\); need 2"),
        (["benign", "tumor"], {}, "positive_class: 'malignant' is not a class folder"),
        (["benign", "malignant"], {"patient_pattern": r"case-(\d+)"}, "patient_pattern: .* finds no group"),
    ],
)
def test_class_folder_errors(tmp_path, folders, kwargs, message):
    for n, name in enumerate(folders):
        write_image(tmp_path / name / f"x{n}.png", n)
    with pytest.raises(ValueError, match=message):
        layouts.read_class_folders(tmp_path, **kwargs)


# --------------------------------------------------------------------------- CSV manifests
def _manifest(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,message",
    [
        ("path,label\na.png,benign\n", "missing column patient_id"),
        ("path,label,patient_id\n", "header but no images"),
        ("path,label,patient_id\na.png,tumour,p1\n", "label 'tumour' is not benign/malignant"),
        ("", "not a readable CSV"),
    ],
)
def test_manifest_errors(tmp_path, text, message):
    write_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match=message):
        layouts.read_manifest(_manifest(tmp_path, text))


def test_manifest_labels_extra_columns_and_missing_files(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", 1)
    found = layouts.read_manifest(
        _manifest(tmp_path, "path,label,patient_id,stain\na.png,0,p1,x\nb.png,M,p2,y\nc.png,1,p3,z\n")
    )
    table = found.table
    assert list(table["label"]) == ["benign", "malignant", "malignant"]
    assert list(table["magnification"]) == ["unknown"] * 3
    assert Path(table.iloc[0]["path"]) == tmp_path / "a.png"
    assert list(table["problem"]) == ["", "", "missing file (listed in the manifest)"]
    assert found.notes == ["manifest columns used: path, label, patient_id; ignored: stain"]


# --------------------------------------------------------------------------- detection
def test_detection_errors(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        layouts.detect_layout(tmp_path)
    write_image(tmp_path / "only_one_class" / "x.png")
    with pytest.raises(ValueError, match="cannot tell the layout"):
        layouts.detect_layout(tmp_path)
    (tmp_path / "images.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="not a .csv manifest"):
        layouts.detect_layout(tmp_path / "images.zip")
