"""Stage 4, evaluation: test-split metrics that do not flatter the model.

BreakHis is imbalanced (about 69% of images are malignant), so a model that always says
"malignant" already scores 69% accuracy (on the IDC patches, where benign is the larger
class, always-benign scores about 72%). Balanced accuracy, sensitivity and specificity are
reported beside accuracy, with the majority-class baseline and intervals from resampling
test patients (:mod:`bcnb.evaluate.intervals`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from bcnb.data.loading import magnification_order
from bcnb.data.pipeline import labels_of
from bcnb.data.tasks import task_named
from bcnb.run.artifacts import METRICS_FILE, PREDICTIONS_FILE, write_json
from bcnb.run.files import write_text_atomic

# Prasuna et al.: model.evaluate(test_gen) -> loss 0.1723, accuracy 0.9344.
PAPER = {"test_accuracy": 0.9344, "test_loss": 0.1723}


def checked_labels(y_true, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as 0/1 integers and ``values`` as an array as long, or ValueError naming ``name``."""
    y_true = np.asarray(y_true).reshape(-1)
    values = np.asarray(values).reshape(-1)
    if len(y_true) == 0:
        raise ValueError("y_true is empty")
    if len(values) != len(y_true):
        raise ValueError(f"{name} has {len(values)} values but y_true has {len(y_true)}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold 0 (benign) and 1 (malignant) only")
    return y_true.astype(int), values


def checked_probabilities(y_true, y_prob, name: str = "y_prob") -> tuple[np.ndarray, np.ndarray]:
    """:func:`checked_labels`, and ``y_prob`` as floats between 0 and 1."""
    y_true, y_prob = checked_labels(y_true, y_prob, name)
    y_prob = y_prob.astype(float)
    if np.isnan(y_prob).any() or (y_prob < 0).any() or (y_prob > 1).any():
        raise ValueError(f"{name} must hold probabilities between 0 and 1")
    return y_true, y_prob


def evaluation_inputs(cfg, model, split: pd.DataFrame, part: str):
    """What evaluates one split, and on what: (evaluated, data) for ``evaluated.evaluate(data)``.

    When training used the feature cache and the base was not fine-tuned, ``evaluated`` is the
    head on the split's cached features: the same model as the full one on the images (notebook
    03 checks it), without another pass of the base over every image. Otherwise it is the model
    on the images.
    """
    from bcnb.data.pipeline import image_dataset
    from bcnb.model.transfer import classifier_head
    from bcnb.train.features import feature_file
    from bcnb.train.fit import FeatureBatches, compile_for_training

    rows = split[split["split"] == part]
    if not cfg.feature_cache or cfg.fine_tunes:
        return model, image_dataset(cfg, rows)
    head, task = classifier_head(model), task_named(cfg.task)
    compile_for_training(head, cfg.learning_rate, task=task)  # the paper's loss and accuracy
    positions = np.flatnonzero(split["split"].to_numpy() == part)
    targets = task.targets_of(rows)
    return head, FeatureBatches(feature_file(cfg, model, split), positions, targets, cfg.batch_size)


def compute_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Classification metrics at ``threshold`` plus ROC AUC; malignant (1) is positive."""
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(y_prob) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel().tolist()
    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    precision = ratio(tp, tp + fp)
    both_classes = len(set(y_true.tolist())) == 2
    return {
        "accuracy": (tp + tn) / len(y_true),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,  # recall of malignant
        "specificity": specificity,  # recall of benign
        "precision": precision,
        "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)) if both_classes else math.nan,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "threshold": threshold,
    }


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or NaN where there is nothing to divide by (no such images)."""
    return numerator / denominator if denominator else math.nan


def format_figure(value: float | None, digits: int = 4, percent: bool = False) -> str:
    """A metric for a table: "n/a" where it is undefined (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:.{digits}f}"


def patient_recognition_rate(y_true, y_prob, patients, threshold: float = 0.5) -> float:
    """Spanhol et al. (2016)'s patient-level rate: for each patient the share of their images
    classified correctly, averaged over patients (each patient counts once, however many
    images they have). Not the same as scoring each patient by its mean probability."""
    correct = (np.asarray(y_prob) >= threshold).astype(int) == np.asarray(y_true).astype(int)
    return float(pd.Series(correct).groupby(np.asarray(patients)).mean().mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion.

    It treats images as independent; images of one patient are not, so the true
    uncertainty is wider still.
    """
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def metrics_by_magnification(test: pd.DataFrame, y_prob: np.ndarray) -> dict[str, dict]:
    """The main metrics for each magnification of the test split (BreakHis: 40X-400X)."""
    results = {}
    for magnification in magnification_order(test["magnification"]):
        rows = (test["magnification"] == magnification).to_numpy()
        metrics = compute_metrics(labels_of(test[rows]), y_prob[rows])
        keep = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")
        prr = patient_recognition_rate(labels_of(test[rows]), y_prob[rows], test["patient_id"][rows])
        results[magnification] = {
            "n_images": int(rows.sum()),
            **{k: metrics[k] for k in keep},
            "patient_recognition_rate": prr,
        }
    return results


def majority_class_baseline(y_true: np.ndarray) -> dict:
    """The trivial model that always answers the test split's larger class, and its accuracy."""
    malignant_share = float(np.mean(y_true))
    larger = "malignant" if malignant_share >= 0.5 else "benign"
    return {"majority_class": larger, "majority_class_accuracy": max(malignant_share, 1 - malignant_share)}


def log_loss(y_true, y_prob) -> float:
    """Binary cross-entropy as Keras computes it (probabilities clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(np.asarray(y_prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def save_metrics(metrics: dict, run_dir: str | Path) -> Path:
    """Write metrics.json; NaN (e.g. AUC with one class) becomes null."""
    return write_json(run_dir, METRICS_FILE, metrics)


def save_predictions(
    test: pd.DataFrame, y_prob: np.ndarray, run_dir: str | Path, calibrated=None, threshold: float = 0.5
) -> Path:
    """One row per test image: its label, the model's probability, the calibrated one (if
    given) and the predicted class at ``threshold`` on the calibrated probability."""
    decided = y_prob if calibrated is None else calibrated
    table = test[["path", "label", "patient_id", "magnification"]].assign(
        malignant_probability=np.round(y_prob, 6),
        calibrated_probability=np.round(decided, 6),
        predicted=np.where(decided >= threshold, "malignant", "benign"),
    )
    return write_text_atomic(Path(run_dir) / PREDICTIONS_FILE, table.to_csv(index=False))


def paper_comparison(metrics: dict) -> pd.DataFrame:
    """Our test loss and accuracy beside the paper's."""
    rows = [
        ("test accuracy", PAPER["test_accuracy"], metrics["test_accuracy"]),
        ("test loss", PAPER["test_loss"], metrics["test_loss"]),
    ]
    return pd.DataFrame(rows, columns=["", "paper", "this run"]).set_index("")


def errors_by_patient(decided: pd.DataFrame) -> pd.DataFrame:
    """Each test patient's class, images and wrongly called images, most errors first: a
    model that fails on a few patients fails differently from one that errs everywhere."""
    grouped = decided.assign(wrong=decided["label"] != decided["predicted"]).groupby("patient_id")
    table = pd.DataFrame(
        {"label": grouped["label"].first(), "images": grouped.size(), "wrong": grouped["wrong"].sum()}
    )
    table["share wrong"] = (table["wrong"] / table["images"]).round(3)
    return table.sort_values(["wrong", "share wrong"], ascending=False, kind="stable")
