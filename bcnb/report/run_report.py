"""The run's report.md: what was run, on what, and what its numbers can and cannot say."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bcnb.data.splitting import summarize_split
from bcnb.evaluate.scores import format_figure
from bcnb.report import caveats
from bcnb.run.artifacts import REPORT_FILE, load_dataset_info, load_metrics, load_split, load_training_summary
from bcnb.run.files import write_text_atomic
from bcnb.run.record import read_record


def write_report(run_dir: str | Path) -> Path:
    """Build report.md from the files the notebooks left in ``run_dir``."""
    run_dir = Path(run_dir)
    config = read_record(run_dir)  # checked: a hand-edited record is refused, never reported
    text = render_report(
        config,
        load_dataset_info(run_dir),
        load_split(run_dir),
        load_training_summary(run_dir),
        load_metrics(run_dir),
    )
    return write_text_atomic(run_dir / REPORT_FILE, text)


def render_report(config: dict, dataset: dict, split: pd.DataFrame, training: dict, metrics: dict) -> str:
    sections = [
        "# bcnb run report",
        f"> {caveats.DISCLAIMER}",
        *caveats.markdown_lines(caveats.Provenance.from_records(config, metrics)),
        "## Dataset",
        _dataset_section(config, dataset, split),
        "## Model and training",
        _training_section(config, training, metrics),
        "## Test results",
        _results_section(metrics),
        "## The decision rule, chosen on validation" if "decision" in metrics else "",
        _decision_section(metrics.get("decision")),
        "## What these numbers can and cannot tell",
        _limits_section(config, metrics),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _dataset_section(config: dict, dataset: dict, split: pd.DataFrame) -> str:
    name = config["dataset"]
    if name == caveats.SYNTHETIC:
        name = (
            f"synthetic: {caveats.BUILT_IN} "
            f"({config['synthetic_patients']} patients, difficulty {config['synthetic_difficulty']})"
        )
    lines = [
        f"- dataset: {name}",
        f"- layout: {dataset['layout']}",
        f"- magnification: {config['magnification']}",
    ]
    lines += [f"- {note}" for note in dataset["notes"] if not note.startswith("layout:")]
    if dataset["n_bad_files"]:
        lines.append(
            f"- {dataset['n_bad_files']} bad file(s) left out (on_bad_image=skip); see bad_images.csv"
        )
    how = "by patient (no patient in two splits)" if dataset["patient_level"] else "BY IMAGE (no patient ids)"
    lines.append(f"- split: {how}, stratified by class, seed {config['seed']}")
    return "\n".join(lines) + "\n\n" + markdown_table(summarize_split(split))


def _training_section(config: dict, training: dict, metrics: dict) -> str:
    """The model as recorded by 02 (config.yaml) and training as 03 recorded it (training.json)."""
    cached = training["feature_cache"]
    how = "the head on cached base features" if cached else "end to end through the frozen base"
    weights = caveats.label_weights(caveats.Provenance.from_records(config, metrics))
    size = config["img_size"]
    lines = [
        f"- model: {_title(config)} (frozen, training=False) -> GlobalAveragePooling2D -> "
        f"Dropout({config['dropout']}) -> {head_of(config)}, input {size}x{size}x3",
        f"- weights used: {weights}",
        f"- training: {how}; {training['optimizer']}, learning rate {training['learning_rate']}, "
        f"batch size {training['batch_size']}, class weights {training['class_weight']}",
    ]
    if training["fine_tune_layers"]:
        lines.append(
            f"- fine-tuning (beyond the paper): top {training['fine_tune_layers']} layers of the base, "
            f"{len(training['fine_tuned_layers'])} of them with weights (BatchNormalization frozen), "
            f"learning rate {training['fine_tune_learning_rate']}, "
            f"{training['fine_tune_epochs_run']} of {training['fine_tune_epochs_requested']} epochs run"
        )
    if training["augment"]:
        sizes = training["augmentation"]
        lines.append(
            "- augmentation (epochs on images): flips, quarter turns, brightness "
            f"{sizes['brightness']}, contrast {sizes['contrast']}, H&E stain {sizes['stain']}"
        )
    lines.append(
        f"- epochs: {training['epochs_run']} run of {training['epochs_requested']} requested "
        f"(early stopping, patience {training['patience']}); weights of epoch {training['best_epoch']} "
        f"kept (lowest validation loss); {training['seconds']:.0f} s"
    )
    return "\n".join(lines)


def head_of(config: dict) -> str:
    """The classifier as the paper writes it, or the tumour-type head of task=subtype."""
    from bcnb.data.tasks import BINARY, task_named

    return task_named(config.get("task", BINARY.name)).head


def _title(config: dict) -> str:
    from bcnb.model.backbones import get_backbone  # imports Keras: only when a report is written

    return get_backbone(config["backbone"]).title


def _results_section(metrics: dict) -> str:
    low, high = metrics["test_accuracy_95ci"]
    rows = [
        (
            "accuracy",
            f"{metrics['test_accuracy']:.4f} (95% CI {low:.3f}-{high:.3f})",
            f"{metrics['paper_test_accuracy']:.4f}",
        ),
        ("loss", f"{metrics['test_loss']:.4f}", f"{metrics['paper_test_loss']:.4f}"),
        ("balanced accuracy", format_figure(metrics["balanced_accuracy"]), "not reported"),
        ("sensitivity (malignant recall)", format_figure(metrics["sensitivity"]), "not reported"),
        ("specificity (benign recall)", format_figure(metrics["specificity"]), "not reported"),
        ("ROC AUC", format_figure(metrics["roc_auc"]), "not reported"),
        (
            "patient recognition rate (Spanhol et al. 2016)",
            format_figure(metrics["patient_recognition_rate"]),
            "not reported",
        ),
        (
            f"always-{metrics['majority_class']} baseline accuracy (the majority class)",
            format_figure(metrics["majority_class_accuracy"]),
            "-",
        ),
    ]
    table = pd.DataFrame(rows, columns=["metric", "this run", "paper"])
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    matrix = pd.DataFrame(
        [["benign", tn, fp], ["malignant", fn, tp]],
        columns=["true \\ predicted", "benign", "malignant"],
    )
    return (
        f"On {metrics['n_test_images']} test images from {metrics['n_test_patients']} patients, "
        f"threshold {metrics['threshold']}:\n\n"
        + markdown_table(table)
        + "\n\nConfusion matrix:\n\n"
        + markdown_table(matrix)
        + _per_magnification_table(metrics.get("per_magnification", {}))
    )


def _decision_section(decision: dict | None) -> str:
    if not decision:
        return ""
    from bcnb.evaluate.decision import summary_table

    rule = decision["threshold_rule"]
    why = {
        "fixed": "fixed at 0.5",
        "youden": "maximising sensitivity + specificity (Youden's J)",
        "sensitivity": f"the highest reaching sensitivity {decision['target_sensitivity']}",
    }[rule]
    calibration = decision["calibration"]
    return (
        f"Probabilities are calibrated by temperature scaling (T = {decision['temperature']:.2f}) and "
        f"images called malignant from {decision['threshold']:.3f} on, a threshold {why}; both were "
        f"chosen on the {decision['chosen_on']}, never on test. Intervals resample test patients "
        f"({decision['bootstrap_samples']} times); 'per patient' scores the mean probability of "
        f"each of the {decision['patient_level']['n_patients']} test patients, while the patient "
        "recognition rate averages each patient's share of images called right.\n\n"
        + markdown_table(summary_table(decision).reset_index())
        + f"\n\nTest Brier score {calibration['test_brier_before']:.3f} before calibration, "
        f"{calibration['test_brier_after']:.3f} after (lower is better)."
    )


def _per_magnification_table(per_magnification: dict) -> str:
    if not per_magnification:
        return ""
    keys = ("accuracy", "balanced_accuracy", "roc_auc", "patient_recognition_rate")
    rows = [
        (name, figures["n_images"], *(format_figure(figures[k]) for k in keys))
        for name, figures in per_magnification.items()
    ]
    columns = [
        "magnification",
        "images",
        "accuracy",
        "balanced accuracy",
        "ROC AUC",
        "patient recognition rate",
    ]
    table = pd.DataFrame(rows, columns=columns)
    return "\n\nBy magnification:\n\n" + markdown_table(table)


def _limits_section(config: dict, metrics: dict) -> str:
    low, high = metrics["test_accuracy_95ci"]
    lines = [
        f"- The 95% interval on accuracy spans {100 * (high - low):.0f} points, and it assumes images "
        "are independent: images of one patient are alike, so with "
        f"{metrics['n_test_patients']} test patients the real uncertainty is wider. The paper's "
        "0.9344 comes from a test set whose size it does not state (its 4 evaluation batches "
        "fit 61 images, which would mean roughly +-6 points) on a data set and split it does "
        "not describe: differences of a few points between the two are noise.",
        f"- A model that always answers {metrics['majority_class']}, the larger class of this test split, "
        f"would score {metrics['majority_class_accuracy']:.3f} here; balanced accuracy, sensitivity and "
        "specificity show what accuracy hides.",
    ]
    lines += caveats.bullets(caveats.Provenance.from_records(config, metrics))
    return "\n".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (its index left out)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
