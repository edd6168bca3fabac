"""Figures for the notebooks and the run folder.

Each function returns a matplotlib ``Figure`` made without pyplot: nothing is shown or kept
open behind the caller's back, so a notebook cell displays a figure exactly once (by ending
with it) and headless runs need no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from bcnb.data.images import read_rgb
from bcnb.data.loading import magnification_order
from bcnb.data.tasks import CLASSES
from bcnb.evaluate.calibrate import brier_score, reliability_table
from bcnb.report import caveats
from bcnb.run.artifacts import FIGURES_DIR
from bcnb.run.files import replace_from_writer

# Saved figures go into reports, slides and model cards: at 110 dpi a 3.8-inch confusion matrix
# was 407 pixels wide, blurred as soon as it was enlarged; 150 dpi keeps its labels sharp.
FIGURE_DPI = 150
# PNG is lossless at every zlib level; the default level 6 spends half of a photo figure's
# saving time (Grad-CAM, montage: 1.08 s at 150 dpi here) on compressing, level 1 0.48 s for
# files 18% larger. A run saves and shows about ten figures, a protocol ten per run.
PNG_OPTIONS = {"compress_level": 1}


def show_figures_inline() -> None:
    """In a notebook kernel, display a Figure that ends a cell as an image (notebooks call it
    once; importing bcnb changes no display setting).

    pyplot registers that display when it is imported; these figures are made without it,
    so without this a notebook shows only their text form ("<Figure size ...>").
    """
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # plain Python: nothing displays figures anyway
        return
    if get_ipython() is not None:
        set_matplotlib_formats("png", pil_kwargs=PNG_OPTIONS)


def save_figure(fig: Figure, run_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``run_dir/figures/name.png`` (atomically)."""
    return save_image(fig, Path(run_dir) / FIGURES_DIR / f"{name}.png")


def save_image(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as the PNG file ``path`` (atomically), at :data:`FIGURE_DPI`."""
    return replace_from_writer(
        path,
        lambda tmp: fig.savefig(
            tmp, dpi=FIGURE_DPI, bbox_inches="tight", format="png", pil_kwargs=PNG_OPTIONS
        ),
    )


def plot_runs(summary: dict) -> Figure:
    """One point per run for each metric, at 0.5 and at the validation-chosen threshold, beside
    them the mean with its corrected t interval and the pooled out-of-fold figure; the paper's
    single test accuracy drawn across the accuracy column.

    Runs on random weights or generated images say so in the figure itself: a PNG travels
    without the summary.md that warns about them, and beside "paper: 0.9344" it would read as a
    reproduction.
    """
    thresholds = {"at_0.5": "0.5 (the paper's)", "at_chosen_threshold": "chosen on validation"}
    rows = [
        {"run": run["run"], "metric": name, "value": value, "threshold": label}
        for run in summary["runs"]
        for where, label in thresholds.items()
        for name, value in run[where].items()
        if value is not None
    ]
    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(9, 3.6), layout="constrained")  # constrained: room for the caveat and legend
    ax = fig.subplots()
    sns.stripplot(frame, x="metric", y="value", hue="threshold", dodge=True, ax=ax, size=6, jitter=0.08)
    accuracy = list(frame["metric"].unique()).index("accuracy")
    paper = summary["paper_test_accuracy"]
    ax.hlines(
        paper, accuracy - 0.45, accuracy + 0.45, color="crimson", linestyle="--", label=f"paper: {paper}"
    )
    _draw_over_runs(ax, summary, list(frame["metric"].unique()))
    title = f"{len(summary['runs'])} runs: {summary['protocol'].split(' (')[0]}"
    ax.set(ylabel="test-split value (0 to 1)", xlabel="", title=title)
    ax.tick_params(axis="x", labelrotation=20)
    # Outside the axes, where no run's point can hide behind it; each label once.
    labelled = dict(zip(*reversed(ax.get_legend_handles_labels())))
    place = {"loc": "upper left", "bbox_to_anchor": (1.01, 1), "borderaxespad": 0}
    ax.legend(labelled.values(), labelled.keys(), fontsize="small", **place)
    caveat = caveats.subtitle(caveats.Provenance.from_summary(summary))
    if caveat:
        fig.suptitle(caveat, color="crimson", fontweight="bold", fontsize="medium")
    return fig


def _draw_over_runs(ax, summary: dict, metrics: list[str]) -> None:
    """Right of each metric's points: the mean with its corrected t interval, drawn as computed
    (past 1 where it reaches there, above the grey line at 1), and the pooled out-of-fold figure."""
    pooled = summary.get("pooled") or {}
    ax.axhline(1.0, color="lightgray", linewidth=0.8, zorder=0)
    for where, x_shift in (("at_0.5", -0.07), ("at_chosen_threshold", 0.33)):
        for x, name in enumerate(metrics):
            over = summary.get("summary", {}).get(where, {}).get(name) or {}
            if over.get("interval"):
                mean, low, high = over["mean"], over["interval"]["low"], over["interval"]["high"]
                bars = {"fmt": "_", "color": "black", "capsize": 3, "label": "mean, corrected t 95%"}
                ax.errorbar(x + x_shift, mean, yerr=[[mean - low], [high - mean]], **bars)
            value = (pooled.get(where, {}).get(name) or {}).get("value") if pooled.get("applies") else None
            if value is not None:
                marker = {
                    "marker": "D",
                    "color": "dimgray",
                    "linestyle": "none",
                    "label": "pooled out of fold",
                }
                ax.plot(x + x_shift + 0.09, value, **marker)


def plot_class_counts(table: pd.DataFrame) -> Figure:
    """Images per class at each magnification."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    order = magnification_order(table["magnification"])
    sns.countplot(data=table, x="magnification", hue="label", order=order, hue_order=CLASSES, ax=ax)
    ax.set(title="Images per class and magnification", xlabel="magnification", ylabel="images")
    # Beside the axes: inside, seaborn's "best" place still covered the tallest bars.
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, frameon=False)
    return fig


def plot_montage(table: pd.DataFrame, per_class: int = 4, seed: int = 0) -> Figure:
    """A row of example images for each class, titled with patient and magnification."""
    fig = Figure(figsize=(2.6 * per_class, 2.2 * len(CLASSES)), layout="tight")
    axes = fig.subplots(len(CLASSES), per_class, squeeze=False)
    for row, label in zip(axes, CLASSES):
        rows = table[table["label"] == label]
        examples = rows.sample(min(per_class, len(rows)), random_state=seed)
        for ax, (_, image) in zip(row, examples.iterrows()):
            ax.imshow(read_rgb(image["path"]))
            ax.set_title(f"{label}\npatient {image['patient_id']}, {image['magnification']}", fontsize=8)
        for ax in row:
            ax.axis("off")
    return fig


def plot_history(history: pd.DataFrame) -> Figure:
    """Training and validation curves of loss, accuracy and AUC; the kept epoch marked, and
    where fine-tuning began, if it did."""
    names = [m for m in ("loss", "accuracy", "auc") if m in history]
    fig = Figure(figsize=(4.2 * len(names), 3.2), layout="constrained")  # makes room for the legend
    axes = fig.subplots(1, len(names), squeeze=False)
    from bcnb.train.fit import best_epoch

    best = best_epoch(history)
    tuned = history["epoch"][history.get("phase", pd.Series(dtype=str)) == "fine_tune"]
    for ax, name in zip(axes[0], names):
        ax.plot(history["epoch"], history[name], label="train")
        ax.plot(history["epoch"], history[f"val_{name}"], label="validation")
        ax.axvline(best, color="grey", linestyle=":", label=f"kept (epoch {best})")
        if len(tuned):
            ax.axvline(tuned.iloc[0] - 0.5, color="black", linestyle="--", label="fine-tuning starts")
        ax.set(title=name, xlabel="epoch")
    # One legend for every panel, right of them: inside the first one it covered its curves.
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


def plot_confusion_matrix(matrix: list[list[int]]) -> Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    fig = Figure(figsize=(3.8, 3.2), layout="tight")
    ax = fig.subplots()
    sns.heatmap(
        np.asarray(matrix),
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=False,
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        ax=ax,
    )
    ax.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    return fig


def plot_roc_curve(y_true: np.ndarray, y_prob: np.ndarray) -> Figure:
    """The ROC curve: sensitivity against 1 - specificity over every threshold."""
    fpr, tpr, _ = roc_curve(y_true, y_prob)
    fig = Figure(figsize=(3.8, 3.6), layout="tight")
    ax = fig.subplots()
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Test ROC curve")
    ax.legend(loc="lower right")
    return fig


def plot_reliability(
    y_true: np.ndarray, prob_before: np.ndarray, prob_after: np.ndarray, bins: int = 10
) -> Figure:
    """Reliability diagram: predicted probability against the observed malignant share.

    A calibrated model lies on the diagonal. The histogram below shows how many images each
    stretch of the curve rests on: a bin of three images can wander far from it by chance.
    """
    fig = Figure(figsize=(4.4, 5.2), layout="tight")
    curve, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    curve.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, prob in (("before", prob_before), ("after", prob_after)):
        table = reliability_table(y_true, prob, bins)
        table = table[table["n"] > 0]
        label = f"{name} (Brier {brier_score(y_true, prob):.3f})"
        curve.plot(table["mean_probability"], table["observed_malignant_share"], marker="o", label=label)
        counts.hist(np.asarray(prob), bins=bins, range=(0, 1), histtype="step", label=name)
    curve.set(ylabel="observed malignant share", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    curve.legend(loc="upper left", fontsize=8)
    counts.set(xlabel="predicted malignant probability", ylabel="images")
    return fig


def plot_gradcam(examples: pd.DataFrame, images: list[np.ndarray], overlays: list[np.ndarray]) -> Figure:
    """Each example twice: the image, then its Grad-CAM overlay, titled with the truth, the
    prediction and its calibrated probability."""
    columns = 4  # two examples per row
    rows = max(1, -(-2 * len(examples) // columns))
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows), layout="tight")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, (example, image, heat) in enumerate(zip(examples.itertuples(), images, overlays)):
        axes[2 * i].imshow(image)
        axes[2 * i].set_title(f"true {example.label}\n{example.outcome}", fontsize=8)
        axes[2 * i + 1].imshow(heat)
        percent = f"{100 * example.calibrated_probability:.0f}%"
        axes[2 * i + 1].set_title(f"called {example.predicted}\nP(malignant) {percent}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    return fig


def plot_augmentations(original: np.ndarray, augmented: list[np.ndarray]) -> Figure:
    """One image and augmented versions of it, side by side."""
    fig = Figure(figsize=(2.2 * (1 + len(augmented)), 2.4), layout="tight")
    axes = fig.subplots(1, 1 + len(augmented), squeeze=False)[0]
    for i, (ax, image) in enumerate(zip(axes, [original, *augmented])):
        ax.imshow(np.asarray(image).astype("uint8"))
        ax.set_title("original" if i == 0 else f"augmented {i}", fontsize=8)
        ax.axis("off")
    return fig


def plot_overlays(images: list, titles: list[str]) -> Figure:
    """Images in a row, each with its title (e.g. Grad-CAM overlays of new images)."""
    fig = Figure(figsize=(2.6 * max(1, len(images)), 2.8), layout="tight")
    axes = fig.subplots(1, max(1, len(images)), squeeze=False)[0]
    for ax, image, title in zip(axes, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    return fig


def plot_stain_normalization(rows: dict[str, list[np.ndarray]]) -> Figure:
    """The same images in each row: as scanned, then after each normaliser (row titles)."""
    columns = max(len(images) for images in rows.values())
    fig = Figure(figsize=(2.2 * columns, 2.3 * len(rows)), layout="tight")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for row, (title, images) in zip(axes, rows.items()):
        for ax, image in zip(row, images):
            ax.imshow(np.asarray(image).astype("uint8"))
        row[0].set_title(title, fontsize=9, loc="left")
        for ax in row:
            ax.axis("off")
    return fig


def plot_type_confusion(matrix, names: list[str]) -> Figure:
    """The tumour-type confusion matrix: true type by row, predicted type by column."""
    fig = Figure(figsize=(6.4, 5.4), layout="tight")
    ax = fig.subplots()
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set_xticks(np.arange(len(names)) + 0.5, names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(np.arange(len(names)) + 0.5, names, rotation=0, fontsize=8)
    ax.set(xlabel="predicted type", ylabel="true type", title="Tumour types on the test split")
    return fig
