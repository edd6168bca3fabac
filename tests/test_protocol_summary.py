"""A protocol's summary: pooled out-of-fold figures, the corrected resampled t, what summary.md says."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bcnb import Config
from bcnb.batch import protocol
from bcnb.evaluate import crossval
from bcnb.evaluate.scores import compute_metrics, patient_recognition_rate


# --------------------------------------------------------------------------- the corrected t
def test_the_corrected_t_on_known_numbers_is_shown_past_1_and_flagged():
    """Five folds (n_test/n_train = 1/4), four figures: mean 0.875, sd^2 = 0.0041667. Nadeau &
    Bengio's variance of the mean: 0.0041667 * (1/4 + 1/4) = 0.0020833, sqrt 0.045644; t(0.975,
    3) = 3.182446, so half-width 0.145258, against Student's 0.102713 (sd / sqrt(4) * t)."""
    interval = crossval.corrected_t([0.80, 0.90, 0.85, 0.95], ratio=1 / 4)
    assert interval["low"] == pytest.approx(0.875 - 0.145258, abs=1e-6)
    assert interval["high"] == pytest.approx(1.020258, abs=1e-6)  # past 1: shown, not cut
    assert interval["past_range"] and interval["method"].startswith("corrected resampled t")
    assert crossval.format_t_interval(interval) == "0.730-1.020 (past 1)"
    student = scipy_stats.t.ppf(0.975, 3) * np.std([0.80, 0.90, 0.85, 0.95], ddof=1) / 2
    assert interval["high"] - 0.875 > student  # wider than Student's t over dependent folds


def test_an_interval_inside_the_scale_is_not_flagged_and_one_below_0_is():
    inside = crossval.corrected_t([0.70, 0.72, 0.71], ratio=1 / 2)
    assert not inside["past_range"] and "past" not in crossval.format_t_interval(inside)
    below = crossval.corrected_t([0.0, 0.1, 0.02], ratio=1)
    assert below["past_range"] and crossval.format_t_interval(below).endswith("(past 0)")


def test_the_ratio_of_test_to_training_images():
    assert crossval.test_to_train(5, 0.2) == pytest.approx(1 / 4)  # K folds: 1/(K-1)
    assert crossval.test_to_train(2, 0.2) == pytest.approx(1.0)
    assert crossval.test_to_train(0, 0.2) == pytest.approx(0.25)  # repeats: test over the rest


def test_spread_is_the_mean_sd_and_corrected_interval_of_the_defined_values():
    found = crossval.spread([0.80, 0.90, None, 0.85, float("nan"), 0.95], ratio=1 / 4)
    assert found["runs"] == 4 and found["mean"] == pytest.approx(0.875)
    assert found["sd"] == pytest.approx(np.std([0.80, 0.90, 0.85, 0.95], ddof=1))
    assert found["interval"] == crossval.corrected_t([0.80, 0.90, 0.85, 0.95], 1 / 4)
    assert crossval.spread([0.7], 0.25)["interval"] is None and crossval.spread([], 0.25)["mean"] is None


# --------------------------------------------------------------------------- pooled out of fold
def _fold(patients, labels, probabilities, calibrated=None, threshold=0.5, prefix="f"):
    """A fold's predictions.csv: two images per patient."""
    calibrated = probabilities if calibrated is None else calibrated
    rows = []
    for patient, label, pair, calibrated_pair in zip(patients, labels, probabilities, calibrated):
        for image, (p, c) in enumerate(zip(pair, calibrated_pair)):
            rows.append(
                {
                    "path": f"/d/{prefix}-{patient}-{image}.png",
                    "label": label,
                    "patient_id": patient,
                    "magnification": "40X",
                    "malignant_probability": p,
                    "calibrated_probability": c,
                    "predicted": "malignant" if c >= threshold else "benign",
                }
            )
    return pd.DataFrame(rows)


def _two_folds():
    """Fold 1's model is confident, fold 2's timid (all its probabilities below 0.5): each
    ranks its own images well, but pooled, fold 2's malignant images sit below fold 1's benign."""
    labels = ["benign"] * 5 + ["malignant"] * 5
    first = _fold(
        [f"a{i}" for i in range(10)], labels, [(0.4, 0.45)] * 5 + [(0.9, 0.8)] * 4 + [(0.3, 0.6)], prefix="1"
    )
    timid = [(0.05, 0.1)] * 5 + [(0.3, 0.35)] * 5
    second = _fold([f"b{i}" for i in range(10)], labels, timid, timid, threshold=0.2, prefix="2")
    return [first, second]


def test_pooled_figures_are_those_of_the_concatenated_predictions():
    folds = _two_folds()
    pooled = crossval.pooled_out_of_fold(folds, n_boot=300, seed=1)
    together = pd.concat(folds, ignore_index=True)
    y_true = (together["label"] == "malignant").to_numpy(dtype=int)
    expected = compute_metrics(y_true, together["malignant_probability"].to_numpy(), 0.5)
    for name in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
        assert pooled["at_0.5"][name]["value"] == pytest.approx(expected[name])
    prr = patient_recognition_rate(y_true, together["malignant_probability"], together["patient_id"])
    assert pooled["at_0.5"]["patient_recognition_rate"]["value"] == pytest.approx(prr)
    assert pooled["images"] == 40 and pooled["patients"] == 20
    fold_aucs = [
        compute_metrics((f["label"] == "malignant").to_numpy(dtype=int), f["malignant_probability"])[
            "roc_auc"
        ]
        for f in folds
    ]
    assert pooled["at_0.5"]["roc_auc"]["value"] < np.mean(fold_aucs)  # pooling is not averaging
    interval = pooled["at_0.5"]["accuracy"]["interval"]
    assert (
        interval["estimable"] and interval["low"] <= pooled["at_0.5"]["accuracy"]["value"] <= interval["high"]
    )


def test_pooled_at_each_folds_threshold_counts_each_folds_own_calls():
    """Fold 2 called at its own 0.2: its malignant images right, which 0.5 would call benign."""
    folds = _two_folds()
    pooled = crossval.pooled_out_of_fold(folds, n_boot=200)
    together = pd.concat(folds, ignore_index=True)
    right = (together["predicted"] == together["label"]).mean()
    assert pooled["at_chosen_threshold"]["accuracy"]["value"] == pytest.approx(right)
    assert pooled["at_chosen_threshold"]["accuracy"]["value"] > pooled["at_0.5"]["accuracy"]["value"]
    y_true = (together["label"] == "malignant").to_numpy(dtype=int)
    auc = compute_metrics(y_true, together["calibrated_probability"].to_numpy())["roc_auc"]
    assert pooled["at_chosen_threshold"]["roc_auc"]["value"] == pytest.approx(auc)


def test_an_image_tested_in_two_folds_cannot_be_pooled():
    first, _ = _two_folds()
    with pytest.raises(ValueError, match=r"pooled out of fold: /d/1-a0-0.png was tested in runs 1 and 2"):
        crossval.pooled_out_of_fold([first, first.head(2)])


# --------------------------------------------------------------------------- summary.md and .json
def _run_folder(folder, predictions, accuracy):
    folder.mkdir(parents=True)
    predictions.to_csv(folder / "predictions.csv", index=False)
    figures = {name: accuracy for name in protocol.METRICS}
    metrics = {
        "test_accuracy": accuracy,
        **{name: value for name, value in figures.items() if name != "accuracy"},
        "n_test_images": len(predictions),
        "n_test_patients": predictions["patient_id"].nunique(),
        "decision": {"threshold": 0.4, "image_level": figures},
        "weights": "imagenet",
        "weights_pretrained": True,
        "dataset": "/data/BreaKHis_v1",
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def two_folds(tmp_path):
    for number, (fold, accuracy) in enumerate(zip(_two_folds(), (0.99, 0.97)), start=1):
        _run_folder(tmp_path / f"fold-{number}", fold, accuracy)
    return tmp_path


def test_a_folds_summary_carries_the_pooled_figures_and_the_corrected_t(two_folds):
    design = protocol.Protocol(Config(bootstrap_samples=200), folds=2)
    summary = protocol.summarize(two_folds, design)
    assert summary["pooled"]["applies"] and summary["test_to_train"] == pytest.approx(1.0)
    accuracy = summary["summary"]["at_0.5"]["accuracy"]
    assert (
        accuracy["interval"] == crossval.corrected_t([0.99, 0.97], 1.0) and accuracy["interval"]["past_range"]
    )
    text = protocol.render_summary(json.loads(json.dumps(summary)))
    assert (
        "## Pooled out of fold: every image tested once" in text and "40 test images of 20 patients" in text
    )
    assert "Nadeau & Bengio" in text and "Machine Learning 52:239-281" in text and "Forman & Scholz" in text
    assert "(past 1)" in text and "never cut at 0 or 1" in text
    assert "Student's t over them is too narrow" in text


def test_a_repeats_summary_says_pooling_does_not_apply(two_folds):
    design = protocol.Protocol(Config(), repeats=2)
    for number in (1, 2):
        (two_folds / f"fold-{number}").rename(two_folds / f"repeat-{number}")
    summary = protocol.summarize(two_folds, design)
    assert summary["pooled"] == {"applies": False, "why": design.not_pooled}
    assert (
        summary["test_to_train"] == pytest.approx(0.25)
        and summary["summary"]["at_0.5"]["accuracy"]["interval"]
    )
    text = protocol.render_summary(summary)
    assert "Not applicable: random splits test some patients in several runs" in text


def test_summary_png_draws_the_pooled_figure_and_the_interval(two_folds):
    from bcnb.report import figures

    summary = protocol.summarize(two_folds, protocol.Protocol(Config(bootstrap_samples=200), folds=2))
    fig = figures.plot_runs(summary)
    fig.canvas.draw()
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "pooled out of fold" in labels and "mean, corrected t 95%" in labels
    assert fig.axes[0].get_ylim()[1] > 1.0  # the interval past 1 is drawn, not cut
