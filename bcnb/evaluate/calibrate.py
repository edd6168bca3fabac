"""Probability a person can read: temperature scaling and calibration checks.

The paper's future work asks to report "by how much percentage" a case is malignant. A sigmoid
output is not yet such a percentage: networks are often overconfident, saying 99% where they
are right 90% of the time. Temperature scaling divides every logit by one number T (T > 1
softens, T < 1 sharpens); it never changes which of two images ranks higher, so ROC AUC is
untouched, and it has a single parameter, so a small split cannot overfit it much.

T is fitted on the VALIDATION split, never on test: the test split only measures how well the
fitted probabilities hold up (Brier score, expected calibration error, reliability table).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bcnb.evaluate.scores import checked_probabilities

EPSILON = 1e-7  # keeps logits finite for probabilities of exactly 0 or 1
TEMPERATURE_RANGE = (0.05, 20.0)


def logit(p) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(p, dtype=float), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # exp(-log(1 + e^-z)) never overflows, however large |z| / T gets.
    return np.exp(-np.logaddexp(0.0, -z))


def apply_temperature(p, temperature: float) -> np.ndarray:
    """Probabilities with every logit divided by ``temperature``: sigmoid(logit(p) / T)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return _sigmoid(logit(p) / temperature)


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under sigmoid(z / T)."""
    signed = np.where(y == 1, z, -z) / temperature
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_temperature(y_val, p_val) -> float:
    """The T in [0.05, 20] that minimises the validation negative log-likelihood.

    The loss is convex in 1/T, so along log T it has one valley, which SciPy's bounded
    Brent search finds (to 1e-9 in log T). Deterministic.
    """
    from scipy.optimize import minimize_scalar

    y, p = _checked(y_val, p_val, "p_val")
    z = logit(p)
    if not np.any(z):
        return 1.0  # every probability is 0.5: no temperature changes anything
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    best = minimize_scalar(
        lambda u: _nll(y, z, math.exp(u)), bounds=(low, high), method="bounded", options={"xatol": 1e-9}
    )
    return math.exp(best.x)


def brier_score(y, p) -> float:
    """Mean squared distance between probability and outcome (0 is perfect, 0.25 a coin)."""
    y, p = _checked(y, p, "p")
    return float(np.mean((p - y) ** 2))


def reliability_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Per equal-width probability bin: how often "x% malignant" was in fact malignant.

    Bins are [low, high), the last one closed at 1. Empty bins stay, with n = 0 and NaN means,
    so tables of different models line up.
    """
    y, p = _checked(y, p, "p")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins!r}")
    which = _bin_of(p, bins)
    n = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.bincount(which, weights=p, minlength=bins) / n
        observed = np.bincount(which, weights=y, minlength=bins) / n
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "n": n,
            "mean_probability": np.where(n > 0, mean_probability, np.nan),
            "observed_malignant_share": np.where(n > 0, observed, np.nan),
        }
    )


def _bin_of(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(int), bins - 1)


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Image-weighted mean gap between predicted probability and observed share, per bin."""
    table = reliability_table(y, p, bins)
    filled = table[table["n"] > 0]
    gaps = (filled["mean_probability"] - filled["observed_malignant_share"]).abs()
    return float(np.sum(gaps * filled["n"]) / filled["n"].sum())


def calibration_summary(y_val, p_val, y_test, p_test) -> dict:
    """Temperature fitted on validation; Brier score and ECE on test before and after it."""
    temperature = fit_temperature(y_val, p_val)
    y_test, p_test = _checked(y_test, p_test, "p_test")
    calibrated = apply_temperature(p_test, temperature)
    return {
        "temperature": temperature,
        "test_brier_before": brier_score(y_test, p_test),
        "test_brier_after": brier_score(y_test, calibrated),
        "test_ece_before": expected_calibration_error(y_test, p_test),
        "test_ece_after": expected_calibration_error(y_test, calibrated),
    }


def as_percent(p: float) -> str:
    """A probability as a whole percentage a person can read: 0.873 -> "87%".

    The extremes read "<1%" and ">99%": a model is never certain, and "0%" or "100%" would say
    it is.
    """
    p = float(p)
    if not 0 <= p <= 1:
        raise ValueError(f"a probability must be between 0 and 1, got {p!r}")
    if p < 0.01:
        return "<1%"
    if p > 0.99:
        return ">99%"
    # round(.., 9) first so that 0.285 (stored as 0.28499999...) still rounds half up to 29%.
    return f"{math.floor(round(p * 100, 9) + 0.5)}%"


def _checked(y, p, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities as float arrays, after checking their lengths and values."""
    y, p = checked_probabilities(y, p, name)
    return y.astype(float), p
