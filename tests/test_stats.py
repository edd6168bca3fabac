import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from bcnb.evaluate import stats
from bcnb.evaluate.scores import compute_metrics, patient_recognition_rate


def _patients_data(seed, n_patients=20, images_each=5, malignant_share=0.6):
    """Labels per patient, noisy probabilities per image, and each image's patient."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), images_each)
    y_true = (rng.random(n_patients) < malignant_share).astype(int)[patients]
    y_true[:images_each] = 0  # at least one benign and one malignant patient
    y_true[images_each : 2 * images_each] = 1
    y_prob = np.clip(0.3 * y_true + rng.uniform(0, 0.7, len(patients)), 0, 1)
    return y_true, y_prob, patients


def _width(interval):
    return interval.high - interval.low


def test_each_resample_agrees_with_compute_metrics():
    # The per-patient sums must give exactly what compute_metrics finds on the resample built
    # by hand: every image of a drawn patient, as often as the patient was drawn.
    y_true, y_prob, patients = _patients_data(1, n_patients=12, images_each=4)
    y_prob[::7] = 0.5  # ties with the threshold and between images
    counts = stats._patient_draws(12, 40, seed=3)
    found = stats._resampled_metrics(stats._per_patient(y_true, y_prob, patients, 0.5), counts)
    for b, drawn in enumerate(counts):
        rows = np.concatenate([np.flatnonzero(patients == p) for p in range(12) for _ in range(drawn[p])])
        copies = np.concatenate([[f"{p}/{copy}"] * 4 for p in range(12) for copy in range(drawn[p])])
        expected = compute_metrics(y_true[rows], y_prob[rows], 0.5)
        expected["patient_recognition_rate"] = patient_recognition_rate(y_true[rows], y_prob[rows], copies)
        for name in stats.BOOTSTRAP_METRICS:
            assert found[name][b] == pytest.approx(expected[name], nan_ok=True), (name, b)


def test_interval_contains_the_point_estimate():
    y_true, y_prob, patients = _patients_data(0)
    point = {
        **compute_metrics(y_true, y_prob),
        "patient_recognition_rate": patient_recognition_rate(y_true, y_prob, patients),
    }
    intervals = stats.bootstrap_by_patient(y_true, y_prob, patients)
    assert set(intervals) == set(stats.BOOTSTRAP_METRICS)
    for name, interval in intervals.items():
        assert interval.low <= point[name] <= interval.high, name
        assert interval.low < interval.high, name


def test_fewer_patients_give_wider_intervals():
    y_true, y_prob, patients = _patients_data(2, n_patients=60)
    few = patients < 12  # 12 patients: the fewest here with 5 of each class, for an interval
    wide = stats.bootstrap_by_patient(y_true[few], y_prob[few], patients[few])
    narrow = stats.bootstrap_by_patient(y_true, y_prob, patients)
    assert _width(wide["accuracy"]) > 1.5 * _width(narrow["accuracy"])


def test_resampling_is_by_patient_not_by_image():
    # 10 patients, 20 identical images each: really 10 observations, not 200.
    y_true = np.repeat([0] * 5 + [1] * 5, 20)
    right = np.repeat([True, False, True, True, False, True, True, False, True, False], 20)
    y_prob = np.where(right, y_true * 0.8 + 0.1, 0.9 - y_true * 0.8)
    patients = np.repeat(list("abcdefghij"), 20)
    by_patient = stats.bootstrap_by_patient(y_true, y_prob, patients)["accuracy"]
    by_image = stats.bootstrap_by_patient(y_true, y_prob, np.arange(200))["accuracy"]
    assert _width(by_patient) > 2.5 * _width(by_image)
    assert _width(by_patient) >= 0.5  # 6 of 10 right: anything from 3/10 to 9/10 is plausible


def test_same_seed_same_interval_other_seed_other_interval():
    y_true, y_prob, patients = _patients_data(4)
    first = stats.bootstrap_by_patient(y_true, y_prob, patients, seed=7)
    assert stats.bootstrap_by_patient(y_true, y_prob, patients, seed=7) == first
    assert stats.bootstrap_by_patient(y_true, y_prob, patients, seed=8) != first


def test_patient_ids_may_be_strings_in_any_order():
    y_true, y_prob, patients = _patients_data(5)
    named = np.array([f"SOB_{p:03d}" for p in patients])
    order = np.random.default_rng(0).permutation(len(y_true))
    plain = stats.bootstrap_by_patient(y_true, y_prob, patients)
    shuffled = stats.bootstrap_by_patient(y_true[order], y_prob[order], named[order])
    for name in stats.BOOTSTRAP_METRICS:
        assert (shuffled[name].low, shuffled[name].high) == pytest.approx((plain[name].low, plain[name].high))


def test_undefined_metrics_are_nan_and_the_rest_still_defined():
    patients = np.repeat(np.arange(6), 3)
    found = stats.bootstrap_by_patient(np.ones(18, int), np.linspace(0.2, 0.9, 18), patients)
    for name in ("specificity", "roc_auc", "balanced_accuracy", "accuracy"):  # all need benign patients
        assert found[name].reason == "n benign patients = 0" and found[name].low is None, name
    assert 0 <= found["sensitivity"].low <= found["sensitivity"].high <= 1


@pytest.mark.parametrize("bad", [1.7, -0.1, float("nan")])
def test_a_probability_outside_zero_and_one_is_refused(bad):
    """The same check as calibration's: a score of 1.7 is no probability."""
    with pytest.raises(ValueError, match="y_prob must hold probabilities between 0 and 1"):
        stats.bootstrap_by_patient([0, 1, 1], [0.1, bad, 0.7], ["a", "b", "c"])


@pytest.mark.parametrize("argument", ["y_prob", "patients"])
def test_mismatched_lengths_name_the_argument(argument):
    arrays = {"y_true": [0, 1, 1], "y_prob": [0.1, 0.8, 0.7], "patients": ["a", "b", "c"]}
    arrays[argument] = arrays[argument][:2]
    with pytest.raises(ValueError, match=argument):
        stats.bootstrap_by_patient(**arrays)


def test_youden_threshold_separates_separable_classes():
    y_val = np.array([0, 0, 0, 0, 1, 1, 1])
    p_val = np.array([0.05, 0.2, 0.3, 0.41, 0.62, 0.7, 0.95])
    threshold = stats.choose_threshold(y_val, p_val, "youden")
    assert 0.41 < threshold <= 0.62
    assert compute_metrics(y_val, p_val, threshold)["accuracy"] == 1.0


def test_sensitivity_rule_reaches_the_target_with_the_largest_threshold():
    rng = np.random.default_rng(0)
    y_val = (rng.random(200) < 0.6).astype(int)
    p_val = np.clip(0.3 * y_val + rng.uniform(0, 0.7, 200), 0, 1)
    threshold = stats.choose_threshold(y_val, p_val, "sensitivity", target_sensitivity=0.95)
    assert compute_metrics(y_val, p_val, threshold)["sensitivity"] >= 0.95
    assert compute_metrics(y_val, p_val, threshold + 1e-9)["sensitivity"] < 0.95
    assert threshold < stats.choose_threshold(y_val, p_val, "sensitivity", target_sensitivity=0.5)


def test_fixed_rule_and_fallbacks_give_finite_thresholds():
    assert stats.choose_threshold([0, 1, 1], [0.9, 0.1, 0.2], "fixed") == 0.5
    assert stats.choose_threshold([1, 1, 1], [0.9, 0.1, 0.2], "youden") == 0.5  # one class only
    # Predictions backwards: Youden's J is 0 (nobody called malignant is "best"), so 0.5 is kept.
    assert stats.choose_threshold([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], "youden") == 0.5


def test_unknown_threshold_rule_names_the_field():
    with pytest.raises(ValueError, match="threshold_rule.*youden"):
        stats.choose_threshold([0, 1], [0.2, 0.8], "best")


def test_mcnemar_matches_hand_computation():
    y_true = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    pred_a = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 1])  # right on 3
    pred_b = np.array([0, 1, 1, 1, 1, 1, 0, 0, 1, 1])  # right on 7
    found = stats.mcnemar(y_true, pred_a, pred_b)
    assert (found["b"], found["c"]) == (1, 5)
    # P(X <= 1) for X ~ Bin(6, 1/2) is (1 + 6) / 64; two-sided doubles it.
    assert found["p_value"] == pytest.approx(14 / 64)


@pytest.mark.parametrize("b,c", [(3, 12), (20, 9), (7, 7), (0, 4)])
def test_mcnemar_agrees_with_scipy_binomial_test(b, c):
    y_true = np.ones(b + c + 5, int)
    pred_a = np.r_[np.ones(b), np.zeros(c), np.ones(5)]
    pred_b = np.r_[np.zeros(b), np.ones(c), np.ones(5)]
    found = stats.mcnemar(y_true, pred_a, pred_b)
    assert found["p_value"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_mcnemar_without_disagreement_is_one():
    assert stats.mcnemar([0, 1, 1], [0, 1, 0], [0, 1, 0]) == {"b": 0, "c": 0, "p_value": 1.0}


@pytest.mark.parametrize("metric", stats.PAIRED_METRICS)
def test_model_against_itself_differs_by_nothing(metric):
    y_true, y_prob, patients = _patients_data(7)
    found = stats.paired_bootstrap(y_true, y_prob, y_prob, patients, metric=metric)
    assert found["difference"] == 0 and found["ci"] == (0.0, 0.0) and found["p_value"] == 1.0


def test_clearly_better_model_is_detected():
    y_true, noisy, patients = _patients_data(8, n_patients=40)
    sharp = np.where(y_true == 1, 0.8, 0.2)
    found = stats.paired_bootstrap(y_true, noisy, sharp, patients, metric="balanced_accuracy")
    assert found["difference"] > 0.1
    assert 0 < found["ci"][0] <= found["difference"] <= found["ci"][1]
    assert found["p_value"] < 0.01
    reverse = stats.paired_bootstrap(y_true, sharp, noisy, patients, metric="balanced_accuracy")
    assert reverse["difference"] == pytest.approx(-found["difference"])


def test_paired_bootstrap_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        stats.paired_bootstrap([0, 1], [0.1, 0.9], [0.2, 0.8], ["a", "b"], metric="f1")


def _table():
    return pd.DataFrame(
        {
            "patient_id": ["b", "b", "a", "a", "a", "c", "c"],
            "label": ["malignant", "benign", "benign", "benign", "benign", "malignant", "malignant"],
        }
    )


def test_patient_level_one_row_per_patient_sorted_with_majority_label():
    found = stats.patient_level(_table(), [0.9, 0.5, 0.1, 0.2, 0.3, 0.6, 0.8])
    assert found.columns.tolist() == ["patient_id", "label", "n_images", "mean_probability"]
    assert found["patient_id"].tolist() == ["a", "b", "c"]
    assert found["label"].tolist() == ["benign", "malignant", "malignant"]  # b is a tie
    assert found["n_images"].tolist() == [3, 2, 2]
    assert found["mean_probability"].tolist() == pytest.approx([0.2, 0.7, 0.7])


def test_patient_level_metrics_vote_once_per_patient():
    found = stats.patient_level_metrics(_table(), [0.9, 0.5, 0.1, 0.2, 0.3, 0.6, 0.8], threshold=0.75)
    assert found["n_patients"] == 3
    assert found["confusion_matrix"] == [[1, 0], [2, 0]]


def test_patient_level_checks_the_length():
    with pytest.raises(ValueError, match="y_prob"):
        stats.patient_level(_table(), [0.5] * 6)
