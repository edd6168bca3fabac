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

from bcnb.datasets import CLASSES, magnification_order, read_image
from bcnb.files import replace_from_writer

FIGURES_DIR = "figures"


def save_figure(fig: Figure, run_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``run_dir/figures/name.png`` (atomically)."""
    path = Path(run_dir) / FIGURES_DIR / f"{name}.png"
    return replace_from_writer(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def plot_class_counts(table: pd.DataFrame) -> Figure:
    """Images per class at each magnification."""
    fig = Figure(figsize=(6, 3.2), layout="tight")
    ax = fig.subplots()
    order = magnification_order(table["magnification"])
    sns.countplot(data=table, x="magnification", hue="label", order=order, hue_order=CLASSES, ax=ax)
    ax.set(title="Images per class and magnification", xlabel="magnification", ylabel="images")
    return fig


def plot_montage(table: pd.DataFrame, per_class: int = 4, seed: int = 0) -> Figure:
    """A row of example images for each class, titled with patient and magnification."""
    fig = Figure(figsize=(2.6 * per_class, 2.2 * len(CLASSES)), layout="tight")
    axes = fig.subplots(len(CLASSES), per_class, squeeze=False)
    for row, label in zip(axes, CLASSES):
        rows = table[table["label"] == label]
        examples = rows.sample(min(per_class, len(rows)), random_state=seed)
        for ax, (_, image) in zip(row, examples.iterrows()):
            ax.imshow(read_image(image["path"]))
            ax.set_title(f"{label}\npatient {image['patient_id']}, {image['magnification']}", fontsize=8)
        for ax in row:
            ax.axis("off")
    return fig


def plot_history(history: pd.DataFrame) -> Figure:
    """Training and validation curves of loss, accuracy and AUC; the kept epoch marked."""
    names = [m for m in ("loss", "accuracy", "auc") if m in history]
    fig = Figure(figsize=(4.2 * len(names), 3.2), layout="tight")
    axes = fig.subplots(1, len(names), squeeze=False)
    best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    for ax, name in zip(axes[0], names):
        ax.plot(history["epoch"], history[name], label="train")
        ax.plot(history["epoch"], history[f"val_{name}"], label="validation")
        ax.axvline(best, color="grey", linestyle=":", label=f"kept (epoch {best})")
        ax.set(title=name, xlabel="epoch")
    axes[0][0].legend()
    return fig


def plot_confusion_matrix(matrix: list[list[int]]) -> Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    fig = Figure(figsize=(3.8, 3.2), layout="tight")
    ax = fig.subplots()
    sns.heatmap(np.asarray(matrix), annot=True, fmt="d", cmap="Blues", cbar=False,
                xticklabels=CLASSES, yticklabels=CLASSES, ax=ax)  # fmt: skip
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
