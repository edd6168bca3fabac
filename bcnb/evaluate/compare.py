"""Notebook 05: the paper's head on several pretrained bases, on the same split and seed.

Each backbone gets its own folder under ``run_dir/compare/NAME`` (its model, feature cache,
history and decision rule), is trained exactly as the main run was, and is measured on the
same test images, so the differences are the bases' alone. Paired statistics then ask
whether a difference to the paper's ResNet50V2 is more than the test split's noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.pipeline import labels_of
from bcnb.data.tasks import task_named
from bcnb.evaluate import decision, stats
from bcnb.evaluate.intervals import format_interval
from bcnb.evaluate.scores import compute_metrics, evaluation_inputs
from bcnb.model import transfer
from bcnb.run import artifacts
from bcnb.run.artifacts import ALL_FEATURES, COMPARE_DIR, FEATURES_DIR, STAIN_TARGET_FILE
from bcnb.run.files import link_or_copy
from bcnb.train.features import extraction_speed, feature_file
from bcnb.train.fit import train_model

REFERENCE = "resnet50v2"  # the paper's


def backbone_config(cfg: Config, name: str) -> Config:
    return cfg.replace(backbone=name, run_dir=str(Path(cfg.run_dir) / COMPARE_DIR / name))


def run_backbone(cfg: Config, name: str, split: pd.DataFrame) -> dict:
    """Build, train and measure one backbone; its folder keeps everything it made.

    The run's own backbone, once notebooks 02-03 have trained it, is not trained again: the
    same configuration, split and seed would only repeat notebook 03. Its row measures the
    run's model, whose files are linked into its folder (no second copy of the bytes).
    """
    sub = backbone_config(cfg, name)
    transfer.forget_retracings()  # each base is traced as in a notebook of its own
    if name == cfg.backbone and (Path(cfg.run_dir) / artifacts.MODEL_FILE).is_file():
        model, weights, speed, history = _the_runs_own(cfg, sub)
        measured_on, trained_by = cfg, "notebook 03 (the run's own model)"  # cfg: the run's feature cache
    else:
        model, weights, speed, history = _train(cfg, sub, split)
        measured_on, trained_by = sub, "this notebook"
    val, test = (split[split["split"] == part] for part in ("val", "test"))
    p_val, p_test = (_probabilities(measured_on, model, split, part) for part in ("val", "test"))
    rule = decision.decide(sub, val, p_val)
    measured = decision.measure_decision(sub, rule, val, p_val, test, p_test)
    decision.save_decision(rule, sub.run_dir, model)
    return {
        "backbone": name,
        "weights": weights.used,
        "pretrained": weights.pretrained,
        "parameters": transfer.count_parameters(model)["total"],
        "images_per_second": speed,
        "epochs_run": len(history),
        "trained_by": trained_by,
        # What a choice between backbones may look at: the validation split, never test.
        "validation": {"loss": float(history["val_loss"].min()), "roc_auc": _roc_auc(val, p_val)},
        "measured": measured,
        "test_probability": decision.apply_decision(rule, p_test)[0],  # calibrated
    }


def _train(cfg: Config, sub: Config, split: pd.DataFrame):
    """Notebooks 02-03 for another base, in its own folder: (model, weights, speed, history)."""
    if cfg.stain_normalization != "none":  # the main run's target, fitted on the same training split
        link_or_copy(Path(cfg.run_dir) / STAIN_TARGET_FILE, Path(sub.run_dir) / STAIN_TARGET_FILE)
    model, weights = transfer.build_transfer_model(sub)
    speed = extraction_speed(feature_file(sub, model, split))
    history = train_model(sub, model, split)
    transfer.save_model(model, Path(sub.run_dir) / artifacts.MODEL_FILE)
    transfer.save_weights_info(weights, sub.run_dir)
    return model, weights, speed, history


def _the_runs_own(cfg: Config, sub: Config):
    """The run's trained model as the row of its own base: (model, weights, speed, history)."""
    run, own = Path(cfg.run_dir), Path(sub.run_dir)
    features = run / FEATURES_DIR / ALL_FEATURES
    shared = [run / artifacts.MODEL_FILE, run / artifacts.HISTORY_FILE, run / artifacts.WEIGHTS_FILE]
    for path in shared + artifacts.feature_cache_files(features):
        link_or_copy(path, own / path.relative_to(run))
    model = transfer.load_model(run / artifacts.MODEL_FILE)
    speed = extraction_speed(features)  # None where no one pass over the images made them
    return model, transfer.load_weights_info(cfg.run_dir), speed, artifacts.load_history(cfg.run_dir)


def _roc_auc(table: pd.DataFrame, probability: np.ndarray) -> float:
    return compute_metrics(labels_of(table), probability)["roc_auc"]


def describe(result: dict) -> str:
    """One line on a trained backbone: who trained it, for how long, and its extraction speed."""
    speed = result["images_per_second"]
    shown = "extraction speed not measured here" if speed is None else f"{speed:.1f} images/s"
    return f"{result['backbone']}: trained by {result['trained_by']}, {result['epochs_run']} epochs, {shown}"


def _rounded(speed: float | None) -> float | None:
    return None if speed is None else round(speed, 1)


def _probabilities(cfg: Config, model, split: pd.DataFrame, part: str) -> np.ndarray:
    """The model's probabilities for one split (from the cached features when they apply)."""
    evaluated, data = evaluation_inputs(cfg, model, split, part)
    return task_named(cfg.task).malignant_probability(evaluated.predict(data, verbose=0))


def comparison_table(results: list[dict]) -> pd.DataFrame:
    """One row per backbone: size, speed, the validation figures to choose by, and test metrics
    with 95% patient-bootstrap CIs (to report, not to choose by)."""
    rows = []
    for result in results:
        measured = result["measured"]
        row = {
            "backbone": result["backbone"],
            # Loud where the base was not pretrained: the row is then no transfer learning.
            "weights": result["weights"] if result["pretrained"] else result["weights"].upper(),
            "parameters (M)": round(result["parameters"] / 1e6, 1),
            "images/s": _rounded(result["images_per_second"]),
            "val loss": round(result["validation"]["loss"], 4),
            "val ROC AUC": round(result["validation"]["roc_auc"], 3),
        }
        for name in ("accuracy", "balanced_accuracy", "roc_auc"):
            interval = format_interval(measured["image_level_95ci_by_patient"][name])
            row[f"test {name}"] = f"{measured['image_level'][name]:.3f} ({interval})"
        rows.append(row)
    return pd.DataFrame(rows).set_index("backbone")


def paired_table(results: list[dict], test: pd.DataFrame, seed: int = 0, n_boot: int = 2000) -> pd.DataFrame:
    """Each backbone against the reference on the same test images: the difference in
    balanced accuracy with its paired patient-bootstrap CI and p-value, and McNemar's test
    on the images each gets right."""
    by_name = {result["backbone"]: result for result in results}
    if REFERENCE not in by_name:
        return pd.DataFrame()
    reference = by_name[REFERENCE]
    y_true, patients = labels_of(test), test["patient_id"].to_numpy()
    rows = [
        _paired_row(reference, result, y_true, patients, seed=seed, n_boot=n_boot)
        for name, result in by_name.items()
        if name != REFERENCE
    ]
    return pd.DataFrame(rows).set_index("backbone")


def _paired_row(reference: dict, result: dict, y_true, patients, *, seed: int, n_boot: int) -> dict:
    """One line of the paired table: ``result`` against the reference, image by image."""
    thresholds = (reference["measured"]["threshold"], result["measured"]["threshold"])
    probabilities = (reference["test_probability"], result["test_probability"])
    paired = stats.paired_bootstrap(
        y_true, *probabilities, patients, *thresholds, metric="balanced_accuracy", n_boot=n_boot, seed=seed
    )
    mcnemar = stats.mcnemar(y_true, *[(p >= t).astype(int) for p, t in zip(probabilities, thresholds)])
    low, high = paired["ci"]
    difference = f"{paired['difference']:+.3f} ({low:+.3f}, {high:+.3f})"
    return {
        "backbone": result["backbone"],
        f"balanced accuracy minus {REFERENCE}": difference,
        "bootstrap p": round(paired["p_value"], 3),
        f"McNemar: only {REFERENCE} right / only this right": f"{mcnemar['b']} / {mcnemar['c']}",
        "McNemar p": round(mcnemar["p_value"], 3),
    }
