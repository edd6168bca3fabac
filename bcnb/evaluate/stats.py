"""Statistics that tell the truth: intervals and comparisons that respect patients.

Images of one patient are not independent: they are cut from the same few slides, so a model
that is right about one image is usually right about its neighbours. A test split of a few
hundred images may hold only a dozen or two patients, and it is the patients that were drawn
from the population. So every interval here comes from resampling *patients* with replacement
(all images of a drawn patient come along), never single images; an image-level interval would
pretend to know far more than the data can tell. Even counted as independent images, 61 test
images (one reading of the paper's test set) give an accuracy interval of about +-6 points.

Conventions follow ``bcnb.evaluate.scores.compute_metrics``: malignant (1) is the positive class and an
image is called malignant when its probability is ``>= threshold``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from bcnb.config import THRESHOLD_RULES
from bcnb.data.tasks import CLASSES
from bcnb.evaluate import intervals
from bcnb.evaluate.intervals import NEEDS, Interval
from bcnb.evaluate.scores import checked_labels, checked_probabilities, compute_metrics

BOOTSTRAP_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "roc_auc",
    "patient_recognition_rate",
)
PAIRED_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")


def bootstrap_by_patient(
    y_true, y_prob, patients, threshold: float = 0.5, n_boot: int = 2000, seed: int = 0
) -> dict[str, Interval]:
    """95% percentile intervals of the main metrics, resampling patients with replacement.

    A patient drawn twice counts twice. A resample where a metric is undefined (e.g. no benign
    patient drawn, so no specificity) is left out for that metric only; whether what is left
    makes an interval is :func:`bcnb.evaluate.intervals.from_resamples`' to judge.
    """
    y_true, y_prob, codes = _checked(y_true=y_true, y_prob=y_prob, patients=patients)
    counts = _patient_draws(codes.max() + 1, n_boot, seed)
    sums = _per_patient(y_true, y_prob, codes, threshold)
    resampled, held = _resampled_metrics(sums, counts), _patients_by_class(sums)
    return {name: intervals.from_resamples(resampled[name], held, NEEDS[name]) for name in BOOTSTRAP_METRICS}


def _patients_by_class(sums: dict) -> dict[str, int]:
    """How many patients hold images of each class: what a resample of that class draws from."""
    return {
        "benign": int(np.sum(sums["tn"] + sums["fp"] > 0)),
        "malignant": int(np.sum(sums["tp"] + sums["fn"] > 0)),
    }


def paired_bootstrap(
    y_true,
    p_a,
    p_b,
    patients,
    threshold_a: float = 0.5,
    threshold_b: float = 0.5,
    metric: str = "accuracy",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """How much better model b is than model a on ``metric``, with a patient-level interval.

    Both models are scored on the same resampled patients, so what the two share (the easy and
    the hard patients) cancels out of the difference. ``p_value`` is the two-sided bootstrap
    p-value: twice the smaller share of resampled differences on either side of zero.
    """
    if metric not in PAIRED_METRICS:
        raise ValueError(f"metric must be one of {PAIRED_METRICS}, got {metric!r}")
    y_true, p_a, codes = _checked(y_true=y_true, p_a=p_a, patients=patients)
    _, p_b, _ = _checked(y_true=y_true, p_b=p_b, patients=patients)
    counts = _patient_draws(codes.max() + 1, n_boot, seed)
    on_a = _resampled_metrics(_per_patient(y_true, p_a, codes, threshold_a), counts)[metric]
    on_b = _resampled_metrics(_per_patient(y_true, p_b, codes, threshold_b), counts)[metric]
    differences = (on_b - on_a)[~np.isnan(on_b - on_a)]
    full = (
        compute_metrics(y_true, p_b, threshold_b)[metric] - compute_metrics(y_true, p_a, threshold_a)[metric]
    )
    if differences.size == 0:
        return {"difference": full, "ci": (math.nan, math.nan), "p_value": math.nan}
    sides = min(np.mean(differences <= 0), np.mean(differences >= 0))
    return {
        "difference": full,
        "ci": _percentile_interval(differences),
        "p_value": float(min(1.0, 2 * sides)),
    }


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test of two classifiers' predicted classes on the same images.

    Only the images where the two disagree about being right carry information: ``b`` (a right,
    b wrong) and ``c`` (a wrong, b right). Under "equally good" each of those is a fair coin.
    It treats images as independent, so with several images per patient it is too confident;
    ``paired_bootstrap`` resamples patients instead.
    """
    y_true, pred_a = checked_labels(y_true, pred_a, "pred_a")
    _, pred_b = checked_labels(y_true, pred_b, "pred_b")
    right_a, right_b = pred_a == y_true, pred_b == y_true
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return {"b": b, "c": c, "p_value": _sign_test(b, c)}


def _sign_test(b: int, c: int) -> float:
    """Two-sided exact binomial test of b successes in b + c fair coin tosses."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


# Validation must hold at least this many patients of each class for a rule to choose: with
# one, the threshold separates one slide's images from another's, and which patient happened to
# be drawn into validation decides it. Lower than the intervals' 5 (MIN_PATIENTS_PER_CLASS),
# since a threshold is not an interval: however noisily it is chosen, the test split measures
# it fairly. Degenerate choices (J = 0, every image one class) are refused at any count.
MIN_VALIDATION_PATIENTS_PER_CLASS = 2


def choose_threshold(y_val, p_val, rule: str = "youden", target_sensitivity: float = 0.95) -> float:
    """The decision threshold picked on the validation split (never on test) by ``rule``:
    :func:`threshold_choice`'s threshold, without its reason."""
    return threshold_choice(y_val, p_val, rule, target_sensitivity)[0]


def threshold_choice(
    y_val, p_val, rule: str = "youden", target_sensitivity: float = 0.95, patients=None
) -> tuple[float, str]:
    """(threshold, reason): the validation threshold of ``rule``, or 0.5 and why validation
    could not choose ("" when it could).

    - "fixed": 0.5, the paper's implicit choice.
    - "youden": maximises sensitivity + specificity - 1 on validation.
    - "sensitivity": the largest threshold whose validation sensitivity is at least
      ``target_sensitivity`` (a screening choice: miss few malignant cases, accept more
      false alarms).

    Validation cannot choose when it holds one class, fewer than
    ``MIN_VALIDATION_PATIENTS_PER_CLASS`` patients of a class (``patients`` given), when
    Youden's J is 0 (no threshold beats calling every image one class), or when the threshold
    would call every validation image one class: the paper's 0.5 is kept, and the reason said.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule: expected one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
    y_val, p_val = checked_probabilities(y_val, p_val, "p_val")
    if rule == "fixed":
        return 0.5, ""
    reason = _too_few_to_choose(y_val, patients)
    if reason:
        return 0.5, reason
    threshold, reason = _rule_threshold(y_val, p_val, rule, target_sensitivity)
    called = p_val >= threshold
    if not reason and (called.all() or not called.any()):
        everything = CLASSES[1] if called.all() else CLASSES[0]
        reason = f"its threshold {threshold:.3f} would call every validation image {everything}"
    return (0.5, reason) if reason else (threshold, "")


def _too_few_to_choose(y_val: np.ndarray, patients) -> str:
    """Why validation is too small to choose from ("" if it is not)."""
    present = np.unique(y_val)
    if len(present) < 2:
        return f"validation holds {CLASSES[present[0]]} images only"
    if patients is None:
        return ""
    patients = np.asarray(patients).reshape(-1)
    benign, malignant = (len(np.unique(patients[y_val == label])) for label in (0, 1))
    if min(benign, malignant) >= MIN_VALIDATION_PATIENTS_PER_CLASS:
        return ""
    return (
        f"validation has {benign} benign and {malignant} malignant patient(s); choosing needs at "
        f"least {MIN_VALIDATION_PATIENTS_PER_CLASS} of each"
    )


def _rule_threshold(y_val: np.ndarray, p_val: np.ndarray, rule: str, target: float) -> tuple[float, str]:
    """The threshold ``rule`` picks on validation, and why it is no choice ("" if it is one)."""
    # Every distinct score is a candidate: thresholds decrease, sensitivity (tpr) increases.
    fpr, tpr, thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))  # first maximum: the highest of tied thresholds
    else:
        best = int(np.argmax(tpr >= target - 1e-12))
    # sklearn's first threshold is +inf (nobody called malignant); 1.0 means the same here.
    threshold = float(min(thresholds[best], 1.0))
    if rule == "youden" and tpr[best] - fpr[best] <= 0:
        return (
            threshold,
            "Youden's J is 0 on validation: no threshold there beats calling every image one class",
        )
    return threshold, ""


def patient_level(table: pd.DataFrame, y_prob) -> pd.DataFrame:
    """One row per patient: majority label (ties: malignant), image count, mean probability."""
    y_prob = np.asarray(y_prob, dtype=float).reshape(-1)
    if len(y_prob) != len(table):
        raise ValueError(f"y_prob has {len(y_prob)} values but table has {len(table)} rows")
    unknown = set(table["label"]) - set(CLASSES)
    if unknown:
        raise ValueError(f"label must be one of {CLASSES}, found {sorted(map(str, unknown))}")
    rows = pd.DataFrame(
        {
            "patient_id": table["patient_id"].to_numpy(),
            "malignant": (table["label"] == CLASSES[1]).to_numpy(dtype=float),
            "probability": y_prob,
        }
    )
    grouped = rows.groupby("patient_id", sort=True)
    share = grouped["malignant"].mean()
    return pd.DataFrame(
        {
            "patient_id": share.index.to_numpy(),
            "label": np.where(share.to_numpy() >= 0.5, CLASSES[1], CLASSES[0]),
            "n_images": grouped.size().to_numpy(),
            "mean_probability": grouped["probability"].mean().to_numpy(),
        }
    )


def patient_level_metrics(table: pd.DataFrame, y_prob, threshold: float = 0.5) -> dict:
    """``compute_metrics`` with one vote per patient: the mean probability of its images."""
    patients = patient_level(table, y_prob)
    y_true = (patients["label"] == CLASSES[1]).to_numpy(dtype=int)
    metrics = compute_metrics(y_true, patients["mean_probability"].to_numpy(), threshold)
    counted = {f"n_{name}_patients": int(np.sum(patients["label"] == name)) for name in CLASSES}
    return {**metrics, "n_patients": len(patients), **counted}


# --- the bootstrap machinery -------------------------------------------------------------------
#
# A resample is a vector of how often each patient was drawn. Every metric here is a sum over
# images, so it is enough to sum once per patient (true/false positives/negatives, and for AUC
# the pairs of malignant and benign images each pair of patients contributes) and then weight
# those sums by the draw counts: thousands of resamples become a few matrix products.


def _checked(**arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels 0/1, probabilities, patient codes 0..P-1), after checking lengths and values."""
    (name_y, y_true), (name_p, y_prob), (name_g, groups) = arrays.items()
    y_true, y_prob = checked_probabilities(y_true, y_prob, name_p)
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != len(y_true):
        raise ValueError(f"{name_g} has {len(groups)} values but {name_y} has {len(y_true)}")
    if pd.isna(groups).any():
        raise ValueError(f"{name_g} must not contain missing values")
    # Codes in sorted-id order, so the same seed gives the same interval in any row order.
    _, codes = np.unique(groups, return_inverse=True)
    return y_true, y_prob, codes


def _patient_draws(n_patients: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_patients) counts: how often each patient is drawn in each resample."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    drawn = np.random.default_rng(seed).integers(0, n_patients, size=(n_boot, n_patients))
    flat = drawn + n_patients * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_patients).reshape(n_boot, n_patients)


def _per_patient(y_true: np.ndarray, y_prob: np.ndarray, codes: np.ndarray, threshold: float) -> dict:
    """Per-patient sums from which every resample's metrics follow."""
    n_patients = codes.max() + 1
    called = y_prob >= threshold

    def total(mask):
        return np.bincount(codes, weights=mask.astype(float), minlength=n_patients)

    return {
        "tp": total((y_true == 1) & called),
        "fn": total((y_true == 1) & ~called),
        "tn": total((y_true == 0) & ~called),
        "fp": total((y_true == 0) & called),
        "pairs": _auc_pairs(y_true, y_prob, codes, n_patients),
        # each patient's share of images called right (for the patient recognition rate)
        "score": total((y_true == 1) == called) / np.bincount(codes, minlength=n_patients),
    }


def _auc_pairs(y_true: np.ndarray, y_prob: np.ndarray, codes: np.ndarray, n_patients: int) -> np.ndarray:
    """pairs[p, q]: malignant images of patient p ranked above benign images of patient q.

    Ties count one half, as in the ROC AUC. For any resample with draw counts ``c``,
    AUC = c @ pairs @ c / (malignant images * benign images).
    """
    positive = y_true == 1
    scores, owners = y_prob[positive], codes[positive]
    pairs = np.zeros((n_patients, n_patients))
    for patient in np.unique(codes[~positive]):
        negatives = np.sort(y_prob[~positive & (codes == patient)])
        below = np.searchsorted(negatives, scores, side="left")
        tied = np.searchsorted(negatives, scores, side="right") - below
        pairs[:, patient] = np.bincount(owners, weights=below + 0.5 * tied, minlength=n_patients)
    return pairs


def _resampled_metrics(sums: dict, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric for each resample (rows of ``counts``); NaN where it is undefined."""
    tp, fn, tn, fp = (counts @ sums[key] for key in ("tp", "fn", "tn", "fp"))
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        ranked = ((counts @ sums["pairs"]) * counts).sum(axis=1)
        pair_count = (tp + fn) * (tn + fp)
        roc_auc = np.where(pair_count > 0, ranked / pair_count, np.nan)
    return {
        "accuracy": (tp + tn) / (tp + fn + tn + fp),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "roc_auc": roc_auc,
        "patient_recognition_rate": (counts @ sums["score"]) / counts.sum(axis=1),
    }


def _percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The central 95% of the defined (non-NaN) values."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))
