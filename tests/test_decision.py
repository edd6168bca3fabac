import json

import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.evaluate import decision
from bcnb.run import artifacts


def _table(n_patients, images_each, seed):
    """Patients of alternating class, each with a few images."""
    rng = np.random.default_rng(seed)
    rows = [
        {"patient_id": f"p{seed}-{p}", "label": "malignant" if p % 2 else "benign"}
        for p in range(n_patients)
        for _ in range(images_each)
    ]
    table = pd.DataFrame(rows)
    y = (table["label"] == "malignant").to_numpy()
    # An over-confident model: right on average, with probabilities pushed to the extremes.
    logits = 3 * (np.where(y, 1.0, -1.0) + rng.normal(0, 1.2, len(y)))
    return table, 1 / (1 + np.exp(-logits))


@pytest.fixture(scope="module")
def measured():
    cfg = Config(bootstrap_samples=500)
    val, p_val = _table(20, 5, seed=1)
    test, p_test = _table(16, 5, seed=2)
    rule = decision.decide(cfg, val, p_val)
    return cfg, rule, decision.measure_decision(cfg, rule, val, p_val, test, p_test), (test, p_test)


def test_the_rule_is_fitted_on_validation(measured):
    cfg, rule, _, _ = measured
    assert rule["temperature"] > 1.5  # the simulated model is over-confident: T softens it
    assert 0 < rule["threshold"] < 1 and rule["threshold_rule"] == cfg.threshold_rule == "youden"
    assert rule["chosen_on"] == "validation split (100 images, 20 patients)"


def test_measurement_has_patient_intervals_around_the_estimates(measured):
    _, rule, found, _ = measured
    for name, interval in found["image_level_95ci_by_patient"].items():
        assert interval["estimable"] and interval["resamples_used"] == 500, name  # 8 patients a class
        assert interval["low"] <= found["image_level"][name] <= interval["high"], name
    assert found["patient_level"]["n_patients"] == 16
    assert found["image_level"]["threshold"] == rule["threshold"]
    calibration = found["calibration"]
    assert calibration["test_brier_after"] < calibration["test_brier_before"]  # calibration helped


def test_summary_table_lists_headline_metrics(measured):
    table = decision.summary_table(measured[2])
    assert table.index.tolist() == list(decision.HEADLINE)
    low, high = table.loc["accuracy", "95% CI (patients resampled)"].split("-")
    assert float(low) <= float(table.loc["accuracy", "per image"]) <= float(high)


def test_saved_rule_gives_the_same_labels(measured, tmp_path):
    _, rule, found, (test, p_test) = measured
    decision.save_decision(rule, tmp_path)
    loaded = artifacts.load_decision(tmp_path)
    assert loaded == json.loads(json.dumps(rule))
    calibrated, labels = decision.apply_decision(loaded, p_test)
    accuracy = np.mean(labels == test["label"].to_numpy())
    assert accuracy == pytest.approx(found["image_level"]["accuracy"])
    assert np.all(np.diff(calibrated[np.argsort(p_test)]) >= 0)  # calibration keeps the order


def test_fixed_rule_keeps_one_half():
    val, p_val = _table(10, 3, seed=3)
    assert decision.decide(Config(threshold_rule="fixed"), val, p_val)["threshold"] == 0.5


def test_missing_decision_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="04_evaluate"):
        artifacts.load_decision(tmp_path)
