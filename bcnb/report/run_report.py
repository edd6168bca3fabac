"""The run's report.md: what was run, on what, and what its numbers can and cannot say."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bcnb.data.splitting import stratified_by, summarize_split, types_missing_from_training
from bcnb.evaluate.intervals import NOT_ESTIMABLE_WHEN, Interval, format_interval
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
        caveats.fold_note(config),
        "## Dataset",
        _dataset_section(config, dataset, split),
        "## Model and training",
        _training_section(config, training, metrics),
        "## Test results",
        _results_section(metrics),
        _decision_heading(metrics.get("decision")),
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
    by = "subtype" if config.get("task") == "subtype" else "label"
    lines.append(f"- split: {how}, {stratified_by(split, by)}, seed {config['seed']}")
    lines += [f"- WARNING: {line}: the model never learnt it" for line in types_missing_from_training(split)]
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


# The rows of the results table after accuracy and loss: metrics.json's name, the row's words.
RESULT_ROWS = {
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity (malignant recall)",
    "specificity": "specificity (benign recall)",
    "roc_auc": "ROC AUC",
    "patient_recognition_rate": "patient recognition rate (Spanhol et al. 2016)",
}


def _results_table(metrics: dict) -> pd.DataFrame:
    """The figures at 0.5 beside the paper's, each with its interval from resampling test patients."""
    found = metrics["test_95ci_by_patient"]
    accuracy, paper = f"{metrics['test_accuracy']:.4f}", f"{metrics['paper_test_accuracy']:.4f}"
    rows = [("accuracy", accuracy, paper, format_interval(found["accuracy"]))]
    rows.append(("loss", f"{metrics['test_loss']:.4f}", f"{metrics['paper_test_loss']:.4f}", "-"))
    rows += [
        (words, format_figure(metrics[name]), "not reported", format_interval(found[name]))
        for name, words in RESULT_ROWS.items()
    ]
    baseline = f"always-{metrics['majority_class']} baseline accuracy (the majority class)"
    rows.append((baseline, format_figure(metrics["majority_class_accuracy"]), "-", "-"))
    columns = ["metric", "this run", "paper", "95% interval (test patients resampled)"]
    return pd.DataFrame(rows, columns=columns)


def _results_section(metrics: dict) -> str:
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    matrix = pd.DataFrame(
        [["benign", tn, fp], ["malignant", fn, tp]],
        columns=["true \\ predicted", "benign", "malignant"],
    )
    return (
        f"On {metrics['n_test_images']} test images from {metrics['n_test_patients']} patients "
        f"({_by_class(metrics)}), threshold {metrics['threshold']}:\n\n"
        + markdown_table(_results_table(metrics))
        + f"\n\n{_interval_words(metrics)}\n\nConfusion matrix:\n\n"
        + markdown_table(matrix)
        + _per_magnification_table(metrics.get("per_magnification", {}))
    )


def _by_class(metrics: dict) -> str:
    counts = metrics["n_test_patients_by_class"]
    return ", ".join(f"{counts[name]} {name}" for name in ("benign", "malignant"))


def _interval_words(metrics: dict) -> str:
    """How the intervals were made, when one is not estimable, and the image-level one."""
    return (
        f"Intervals resample the {metrics['n_test_patients']} test patients "
        f"{metrics['bootstrap_samples']} times (all images of a drawn patient come along); "
        f'an interval reads "not estimable" {NOT_ESTIMABLE_WHEN}. Counting the '
        f"{metrics['n_test_images']} images as independent instead, accuracy's Wilson interval would be "
        f"{format_interval(metrics['test_accuracy_95ci_images_independent'])}, which assumes images of "
        "one patient are no more alike than images of two."
    )


def _decision_heading(decision: dict | None) -> str:
    if not decision:
        return ""
    if decision.get("threshold_rule_applied", True):
        return "## The decision rule, chosen on validation"
    return "## The decision rule: the paper's 0.5, as validation could not choose"


def _decision_section(decision: dict | None) -> str:
    if not decision:
        return ""
    from bcnb.evaluate.decision import describe_threshold, summary_table

    calibration = decision["calibration"]
    return (
        f"Probabilities are calibrated by temperature scaling (T = {decision['temperature']:.2f}, "
        f"fitted on the {decision['chosen_on']}, never on test) and images called malignant from "
        f"{decision['threshold']:.3f} on: {describe_threshold(decision)}. Intervals resample test "
        f"patients ({decision['bootstrap_samples']} times) as above; 'per patient' scores the mean "
        f"probability of each of the {decision['patient_level']['n_patients']} test patients, while "
        "the patient recognition rate averages each patient's share of images called right.\n\n"
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
    lines = [
        _uncertainty_line(metrics),
        "- The paper's 0.9344 comes from a test set whose size it does not state (its 4 evaluation "
        "batches fit 61 images, which would mean roughly +-6 points even counting images as "
        "independent) on a data set and split it does not describe: no test of the difference "
        "between it and this run is possible.",
        f"- A model that always answers {metrics['majority_class']}, the larger class of this test split, "
        f"would score {metrics['majority_class_accuracy']:.3f} here; balanced accuracy, sensitivity and "
        "specificity show what accuracy hides.",
    ]
    lines += caveats.bullets(caveats.Provenance.from_records(config, metrics))
    return "\n".join(lines)


def _uncertainty_line(metrics: dict) -> str:
    """What the accuracy's interval says, by patient, and what counting images would pretend."""
    accuracy = Interval.from_json(metrics["test_95ci_by_patient"]["accuracy"])
    patients = metrics["n_test_patients"]
    if accuracy.estimable:
        head = (
            f"- Resampling the {patients} test patients, the 95% interval on accuracy spans "
            f"{100 * (accuracy.high - accuracy.low):.0f} points ({format_interval(accuracy)})"
        )
    else:
        head = (
            f"- With {patients} test patients ({_by_class(metrics)}), the 95% interval on accuracy is "
            f"{format_interval(accuracy)}: too few patients to say how far the figure could move"
        )
    low, high = metrics["test_accuracy_95ci_images_independent"]
    return (
        f"{head}. Counting images as independent would give {format_interval([low, high])} "
        f"({100 * (high - low):.0f} points), an interval that assumes images of one patient are no more "
        "alike than images of two."
    )


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (its index left out)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
