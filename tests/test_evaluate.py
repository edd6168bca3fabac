import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bcnb.evaluate import headline, scores
from bcnb.run import artifacts


def _random_predictions(seed, n=80, positive_share=0.7):
    rng = np.random.default_rng(seed)
    y_true = (rng.random(n) < positive_share).astype(int)
    y_prob = np.clip(0.35 * y_true + rng.uniform(0, 0.7, n), 0, 1)
    return y_true, y_prob


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_metrics_agree_with_scikit_learn(seed, threshold):
    y_true, y_prob = _random_predictions(seed)
    y_pred = (y_prob >= threshold).astype(int)
    found = scores.compute_metrics(y_true, y_prob, threshold)
    assert found["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert found["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert found["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=1))
    assert found["specificity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0))
    assert found["precision"] == pytest.approx(skm.precision_score(y_true, y_pred, zero_division=np.nan))
    assert found["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert found["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, y_prob))
    assert found["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()


def test_confusion_matrix_layout():
    # rows are true benign/malignant, columns predicted benign/malignant
    found = scores.compute_metrics(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.9, 0.2, 0.8, 0.7]))
    assert found["confusion_matrix"] == [[1, 1], [1, 2]]
    assert found["sensitivity"] == pytest.approx(2 / 3) and found["specificity"] == pytest.approx(1 / 2)


def test_one_class_test_set_has_no_auc_and_saves_null(tmp_path):
    found = scores.compute_metrics(np.ones(4), np.array([0.2, 0.6, 0.7, 0.9]))
    assert math.isnan(found["roc_auc"]) and math.isnan(found["specificity"])
    scores.save_metrics(found, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())  # valid JSON: no NaN
    assert saved["roc_auc"] is None and saved["sensitivity"] == 0.75


@pytest.mark.parametrize("successes,n", [(8, 10), (57, 61), (0, 5), (100, 100)])
def test_wilson_interval_matches_scipy(successes, n):
    from scipy.stats import binomtest

    reference = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert scores.wilson_interval(successes, n) == pytest.approx((reference.low, reference.high), abs=1e-3)


def test_wilson_interval_textbook_value():
    assert scores.wilson_interval(8, 10) == pytest.approx((0.490, 0.943), abs=1e-3)


def test_summary_holds_every_required_field():
    test = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(6)],
            "label": ["benign", "benign", "malignant", "malignant", "malignant", "malignant"],
            "patient_id": ["a", "a", "b", "b", "c", "c"],
            "magnification": "40X",
        }
    )
    y_prob = np.array([0.2, 0.7, 0.9, 0.8, 0.4, 0.95])
    weights = {"used": "random", "pretrained": False, "source": "weights=none was requested"}
    summary = headline.summarize_test_results(
        test, y_prob, {"accuracy": 4 / 6, "loss": 0.5}, weights, "synthetic"
    )
    required = set(
        "test_accuracy test_loss balanced_accuracy sensitivity specificity roc_auc confusion_matrix "
        "n_test_images n_test_patients weights paper_test_accuracy".split()
    )
    assert required <= set(summary)
    assert (summary["n_test_images"], summary["n_test_patients"]) == (6, 3)
    assert summary["paper_test_accuracy"] == 0.9344 and summary["weights"] == "random"
    assert summary["majority_class"] == "malignant"
    assert summary["majority_class_accuracy"] == pytest.approx(4 / 6)
    assert summary["confusion_matrix"] == [[1, 1], [1, 3]]


def test_patient_recognition_rate_by_hand():
    """Spanhol et al.'s rate: patient a 2 of 3 right, b 1 of 1, c 0 of 2 -> (2/3 + 1 + 0) / 3,
    not the 3 of 6 images of the image-level accuracy."""
    y_true = np.array([1, 1, 1, 0, 0, 0])
    y_prob = np.array([0.9, 0.8, 0.2, 0.1, 0.7, 0.6])
    patients = ["a", "a", "a", "b", "c", "c"]
    assert scores.patient_recognition_rate(y_true, y_prob, patients) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores.compute_metrics(y_true, y_prob)["accuracy"] == 0.5
    assert scores.patient_recognition_rate(y_true, y_prob, patients, threshold=0.65) == pytest.approx(
        (2 / 3 + 1 + 1 / 2) / 3
    )


@pytest.mark.parametrize(
    "labels,expected",
    [([0, 0, 0, 1], ("benign", 0.75)), ([1, 1, 0], ("malignant", 2 / 3)), ([0, 1], ("malignant", 0.5))],
)
def test_the_baseline_is_the_larger_class_of_the_test_split(labels, expected):
    """IDC patches are mostly benign: the trivial model there is always-benign."""
    found = scores.majority_class_baseline(np.array(labels))
    assert (found["majority_class"], found["majority_class_accuracy"]) == pytest.approx(expected)


def test_predictions_file(tmp_path):
    test = pd.DataFrame(
        {"path": ["a.png", "b.png"], "label": ["benign", "malignant"], "patient_id": ["1", "2"]}
    ).assign(magnification="40X")
    scores.save_predictions(test, np.array([0.25, 0.5]), tmp_path)
    saved = pd.read_csv(tmp_path / "predictions.csv")
    assert list(saved["predicted"]) == ["benign", "malignant"]
    assert list(saved["malignant_probability"]) == [0.25, 0.5]


def test_load_metrics_says_which_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebook 04_evaluate"):
        artifacts.load_metrics(tmp_path)


def test_metrics_by_magnification():
    test = pd.DataFrame(
        {
            "label": ["benign", "malignant", "benign", "malignant", "malignant"],
            "magnification": ["40X", "40X", "400X", "400X", "400X"],
            "patient_id": ["a", "b", "a", "b", "b"],
        }
    )
    y_prob = np.array([0.2, 0.9, 0.6, 0.8, 0.3])
    found = scores.metrics_by_magnification(test, y_prob)
    assert list(found) == ["40X", "400X"]  # lowest magnification first
    assert found["40X"] == {
        "n_images": 2,
        "accuracy": 1.0,
        "balanced_accuracy": 1.0,
        "sensitivity": 1.0,
        "specificity": 1.0,
        "roc_auc": 1.0,
        "patient_recognition_rate": 1.0,
    }
    assert found["400X"]["patient_recognition_rate"] == pytest.approx((0 + 1 / 2) / 2)
    assert found["400X"]["accuracy"] == pytest.approx(1 / 3) and found["400X"]["n_images"] == 3


def test_errors_by_patient_puts_the_worst_patients_first():
    decided = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "b", "b", "c"],
            "label": ["benign", "benign", "malignant", "malignant", "malignant", "benign"],
            "predicted": ["benign", "malignant", "benign", "benign", "malignant", "benign"],
        }
    )
    table = scores.errors_by_patient(decided)
    assert table.index.tolist() == ["b", "a", "c"]
    assert table.loc["b"].tolist() == ["malignant", 3, 2, 0.667] and table.loc["c", "wrong"] == 0


def test_tta_views_are_the_eight_orientations_and_their_mean_is_taken():
    import keras

    from bcnb.evaluate import tta

    images = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    views = tta.dihedral_views(images)
    as_bytes = {view[0].tobytes() for view in views}
    assert len(views) == 8 and len(as_bytes) == 8  # all distinct for an asymmetric image
    assert any(np.array_equal(view, images) for view in views)
    # A "model" that answers the top-left pixel / 20: the mean over the eight views is the
    # mean of the four corners, each seen twice (turned, and mirrored then turned).
    inputs = keras.Input((3, 3, 1))
    corner = keras.layers.Rescaling(1 / 20)(keras.layers.Cropping2D(((0, 2), (0, 2)))(inputs))
    model = keras.Model(inputs, keras.layers.Flatten()(corner))
    found = tta.tta_probabilities(model, [(images, None)])
    corners = images[:, [0, 0, 2, 2], [0, 2, 0, 2], 0]
    np.testing.assert_allclose(found, corners.mean(axis=1) / 20, rtol=1e-6)


def test_tta_comparison_scores_both_on_the_same_labels():
    from bcnb.evaluate import tta

    y = np.array([0, 0, 1, 1])
    table = tta.tta_comparison(y, np.array([0.6, 0.2, 0.7, 0.4]), np.array([0.4, 0.2, 0.7, 0.6]))
    assert table.loc["one view", "accuracy"] == 0.5 and table.loc["8 views (tta)", "accuracy"] == 1.0
    assert table.loc["8 views (tta)", "Brier score"] < table.loc["one view", "Brier score"]
