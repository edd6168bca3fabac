"""Stage 4, the decision: calibrated probabilities and a threshold, both fixed on validation.

The paper calls an image malignant when the sigmoid says >= 0.5. Two things are chosen here
instead, on the validation split only, so the test split stays a fair exam:

1. a temperature that makes the probability mean what it says (of images given 80%, about
   80% are malignant): :mod:`bcnb.evaluate.calibrate`;
2. the threshold on that probability, by ``threshold_rule``: :func:`bcnb.evaluate.stats.choose_threshold`.
   Where validation cannot choose (one class, too few patients, Youden's J of 0, a threshold
   calling every image one class), the paper's 0.5 is kept and ``decision.json`` says why.

Then the test split is measured once at that threshold, with intervals from resampling
patients (:mod:`bcnb.evaluate.stats`). The result is saved as ``decision.json``, which ``bcnb predict``
applies to new images, with the fingerprint of the model's weights it was fitted on: a rule fitted
on one model's probabilities says nothing true about another's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.pipeline import labels_of
from bcnb.evaluate import calibrate, stats
from bcnb.evaluate.intervals import format_interval, per_patient_auc_note
from bcnb.evaluate.scores import compute_metrics, format_figure, patient_recognition_rate
from bcnb.run.artifacts import DECISION_FILE
from bcnb.run.files import write_json_atomic


def decide(cfg: Config, val: pd.DataFrame, p_val: np.ndarray) -> dict:
    """The decision rule fitted on the validation split: temperature and threshold."""
    y_val = labels_of(val)
    temperature = calibrate.fit_temperature(y_val, p_val)
    calibrated = calibrate.apply_temperature(p_val, temperature)
    threshold, reason = stats.threshold_choice(
        y_val, calibrated, cfg.threshold_rule, cfg.target_sensitivity, val["patient_id"].to_numpy()
    )
    return {
        "temperature": temperature,
        "threshold": threshold,  # on the calibrated probability
        "threshold_rule": cfg.threshold_rule,
        "threshold_rule_applied": not reason,  # False: validation could not choose, 0.5 kept
        "threshold_reason": reason,
        "target_sensitivity": cfg.target_sensitivity if cfg.threshold_rule == "sensitivity" else None,
        "chosen_on": f"validation split ({len(val)} images, {val['patient_id'].nunique()} patients)",
    }


def measure_decision(
    cfg: Config, rule: dict, val: pd.DataFrame, p_val: np.ndarray, test: pd.DataFrame, p_test: np.ndarray
) -> dict:
    """The test split at the rule's threshold: image- and patient-level metrics, intervals
    by patient bootstrap, and calibration before and after."""
    y_test = labels_of(test)
    calibrated = calibrate.apply_temperature(p_test, rule["temperature"])
    metrics = compute_metrics(y_test, calibrated, rule["threshold"])
    metrics["patient_recognition_rate"] = patient_recognition_rate(
        y_test, calibrated, test["patient_id"], rule["threshold"]
    )
    found = stats.bootstrap_by_patient(
        y_test, calibrated, test["patient_id"].to_numpy(), rule["threshold"], cfg.bootstrap_samples, cfg.seed
    )
    return {
        **rule,
        "image_level": metrics,
        "image_level_95ci_by_patient": {name: interval.to_json() for name, interval in found.items()},
        "bootstrap_samples": cfg.bootstrap_samples,
        "patient_level": stats.patient_level_metrics(test, calibrated, rule["threshold"]),
        "calibration": calibrate.calibration_summary(labels_of(val), p_val, y_test, p_test),
    }


# decision.json's record of the model the rule was fitted on (absent in runs made before it).
FITTED_ON = "model_weights_sha256"


def save_decision(rule: dict, run_dir: str | Path, model=None) -> Path:
    """decision.json: the rule, and with ``model`` the fingerprint of the model it was fitted on."""
    fitted_on = {FITTED_ON: weights_fingerprint(model)} if model is not None else {}
    return write_json_atomic(Path(run_dir) / DECISION_FILE, {**rule, **fitted_on})


def weights_fingerprint(model) -> str:
    """SHA-256 of every weight of ``model`` in order: the same for the model and its saved copy
    loaded again, different for any other weights (the untrained model_initial.keras, another run's)."""
    from bcnb.model.transfer import weights_digest  # Keras: only where a model is at hand

    return weights_digest(model.weights).hexdigest()


def apply_decision(rule: dict, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, labels) for the model's raw probabilities."""
    calibrated = calibrate.apply_temperature(probabilities, rule["temperature"])
    return calibrated, np.where(calibrated >= rule["threshold"], "malignant", "benign")


# The metrics the decision's summary shows: those bootstrapped over patients.
HEADLINE = stats.BOOTSTRAP_METRICS


def describe_threshold(rule: dict) -> str:
    """How the threshold was set, in words for the report, the model card and notebook 04."""
    if not rule.get("threshold_rule_applied", True):  # a decision.json from before the flag: applied
        return (
            f"the paper's 0.5, because validation could not choose ({rule['threshold_reason']}); "
            f"the {rule['threshold_rule']} rule was not applied"
        )
    if rule["threshold_rule"] == "fixed":
        return "the paper's 0.5, fixed, not chosen on data"
    how = {
        "youden": "a threshold maximising sensitivity + specificity (Youden's J)",
        "sensitivity": f"the highest threshold reaching sensitivity {rule.get('target_sensitivity')}",
    }[rule["threshold_rule"]]
    return f"{how} on the {rule['chosen_on']}"


def summary_table(measured: dict) -> pd.DataFrame:
    """Each headline metric at the chosen threshold: per image with its 95% interval from
    resampling patients, and per patient (mean probability of its images)."""
    image, patient = measured["image_level"], measured["patient_level"]
    found = measured["image_level_95ci_by_patient"]
    rows = [
        (name, _round(image[name]), format_interval(found[name]), _per_patient(name, patient))
        for name in HEADLINE
    ]
    columns = ["metric", "per image", "95% CI (patients resampled)", "per patient"]
    return pd.DataFrame(rows, columns=columns).set_index("metric")


def _per_patient(name: str, patient: dict) -> str:
    """One metric per patient; an AUC on a handful of patients says what it rests on."""
    shown = _round(patient.get(name))
    counts = (patient.get("n_benign_patients"), patient.get("n_malignant_patients"))
    if name != "roc_auc" or shown == "n/a" or None in counts:
        return shown
    note = per_patient_auc_note(*counts)
    return f"{shown} ({note})" if note else shown


def _round(value) -> str:
    # "-" where a metric has no per-patient form (the patient recognition rate is one already)
    return "-" if value is None else format_figure(value, 3)
