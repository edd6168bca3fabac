"""Grad-CAM: where in the image the base's last convolutional maps pushed the decision.

Selvaraju et al. (2017) weigh each feature map of the last convolutional block by the mean
gradient of the class score with respect to it, sum, and keep the positive part. The score
here is the logit of "malignant" for images called malignant, and its negative for images
called benign, so the heat always shows the evidence *for the predicted class*.

With this model's head (global average pooling, then one Dense unit) the gradient is the
same at every position, so Grad-CAM equals the class activation map of Zhou et al. (2016);
computing it by gradient keeps it right for any head.
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
from matplotlib import colormaps

from bcnb.data.tasks import MALIGNANT_TYPES, SUBTYPES
from bcnb.model.transfer import FEATURE_LAYER, base_of


def gradcam(model: keras.Model, images: np.ndarray, called_malignant=None) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, H, W) in [0, 1] at the images' size, and the probabilities (N,).

    ``images`` are raw 0-255 pixels, (N, H, W, 3), as the model takes them.
    ``called_malignant`` (N booleans) says which class each heatmap explains; by default,
    the class the probability favours (>= 0.5).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype="float32"))
    maps = base_of(model)(model.get_layer("preprocess")(images), training=False)
    maps = tf.cast(maps, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(maps)
        logit = _logit(model, maps)
        probability = tf.sigmoid(logit)
        malignant = probability >= 0.5 if called_malignant is None else np.reshape(called_malignant, (-1, 1))
        score = tf.where(malignant, logit, -logit)
    weights = tf.reduce_mean(tape.gradient(score, maps), axis=(1, 2), keepdims=True)
    heat = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
    heat = tf.image.resize(heat, images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(heat, axis=(1, 2), keepdims=True)
    heat = tf.math.divide_no_nan(heat, peak)  # each map to [0, 1]; all-zero stays zero
    return heat.numpy(), probability.numpy().reshape(-1)


def _logit(model: keras.Model, maps):
    """The classifier's logit from the base's maps: the pooled features times the Dense
    kernel, plus its bias (Dropout is idle at inference).

    Computed directly rather than recovered from the probability: a float32 sigmoid rounds to
    1.0 from a logit of about 17 on, common for a trained head, and a clipped probability
    passes no gradient back, which would leave the heatmap all zeros.
    """
    import tensorflow as tf

    pooled = tf.cast(model.get_layer(FEATURE_LAYER)(maps), tf.float32)
    classifier = model.get_layer("classifier")
    logits = tf.matmul(pooled, tf.cast(classifier.kernel, tf.float32)) + tf.cast(classifier.bias, tf.float32)
    if logits.shape[-1] == 1:
        return logits
    # A tumour-type softmax: the log-odds of malignancy, log(sum of the malignant types'
    # exp(logit)) - log(sum of the benign types'), whose sigmoid is their summed probability.
    benign = len(SUBTYPES) - len(MALIGNANT_TYPES)
    malignant_evidence = tf.reduce_logsumexp(logits[:, benign:], axis=1, keepdims=True)
    return malignant_evidence - tf.reduce_logsumexp(logits[:, :benign], axis=1, keepdims=True)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with its heatmap laid over it in colour (uint8 RGB)."""
    colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
    mixed = (1 - alpha) * np.asarray(image, dtype="float32") + alpha * colour
    return np.clip(mixed, 0, 255).astype("uint8")


def pick_examples(predictions: pd.DataFrame, per_group: int = 2, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_group`` test images for each of: true class x right or wrong.

    ``predictions`` is predictions.csv's table (label, predicted). The four groups show what
    the model looks at when it is right and when it is wrong, for each class.
    """
    right = predictions["label"] == predictions["predicted"]
    table = predictions.assign(outcome=np.where(right, "right", "wrong"))
    groups = table.groupby(["label", "outcome"], sort=True)
    picked = [group.sample(min(per_group, len(group)), random_state=seed) for _, group in groups]
    return pd.concat(picked).reset_index(drop=True) if picked else table.head(0)


def confident_errors(decided: pd.DataFrame, count: int = 6) -> pd.DataFrame:
    """The ``count`` wrongly called test images the model was surest of, surest first (a
    benign image called malignant at 97% before one at 60%). ``decided`` has label,
    predicted and calibrated_probability, as predictions.csv does."""
    wrong = decided[decided["label"] != decided["predicted"]]
    probability = wrong["calibrated_probability"].to_numpy()
    confidence = np.where(wrong["predicted"] == "malignant", probability, 1 - probability)
    ranked = wrong.assign(outcome="wrong", confidence=confidence)
    return ranked.sort_values("confidence", ascending=False, kind="stable").head(count).reset_index(drop=True)
