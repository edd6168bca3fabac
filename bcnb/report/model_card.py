"""The run's model_card.md: what the trained model is, what it is for, and where it fails.

A model card (Mitchell et al., "Model Cards for Model Reporting", FAT* 2019) travels with a
model so that whoever applies it knows its intended use, the data it learnt from and its
measured performance, with subgroups and limits. bcnb writes one per run from the run's own
records only (config.yaml, dataset.json, split.csv, weights.json, training.json,
metrics.json, predictions.csv), so every figure in it is one notebook 04 measured; nothing is
typed in by hand. ``bcnb predict`` names it beside its answers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bcnb import __version__
from bcnb.config import CONFIG_FILE
from bcnb.data.layouts import parse_breakhis_name
from bcnb.data.splitting import summarize_split
from bcnb.data.tasks import SUBTYPE_NAMES
from bcnb.evaluate.intervals import NOT_ESTIMABLE_WHEN, Interval, format_interval
from bcnb.evaluate.scores import format_figure
from bcnb.report import caveats
from bcnb.report.run_report import head_of, markdown_table
from bcnb.run.artifacts import (
    MODEL_CARD_FILE,
    PREDICTIONS_FILE,
    load_dataset_info,
    load_metrics,
    load_split,
    load_training_summary,
)
from bcnb.run.files import write_text_atomic
from bcnb.run.record import read_record

# The metrics of the card's table, as decision.json's image_level names them.
CARD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")


def write_model_card(run_dir: str | Path) -> Path:
    """Build model_card.md from the records notebooks 01-04 left in ``run_dir``."""
    run_dir = Path(run_dir)
    records = {
        "config": read_record(run_dir),
        "dataset": load_dataset_info(run_dir),
        "split": load_split(run_dir),
        "training": load_training_summary(run_dir),
        "metrics": load_metrics(run_dir),
        "predictions": pd.read_csv(run_dir / PREDICTIONS_FILE),
    }
    return write_text_atomic(run_dir / MODEL_CARD_FILE, render_model_card(**records))


def render_model_card(
    config: dict, dataset: dict, split: pd.DataFrame, training: dict, metrics: dict, predictions: pd.DataFrame
) -> str:
    provenance = caveats.Provenance.from_records(config, metrics)
    sections = [
        f"# Model card: {_title(config)} {caveats.model_kind(provenance)} (benign vs malignant)",
        f"> {caveats.DISCLAIMER}",
        *caveats.markdown_lines(provenance),
        caveats.fold_note(config),
        "## Model",
        _model_section(config, training, metrics),
        "## Intended use",
        _intended_use(),
        "## Data and split",
        _data_section(config, dataset, split),
        "## Performance on the test split",
        _metrics_section(metrics),
        "## Calibration",
        _calibration_section(metrics.get("decision")),
        "## Subgroups",
        _subgroups_section(metrics, predictions),
        "## Known limits",
        _limits_section(config, metrics),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _title(config: dict) -> str:
    from bcnb.model.backbones import get_backbone  # imports Keras: only when a card is written

    return get_backbone(config["backbone"]).title


def _model_section(config: dict, training: dict, metrics: dict) -> str:
    size = config["img_size"]
    weights = caveats.label_weights(caveats.Provenance.from_records(config, metrics))
    lines = [
        f"- Architecture: {_title(config)} base (frozen, called with training=False) -> "
        f"GlobalAveragePooling2D -> Dropout({config['dropout']}) -> {head_of(config)}; "
        f"input {size}x{size} RGB pixels, 0-255 ({config['resize']}); precision {config['precision']}.",
        f"- Weights of the base: {weights}.",
        f"- Trained: {training['epochs_run']} epochs of {training['optimizer']} at learning rate "
        f"{training['learning_rate']}, the weights of epoch {training['best_epoch']} kept (lowest "
        f"validation loss); fine-tuned layers of the base: {len(training['fine_tuned_layers'])}.",
        f"- Output: the probability that an image is malignant; made by bcnb {__version__}. "
        f"How the run was made: `{CONFIG_FILE}` in this folder.",
    ]
    return "\n".join(lines)


def _intended_use() -> str:
    return "\n".join(
        [
            "- For: teaching transfer learning on histopathology, and reproducing or varying the "
            "experiment of Prasuna et al. in research.",
            "- Not for: diagnosis, screening, triage or any decision about a patient. It has not "
            "been validated clinically, by anyone.",
            "- Inputs it was not measured on: other stains, scanners, laboratories, organs or "
            "magnifications than its training data; whole slides (it sees one field of view).",
        ]
    )


def _data_section(config: dict, dataset: dict, split: pd.DataFrame) -> str:
    name = config["dataset"]
    if name == caveats.SYNTHETIC:
        name = caveats.BUILT_IN
    how = "by patient (no patient in two splits)" if dataset["patient_level"] else "BY IMAGE (no patient ids)"
    lines = [
        f"- Data: {name}; layout {dataset['layout']}; magnification {config['magnification']}.",
        f"- Split {how}, stratified by class, seed {config['seed']}; the threshold and the "
        "calibration were chosen on validation, never on test.",
    ]
    return "\n".join(lines) + "\n\n" + markdown_table(summarize_split(split))


def _metrics_section(metrics: dict) -> str:
    decision = metrics.get("decision")
    paper = (
        f"This run, measured as the paper measures (`model.evaluate`, threshold 0.5): accuracy "
        f"{format_figure(metrics['test_accuracy'])} (95% interval resampling test patients: "
        f"{format_interval(metrics['test_95ci_by_patient']['accuracy'])}; counting images as "
        f"independent: {format_interval(metrics['test_accuracy_95ci_images_independent'])}), loss "
        f"{format_figure(metrics['test_loss'])}; the paper reports {metrics['paper_test_accuracy']:.4f}. "
        f"Always answering {metrics['majority_class']} would score "
        f"{format_figure(metrics['majority_class_accuracy'])}."
    )
    if not decision:
        return paper
    from bcnb.evaluate.decision import describe_threshold

    found = decision["image_level_95ci_by_patient"]
    rows = [
        (
            name.replace("_", " "),
            format_figure(decision["image_level"][name]),
            format_interval(found.get(name)),
        )
        for name in CARD_METRICS
    ]
    table = pd.DataFrame(rows, columns=["metric", "value", "95% interval (test patients resampled)"])
    head = (
        f"On {metrics['n_test_images']} test images from {metrics['n_test_patients']} patients, at the "
        f"threshold {decision['threshold']:.3f}, {describe_threshold(decision)}:"
    )
    patients = decision["patient_level"]
    per_patient = (
        f"Per patient (the mean calibrated probability of each of {patients['n_patients']}): "
        f"accuracy {format_figure(patients['accuracy'])}, "
        f"balanced accuracy {format_figure(patients['balanced_accuracy'])}."
    )
    return "\n\n".join([head, markdown_table(table), per_patient, paper])


def _calibration_section(decision: dict | None) -> str:
    if not decision:
        return "Not measured (notebook 04 ran without its decision step)."
    calibration = decision["calibration"]
    return (
        f"Probabilities are divided in logit by a temperature T = {decision['temperature']:.4f}, fitted "
        f"on validation. Test Brier score {calibration['test_brier_before']:.4f} before, "
        f"{calibration['test_brier_after']:.4f} after; expected calibration error "
        f"{calibration['test_ece_before']:.4f} before, {calibration['test_ece_after']:.4f} after "
        "(lower is better for both)."
    )


def _subgroups_section(metrics: dict, predictions: pd.DataFrame) -> str:
    parts = []
    per_magnification = metrics.get("per_magnification") or {}
    if per_magnification:
        rows = [
            (
                name,
                figures["n_images"],
                format_figure(figures["accuracy"]),
                format_figure(figures["balanced_accuracy"]),
            )
            for name, figures in per_magnification.items()
        ]
        columns = ["magnification", "images", "accuracy (0.5)", "balanced accuracy (0.5)"]
        parts.append("By magnification:\n\n" + markdown_table(pd.DataFrame(rows, columns=columns)))
    subtypes = subtype_errors(predictions)
    if len(subtypes):
        parts.append("By tumour type (at the chosen threshold):\n\n" + markdown_table(subtypes))
    else:
        parts.append("Tumour types: not known for this data set (its file names are not BreakHis').")
    return "\n\n".join(parts)


def subtype_errors(predictions: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and accuracy of each BreakHis tumour type among the test predictions;
    empty where the file names are not BreakHis names."""
    try:
        subtype = [parse_breakhis_name(Path(path).name)["subtype"] for path in predictions["path"]]
    except ValueError:
        return pd.DataFrame()
    right = predictions["label"] == predictions["predicted"]
    grouped = predictions.assign(subtype=subtype, right=right).groupby("subtype")
    table = pd.DataFrame(
        {
            "images": grouped.size(),
            "patients": grouped["patient_id"].nunique(),
            "accuracy": grouped["right"].mean().map(format_figure),
        }
    )
    table.insert(0, "tumour type", [SUBTYPE_NAMES.get(code, code) for code in table.index])
    return table.reset_index(drop=True)


def _patients_limit(metrics: dict) -> str:
    """How far the test split's size lets its figures be trusted, true to its intervals."""
    found = [*metrics["test_95ci_by_patient"].values()]
    found += [*(metrics.get("decision") or {}).get("image_level_95ci_by_patient", {}).values()]
    unsure = any(not Interval.from_json(interval).estimable for interval in found)
    said = (
        f'too few for some 95% intervals, which read "not estimable" {NOT_ESTIMABLE_WHEN}'
        if unsure
        else "the intervals above say how far each figure could move"
    )
    return (
        f"- {metrics['n_test_patients']} test patients: {said}; one split's figure varies with the split, "
        "and `bcnb reproduce --folds 5` gives a distribution over patient folds."
    )


def _limits_section(config: dict, metrics: dict) -> str:
    lines = [
        _patients_limit(metrics),
        "- Two classes only: no tumour grade, no other tissue (normal, in situ); an image of anything "
        "else still gets a benign or malignant answer.",
        "- Public breast histopathology sets come from few laboratories (BreakHis: one, in Brazil); "
        "another lab's staining or scanner can lower performance without warning.",
    ]
    lines += caveats.bullets(caveats.Provenance.from_records(config, metrics))
    return "\n".join(lines)
