"""task=subtype: tumour types from names and manifests, splits by type, the head, the metrics."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.data import loading, pipeline, splitting, tasks
from bcnb.data.layouts import parse_breakhis_name
from bcnb.data.synthetic import LOOKS, render_tissue


def test_types_are_read_from_real_breakhis_names(breakhis_sample):
    manifest = pd.read_csv(breakhis_sample / "manifest.csv")
    for row in manifest.itertuples():
        code = parse_breakhis_name(row.path.rsplit("/", 1)[-1])["subtype"]
        assert code == row.subtype and code in tasks.SUBTYPES
        assert (code in tasks.MALIGNANT_TYPES) == (row.label == "malignant")


@pytest.mark.parametrize(
    "word,code",
    [
        ("DC", "DC"),
        ("ductal carcinoma", "DC"),
        ("ductal_carcinoma", "DC"),
        ("phyllodes_tumor", "PT"),
        ("a", "A"),
    ],
)
def test_manifest_words_for_a_type(word, code):
    assert tasks.subtype_code(word) == code


def test_an_unknown_type_is_named():
    with pytest.raises(ValueError, match="tumour type 'medullary' is not one of adenosis"):
        tasks.subtype_code("medullary")


def test_malignant_probability_sums_the_malignant_types():
    softmax = np.array([[0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]])
    np.testing.assert_allclose(tasks.malignant_probability(softmax), [0.6, 0.0])
    np.testing.assert_allclose(tasks.malignant_probability(np.array([[0.2], [0.9]])), [0.2, 0.9])


def test_subtype_metrics_by_hand():
    # two DC right, one DC called LC, one A right, one A called F
    codes = ["DC", "DC", "DC", "A", "A"]
    outputs = np.eye(8)[[4, 4, 5, 0, 1]]
    found = tasks.subtype_metrics(codes, outputs)
    assert found["accuracy"] == pytest.approx(3 / 5)
    assert found["per_type"]["ductal carcinoma"] == {
        "images": 3,
        "recall": pytest.approx(2 / 3),
        "precision": 1.0,
    }
    assert found["per_type"]["lobular carcinoma"]["recall"] is None  # no test image of that type
    assert found["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # over the types present
    assert np.array(found["confusion_matrix"])[4, 5] == 1 and np.array(found["confusion_matrix"]).sum() == 5


def _subtype_table(patients_per_type: dict[str, int]) -> pd.DataFrame:
    rows = []
    for code, count in patients_per_type.items():
        label = "malignant" if code in tasks.MALIGNANT_TYPES else "benign"
        for p in range(count):
            rows += [{"path": f"{code}{p}-{i}.png", "label": label, "patient_id": f"{code}-{p}",
                      "magnification": "40X", "subtype": code} for i in range(3)]  # fmt: skip
    return pd.DataFrame(rows)


def test_the_split_is_stratified_by_type_and_rare_types_are_named():
    table = _subtype_table({"A": 6, "F": 2, "PT": 1, "TA": 5, "DC": 9, "LC": 5, "MC": 2, "PC": 4})
    split = splitting.split_by_patient(table, 0.2, 0.2, seed=1, by="subtype")
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # still by patient
    for code in ("A", "TA", "DC", "LC", "PC"):  # enough patients: one in each split at least
        assert set(split[split["subtype"] == code]["split"]) == {"train", "val", "test"}
    notes = splitting.rare_types(table, 3)
    assert len(notes) == 3 and "phyllodes tumour has 1 patient(s)" in notes[1]


def test_a_dataset_without_types_is_refused_in_one_line(tmp_path):
    table = _subtype_table({"A": 3, "DC": 3}).drop(columns="subtype")
    with pytest.raises(ValueError, match=r"^task=subtype: .* has no tumour type for every image"):
        loading.with_subtypes(table, tmp_path)
    wrong = _subtype_table({"A": 3, "DC": 3}).assign(subtype="DC")
    with pytest.raises(ValueError, match="is labelled benign but its type is DC"):
        loading.with_subtypes(wrong, tmp_path)


def test_a_csv_manifest_with_a_subtype_column(tmp_path):
    from PIL import Image

    rows = []
    for p, (word, label) in enumerate([("adenosis", "benign"), ("ductal carcinoma", "malignant")] * 3):
        Image.new("RGB", (40, 40), (200, 120 + 10 * p, 180)).save(tmp_path / f"{p}.png")
        rows.append({"path": f"{p}.png", "label": label, "patient_id": f"p{p}", "subtype": word})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = Config(dataset=str(tmp_path / "m.csv"), task="subtype", run_dir=str(tmp_path / "run"))
    table = loading.load_dataset(cfg).table
    assert table["subtype"].tolist() == ["A", "DC"] * 3


def test_the_built_in_types_look_different():
    """The same random draws under each type's look give eight different fields, and the
    mucinous one is bluer (its pools of mucin) than the ductal one."""

    def field(code):
        return render_tissue(np.random.default_rng(0), 0.5, 1.0, 1.0, LOOKS[code]).astype(float)

    blue_minus_red = {code: (field(code)[..., 2] - field(code)[..., 0]).mean() for code in ("MC", "DC")}
    assert blue_minus_red["MC"] > blue_minus_red["DC"] + 2
    assert len({field(code).tobytes() for code in LOOKS}) == len(LOOKS)


@pytest.fixture(scope="module")
def subtype_run(tiny_cfg, tmp_path_factory):
    cfg = tiny_cfg.replace(
        task="subtype",
        synthetic_patients=24,
        epochs=2,
        bootstrap_samples=100,
        run_dir=str(tmp_path_factory.mktemp("subtype_run")),
    )
    return cfg, splitting.split_for_run(cfg, loading.load_dataset(cfg).table)


@pytest.mark.slow
def test_the_backbone_comparison_runs_with_tumour_types(subtype_run):
    """Notebook 05's steps with task=subtype; then the trained ResNet50V2 (8 softmax units)
    is explained by Grad-CAM of its summed malignant probability."""
    from bcnb.evaluate import compare, gradcam
    from bcnb.model import transfer

    cfg, split = subtype_run
    results = [compare.run_backbone(cfg, name, split) for name in ("resnet50v2", "mobilenetv2")]
    test = split[split["split"] == "test"]
    for result in results:  # P(malignant) from the eight types, one per test image
        assert result["test_probability"].shape == (len(test),)
        assert ((0 <= result["test_probability"]) & (result["test_probability"] <= 1)).all()
        assert result["epochs_run"] == cfg.epochs  # trained on the cached features, every epoch
    paired = compare.paired_table(results, test, n_boot=100)
    assert paired.index.tolist() == ["mobilenetv2"] and 0 <= paired.loc["mobilenetv2", "McNemar p"] <= 1

    model = transfer.load_model(Path(cfg.run_dir) / "compare" / "resnet50v2" / "model.keras")
    assert model.output.shape[-1] == 8 and model.get_layer("classifier").activation.__name__ == "softmax"
    images = pipeline.load_images(cfg, split.head(3))
    heat, probability = gradcam.gradcam(model, images)
    expected = tasks.malignant_probability(model.predict(images, verbose=0))
    np.testing.assert_allclose(probability, expected, atol=1e-5)  # Grad-CAM explains P(malignant)
    assert heat.shape == (3, cfg.img_size, cfg.img_size)
