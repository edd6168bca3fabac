import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from bcnb.evaluate import calibrate
from bcnb.report.figures import plot_reliability


def _overconfident(seed, n=4000, true_temperature=3.0):
    """Labels drawn from sigmoid(z), predictions sigmoid(T z): too sure by a factor T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-true_temperature * z))


def _calibrated(seed, n=20000):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return (rng.random(n) < p).astype(int), p


def _nll(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_logit_is_finite_at_zero_and_one_and_inverts_the_sigmoid():
    assert np.isfinite(calibrate.logit([0.0, 1.0])).all()
    p = np.array([0.01, 0.3, 0.5, 0.9])
    assert 1 / (1 + np.exp(-calibrate.logit(p))) == pytest.approx(p)
    assert calibrate.logit(0.5) == 0


def test_temperature_one_is_the_identity():
    p = np.linspace(0.001, 0.999, 50)
    assert calibrate.apply_temperature(p, 1.0) == pytest.approx(p, abs=1e-12)


def test_temperature_softens_but_keeps_the_order():
    p = np.array([0.02, 0.4, 0.7, 0.99])
    soft = calibrate.apply_temperature(p, 2.0)
    assert np.all(np.abs(soft - 0.5) < np.abs(p - 0.5))
    assert np.all(np.diff(soft) > 0)
    assert calibrate.apply_temperature(p, 1e-3) == pytest.approx([0, 0, 1, 1])  # no overflow


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match="temperature"):
        calibrate.apply_temperature([0.5], bad)


@pytest.mark.parametrize("seed", range(3))
def test_fit_temperature_recovers_a_known_overconfidence(seed):
    y, p = _overconfident(seed)
    temperature = calibrate.fit_temperature(y, p)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert _nll(y, calibrate.apply_temperature(p, temperature)) < _nll(y, p) - 0.05
    assert calibrate.fit_temperature(y, p) == temperature  # deterministic


def test_fit_temperature_finds_the_minimum_and_stays_in_range():
    y, p = _overconfident(5, n=500, true_temperature=0.5)  # underconfident: T < 1
    temperature = calibrate.fit_temperature(y, p)
    assert 0.05 <= temperature < 1
    best = _nll(y, calibrate.apply_temperature(p, temperature))
    for nearby in (temperature * 0.98, temperature * 1.02):
        assert best <= _nll(y, calibrate.apply_temperature(p, nearby))
    assert calibrate.fit_temperature([0, 1, 1], [0.5, 0.5, 0.5]) == 1.0


def test_fit_temperature_checks_lengths():
    with pytest.raises(ValueError, match="p_val"):
        calibrate.fit_temperature([0, 1, 1], [0.2, 0.8])


def test_brier_score_hand_value():
    assert calibrate.brier_score([1, 0, 1], [0.8, 0.4, 1.0]) == pytest.approx((0.04 + 0.16 + 0) / 3)


def test_ece_small_when_calibrated_large_when_overconfident():
    assert calibrate.expected_calibration_error(*_calibrated(0)) < 0.02
    assert calibrate.expected_calibration_error(*_overconfident(0)) > 0.08


def test_ece_hand_value():
    # bin [0.1, 0.2): mean 0.15, observed 0; bin [0.9, 1]: mean 0.95, observed 0.5
    found = calibrate.expected_calibration_error([0, 0, 1, 0], [0.1, 0.2 - 1e-9, 0.9, 1.0])
    assert found == pytest.approx((2 * 0.15 + 2 * 0.45) / 4)


def test_reliability_table_keeps_empty_bins():
    table = calibrate.reliability_table([0, 1, 1, 0, 1], [0.05, 0.15, 0.25, 0.1, 1.0], bins=10)
    assert table.columns.tolist() == [
        "bin_low",
        "bin_high",
        "n",
        "mean_probability",
        "observed_malignant_share",
    ]
    assert len(table) == 10 and table["n"].tolist() == [1, 2, 1, 0, 0, 0, 0, 0, 0, 1]
    assert table["bin_low"].iloc[3] == pytest.approx(0.3) and table["bin_high"].iloc[9] == 1.0
    assert table.loc[1, "mean_probability"] == pytest.approx(0.125)
    assert table.loc[1, "observed_malignant_share"] == 0.5
    assert table.loc[3:8, ["mean_probability", "observed_malignant_share"]].isna().all().all()


def test_calibration_summary_fits_on_validation_and_helps_on_test():
    y_val, p_val = _overconfident(1)
    y_test, p_test = _overconfident(2, n=2000)
    found = calibrate.calibration_summary(y_val, p_val, y_test, p_test)
    assert found["temperature"] == calibrate.fit_temperature(y_val, p_val)
    assert found["test_ece_after"] < found["test_ece_before"] / 2
    assert found["test_brier_after"] < found["test_brier_before"]


@pytest.mark.parametrize(
    "p,text",
    [(0.873, "87%"), (0.875, "88%"), (0.285, "29%"), (0.5, "50%"), (0.01, "1%"), (0.99, "99%"),
     (0.004, "<1%"), (0.0, "<1%"), (0.995, ">99%"), (1.0, ">99%")],
)  # fmt: skip
def test_as_percent(p, text):
    assert calibrate.as_percent(p) == text


def test_as_percent_rejects_non_probabilities():
    with pytest.raises(ValueError):
        calibrate.as_percent(1.2)


def test_plot_reliability_has_curve_and_histogram():
    y, p = _overconfident(3, n=300)
    fig = plot_reliability(y, p, calibrate.apply_temperature(p, 3.0))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert any(label.startswith("before (Brier") for label in labels)
    assert any(label.startswith("after (Brier") for label in labels)
