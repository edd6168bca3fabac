"""Test-time augmentation: each image seen in its eight orientations, probabilities averaged.

Tissue under a microscope has no up or down, so the four quarter turns of an image and of its
mirror image are all equally true views of it (the dihedral group of the square). A model
that has not learnt that symmetry answers them a little differently; averaging its eight
answers removes part of that noise, and usually makes probabilities less extreme. Whether it
helps is measured on the validation split (``tta_comparison``), never on test; with
``tta=true`` the decision rule and every result after it use the averaged probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bcnb.data.tasks import malignant_probability
from bcnb.evaluate import calibrate
from bcnb.evaluate.scores import compute_metrics

VIEWS = 8  # 4 quarter turns x (as is, mirrored)


def dihedral_views(images: np.ndarray) -> list[np.ndarray]:
    """The eight orientations of a batch (n, height, width, channels) of square images."""
    mirrored = images[:, :, ::-1]
    return [np.rot90(batch, k, axes=(1, 2)) for batch in (images, mirrored) for k in range(4)]


def tta_probabilities(model, batches) -> np.ndarray:
    """The mean probability of malignancy over the eight views of every image in ``batches``
    (an iterable of (images, labels), e.g. ``pipeline.image_dataset``), in order."""
    means = []
    for images, _ in batches:
        images = np.asarray(images)
        views = [model.predict_on_batch(np.ascontiguousarray(view)) for view in dihedral_views(images)]
        means.append(malignant_probability(np.mean(views, axis=0)))  # per type first, then summed
    return np.concatenate(means) if means else np.zeros(0)


def tta_comparison(y_true, p_single: np.ndarray, p_tta: np.ndarray) -> pd.DataFrame:
    """One image view against eight, on the same (validation) images: accuracy and balanced
    accuracy at 0.5, and two calibration scores (lower is better)."""
    rows = {}
    for name, probability in (("one view", p_single), ("8 views (tta)", p_tta)):
        metrics = compute_metrics(y_true, probability)
        rows[name] = {
            "accuracy": metrics["accuracy"],
            "balanced accuracy": metrics["balanced_accuracy"],
            "Brier score": calibrate.brier_score(y_true, probability),
            "calibration error (ECE)": calibrate.expected_calibration_error(y_true, probability),
        }
    return pd.DataFrame(rows).T.round(4)
