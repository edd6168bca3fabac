"""The figures of a protocol of runs: pooled out of fold, and the spread over the runs.

Two ways to summarise K folds, which answer different questions and are both printed:

- **Pooled out of fold.** Every image is tested once, by the fold's model that did not train
  on its patient: the K folds' predictions together are one test set of the whole dataset,
  scored once, with a 95% interval from resampling *patients* (the percentile bootstrap of
  :func:`bcnb.evaluate.stats.bootstrap_by_patient`). Pooling sets the folds' probabilities on
  one scale, which K models do not share exactly, so a pooled ROC AUC can sit below the mean
  of the folds' (0.846 against 0.882 in one run): Forman & Scholz, "Apples-to-apples in
  cross-validation studies", SIGKDD Explorations 12(1):49-57, 2010. Repeated random splits
  test some patients several times and others never: there pooling does not apply.
- **Over the runs.** The mean and standard deviation of the J runs' figures, with the
  *corrected resampled t* interval of Nadeau & Bengio ("Inference for the generalization
  error", Machine Learning 52:239-281, 2003). The runs share most of their training patients,
  so their figures are correlated and Student's t (variance sd^2 / J) is too narrow; the
  correction takes the variance of the mean as sd^2 (1/J + n_test / n_train), with J - 1
  degrees of freedom. For K folds n_test / n_train = 1 / (K - 1) (Bouckaert & Frank, PAKDD
  2004, apply it to cross-validation). No estimator of that variance is unbiased (Bengio &
  Grandvalet, JMLR 5:1089-1105, 2004): the correction is a heuristic that errs less.

An interval is never cut at 0 or 1: where the t interval reaches past them it is shown as
computed and flagged (``past_range``), since a cut interval hides that its normal shape does
not fit a proportion near its bound.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

CORRECTED_T = "corrected resampled t (Nadeau & Bengio 2003)"
POOLED = "patient bootstrap of the pooled out-of-fold predictions"
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "roc_auc",
    "sensitivity",
    "specificity",
    "patient_recognition_rate",
)


# --------------------------------------------------------------------------- over the runs
def test_to_train(folds: int, test_fraction: float) -> float:
    """n_test / n_train of one run: 1 / (K - 1) for K folds, else the test fraction over the
    rest (validation included: the learner is given it, for early stopping and the threshold)."""
    return 1 / (folds - 1) if folds else test_fraction / (1 - test_fraction)


def corrected_t(values, ratio: float, level: float = 0.95) -> dict | None:
    """The corrected resampled t interval of the mean of ``values`` (J runs, n_test / n_train =
    ``ratio``); None for fewer than two values. Never clipped: ``past_range`` flags an interval
    reaching below 0 or above 1."""
    from scipy import stats as scipy_stats

    values = np.asarray(values, dtype=float)
    runs = len(values)
    if runs < 2:
        return None
    variance = values.var(ddof=1) * (1 / runs + ratio)
    half = float(scipy_stats.t.ppf(0.5 + level / 2, runs - 1)) * math.sqrt(variance)
    mean = float(values.mean())
    low, high = mean - half, mean + half
    return {
        "low": low,
        "high": high,
        "level": level,
        "method": CORRECTED_T,
        "past_range": low < 0 or high > 1,
    }


def spread(values: list[float | None], ratio: float) -> dict:
    """Mean, standard deviation (n - 1) and corrected t interval of the runs' defined values."""
    defined = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return {
        "mean": float(defined.mean()) if len(defined) else None,
        "sd": float(defined.std(ddof=1)) if len(defined) > 1 else None,
        "interval": corrected_t(defined, ratio),
        "runs": len(defined),
    }


def format_t_interval(interval: dict | None) -> str:
    """ "0.750-1.013 (past 1)": the corrected t interval as computed, flagged where it leaves [0, 1];
    none where every run gave the same figure (no spread to build it on)."""
    if interval is None:
        return "n/a"
    if interval["high"] <= interval["low"]:
        return f"none: every run gave {interval['low']:.3f}"
    text = f"{interval['low']:.3f}-{interval['high']:.3f}"
    past = [bound for bound, out in (("0", interval["low"] < 0), ("1", interval["high"] > 1)) if out]
    return text + (f" (past {' and '.join(past)})" if past else "")


# --------------------------------------------------------------------------- pooled
def pooled_out_of_fold(predictions: list[pd.DataFrame], n_boot: int = 2000, seed: int = 0) -> dict:
    """The folds' test predictions (predictions.csv each) scored as one test set: at 0.5 on the
    model's probability, and at each fold's own threshold (its ``predicted`` column; ROC AUC
    then on the calibrated probabilities), each with a patient-bootstrap interval."""
    check_tested_once(predictions)
    table = pd.concat(predictions, ignore_index=True)
    y_true = (table["label"] == "malignant").to_numpy(dtype=int)
    called = (table["predicted"] == "malignant").to_numpy(dtype=float)
    scores = {
        "at_0.5": _scored(y_true, table["malignant_probability"], table, n_boot, seed),
        # A 0/1 call per image at 0.5 is each fold's own decision; only the AUC needs a ranking.
        "at_chosen_threshold": _scored(y_true, called, table, n_boot, seed),
    }
    scores["at_chosen_threshold"]["roc_auc"] = _scored(
        y_true, table["calibrated_probability"], table, n_boot, seed
    )["roc_auc"]
    return {
        "applies": True,
        "images": len(table),
        "patients": int(table["patient_id"].nunique()),
        "method": POOLED,
        "bootstrap_samples": n_boot,
        **scores,
    }


def _scored(y_true: np.ndarray, y_prob, table: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Each metric at 0.5 on ``y_prob``, with its patient-bootstrap interval (as JSON)."""
    from bcnb.evaluate.scores import compute_metrics, patient_recognition_rate
    from bcnb.evaluate.stats import bootstrap_by_patient

    y_prob = np.asarray(y_prob, dtype=float)
    patients = table["patient_id"].astype(str).to_numpy()
    values = compute_metrics(y_true, y_prob, 0.5)
    values["patient_recognition_rate"] = patient_recognition_rate(y_true, y_prob, patients, 0.5)
    intervals = bootstrap_by_patient(y_true, y_prob, patients, 0.5, n_boot, seed)
    return {name: {"value": _number(values[name]), "interval": intervals[name].to_json()} for name in METRICS}


def check_tested_once(predictions: list[pd.DataFrame]) -> None:
    """Pooling needs each image in one fold's test set: refuse an image two folds tested."""
    seen: dict[str, int] = {}
    for number, part in enumerate(predictions, start=1):
        for path in dict.fromkeys(part["path"]):
            if path in seen:
                raise ValueError(f"pooled out of fold: {path} was tested in runs {seen[path]} and {number}")
            seen[path] = number


def not_pooled(why: str) -> dict:
    """What the summary says where pooled out-of-fold figures do not apply."""
    return {"applies": False, "why": why}


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
