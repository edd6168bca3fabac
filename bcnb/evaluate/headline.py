"""The headline figures of a tested run: what metrics.json holds, and the table notebook 04 shows.

The figures themselves come from :mod:`bcnb.evaluate.scores` (at a threshold) and
:mod:`bcnb.evaluate.stats` (their intervals, resampling test patients); this module sets them
together, once, for notebook 04 to save.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bcnb.data.pipeline import labels_of
from bcnb.data.tasks import BINARY, CLASSES, Task
from bcnb.evaluate.intervals import format_interval
from bcnb.evaluate.scores import (
    PAPER,
    compute_metrics,
    format_figure,
    log_loss,
    majority_class_baseline,
    metrics_by_magnification,
    patient_recognition_rate,
    wilson_interval,
)
from bcnb.evaluate.stats import bootstrap_by_patient


def summarize_test_results(
    test: pd.DataFrame,
    y_prob: np.ndarray,
    keras_results: dict,
    weights: dict,
    dataset: str,
    task: Task = BINARY,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Everything metrics.json holds about one evaluated run. For a tumour-type model,
    ``keras_results`` measure the eight types; the test accuracy and loss set beside the
    paper's are then those of benign vs malignant from the summed type probabilities.
    Intervals resample test patients (``n_boot`` times); the Wilson interval, which counts
    images as independent, is kept under a name that says so."""
    y_true = labels_of(test)
    metrics = compute_metrics(y_true, y_prob)
    correct = round(metrics["accuracy"] * len(test))
    binary = (
        {"accuracy": metrics["accuracy"], "loss": log_loss(y_true, y_prob)} if task.by_type else keras_results
    )
    return {
        "task": task.name,
        "test_accuracy": float(binary["accuracy"]),
        "test_loss": float(binary["loss"]),
        "test_95ci_by_patient": _patient_intervals(test, y_true, y_prob, n_boot, seed),
        "bootstrap_samples": n_boot,
        "test_accuracy_95ci_images_independent": list(wilson_interval(correct, len(test))),
        **{k: v for k, v in metrics.items() if k != "accuracy"},
        "patient_recognition_rate": patient_recognition_rate(y_true, y_prob, test["patient_id"]),
        **majority_class_baseline(y_true),
        "n_test_images": len(test),
        "n_test_patients": int(test["patient_id"].nunique()),
        "n_test_patients_by_class": {
            name: int(test.loc[test["label"] == name, "patient_id"].nunique()) for name in CLASSES
        },
        "dataset": dataset,
        "weights": weights["used"],
        "weights_pretrained": weights["pretrained"],
        "weights_source": weights["source"],
        "paper_test_accuracy": PAPER["test_accuracy"],
        "paper_test_loss": PAPER["test_loss"],
        "per_magnification": metrics_by_magnification(test, y_prob)
        if test["magnification"].nunique() > 1
        else {},
    }


def _patient_intervals(test: pd.DataFrame, y_true, y_prob, n_boot: int, seed: int) -> dict[str, dict]:
    """The headline metrics' 95% intervals at 0.5, resampling test patients, as JSON."""
    found = bootstrap_by_patient(y_true, y_prob, test["patient_id"].to_numpy(), 0.5, n_boot, seed)
    return {name: interval.to_json() for name, interval in found.items()}


_KEY = {"accuracy": "test_accuracy"}  # metrics.json's name for the paper's accuracy


def interval_table(metrics: dict) -> pd.DataFrame:
    """The test metrics at 0.5 with their 95% intervals from resampling patients, for notebook 04."""
    found = metrics["test_95ci_by_patient"]
    names = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
    rows = [
        (
            name,
            format_figure(metrics[_KEY.get(name, name)]),
            format_interval(found[name]) if name in found else "-",
        )
        for name in (*names, "patient_recognition_rate", "majority_class_accuracy")
    ]
    columns = ["metric", "at 0.5", "95% interval (test patients resampled)"]
    return pd.DataFrame(rows, columns=columns).set_index("metric")
