"""Training-time augmentation of histopathology tiles, as TensorFlow ops.

Every change is one a second slide of the same tumour could plausibly show:

- Tissue on a slide has no up, down, left or right, so flips and quarter turns are free.
- Lamps and cameras differ a little: a small brightness and contrast change.
- Labs stain differently: the haematoxylin (purple, nuclei) and eosin (pink, stroma and
  cytoplasm) amounts are jittered one by one, as in the "HED" augmentation of Tellez et al.,
  "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference to train
  distilled stain-invariant convolutional networks", IEEE TMI 37(9):2126-2136, 2018. The
  stains are separated with the colour deconvolution of Ruifrok & Johnston, "Quantification
  of histochemical staining by color deconvolution", Anal Quant Cytol Histol 23(4), 2001.

Images come in as the pipeline yields them (uint8 or float, (height, width, 3), 0-255) and
leave as float32 in 0-255, before the model's own rescaling. All randomness comes from
stateless ops and an explicit seed, so a run (or a resumed run) sees exactly the same
augmented images every time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Real

import numpy as np
import tensorflow as tf

# Ruifrok & Johnston's stain vectors: the optical density one unit of each stain adds to the
# red, green and blue channels. Rows are haematoxylin, eosin and DAB; DAB is absent from H&E
# slides but makes the matrix square, so it also soaks up what fits neither H nor E.
_STAIN_VECTORS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_STAINS = _STAIN_VECTORS / np.linalg.norm(_STAIN_VECTORS, axis=1, keepdims=True)
STAINS_FROM_RGB = np.linalg.inv(RGB_FROM_STAINS)

# The values drawn per image; each has its own sub-seed so that switching one change
# off does not alter the values drawn for the others.
_DRAWS = ("flip", "rotate", "brightness", "contrast", "stain_alpha", "stain_beta")


@dataclass(frozen=True)
class Augmentation:
    """How strongly to augment; each strength is the half-width of a uniform draw.

    brightness: shift by up to this fraction of 255. contrast: scale about the channel mean
    by a factor in [1 - contrast, 1 + contrast]. stain: each stain amount is multiplied by a
    factor in [1 - stain, 1 + stain] and shifted by up to +-stain (optical density units).
    """

    flip: bool = True
    rotate: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    stain: float = 0.05

    def __post_init__(self):
        for name in ("brightness", "contrast", "stain"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a number from 0 to 1, got {value!r}")
        for name in ("flip", "rotate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, cfg) -> Augmentation:
        """The augmentation a Config asks for; flips and turns are always on."""
        return cls(brightness=cfg.augment_brightness, contrast=cfg.augment_contrast, stain=cfg.augment_stain)

    @property
    def is_identity(self) -> bool:
        """True when nothing would change: no flips, no turns and all strengths zero."""
        return not any(getattr(self, field.name) for field in fields(self))


# --------------------------------------------------------------------------- stains
def rgb_to_stain_concentrations(image) -> tf.Tensor:
    """Haematoxylin, eosin and DAB amounts per pixel, shape (..., 3), from RGB in 0-255.

    Light passing through stain falls off exponentially (Beer-Lambert), so optical density
    -log(I / I0) adds up linearly over stains. The +1 and 256 keep the log finite for black
    pixels and make white background exactly zero stain.
    """
    rgb = tf.cast(image, tf.float32)
    density = -tf.math.log((rgb + 1.0) / 256.0)
    return tf.tensordot(density, tf.constant(STAINS_FROM_RGB, tf.float32), axes=1)


def stain_concentrations_to_rgb(concentrations) -> tf.Tensor:
    """RGB in 0-255 from stain amounts, the inverse of rgb_to_stain_concentrations (unclipped)."""
    density = tf.tensordot(tf.cast(concentrations, tf.float32), tf.constant(RGB_FROM_STAINS, tf.float32), 1)
    return 256.0 * tf.exp(-density) - 1.0


def jitter_stains(image, alpha, beta) -> tf.Tensor:
    """Scale each stain's amount by alpha and shift it by beta (both length-3: H, E, DAB)."""
    concentrations = rgb_to_stain_concentrations(image)
    jittered = concentrations * tf.cast(alpha, tf.float32) + tf.cast(beta, tf.float32)
    return tf.clip_by_value(stain_concentrations_to_rgb(jittered), 0.0, 255.0)


# --------------------------------------------------------------------------- the transform
def _is_neutral(value, neutral) -> bool:
    """True only for plain Python/NumPy values known, before running, to change nothing.

    Skipping neutral steps keeps the identity exact: the stain round trip alone moves pixels
    by a fraction of a grey level. Tensors (drawn values) are never skipped.
    """
    if tf.is_tensor(value):
        return False
    return bool(np.all(np.asarray(value) == neutral))


def _as_bool(flag) -> tf.Tensor:
    return tf.cast(flag, tf.bool)


def flip_and_turn(image: tf.Tensor, flip_left_right, flip_up_down, quarter_turns) -> tf.Tensor:
    """Mirror and rotate by 90-degree steps; only moves pixels, never changes a value."""
    image = tf.cond(_as_bool(flip_left_right), lambda: tf.reverse(image, axis=[1]), lambda: image)
    image = tf.cond(_as_bool(flip_up_down), lambda: tf.reverse(image, axis=[0]), lambda: image)
    return tf.image.rot90(image, k=tf.cast(quarter_turns, tf.int32) % 4)


def adjust_brightness_contrast(image: tf.Tensor, brightness_delta, contrast_factor) -> tf.Tensor:
    """Scale each channel about its mean by contrast_factor, then add brightness_delta * 255."""
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    factor = tf.cast(contrast_factor, tf.float32)
    return (image - mean) * factor + mean + tf.cast(brightness_delta, tf.float32) * 255.0


def apply_augmentation(
    image,
    flip_left_right=False,
    flip_up_down=False,
    quarter_turns=0,
    brightness_delta=0.0,
    contrast_factor=1.0,
    stain_alpha=(1.0, 1.0, 1.0),
    stain_beta=(0.0, 0.0, 0.0),
) -> tf.Tensor:
    """One augmentation with explicit values; works eagerly (NumPy in) and inside tf.data.

    Order: flips and turns, stain jitter (it models the slide, so it comes before the
    camera), then brightness and contrast; the result is clipped to 0-255 float32. An odd
    number of quarter turns swaps height and width of a non-square image.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    image = flip_and_turn(image, flip_left_right, flip_up_down, quarter_turns)
    if not (_is_neutral(stain_alpha, 1.0) and _is_neutral(stain_beta, 0.0)):
        image = jitter_stains(image, stain_alpha, stain_beta)
    if not (_is_neutral(brightness_delta, 0.0) and _is_neutral(contrast_factor, 1.0)):
        image = adjust_brightness_contrast(image, brightness_delta, contrast_factor)
    return tf.clip_by_value(image, 0.0, 255.0)


# --------------------------------------------------------------------------- random draws
def _uniform(seed, half_width: float, centre: float = 0.0, shape=()) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, centre - half_width, centre + half_width)


def _coin(seed) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < 0.5


def _quarter_turns(seed, image: tf.Tensor) -> tf.Tensor:
    """0-3 turns for square images; only 0 or 2 otherwise, so the shape is kept."""
    turns = tf.random.stateless_uniform([], seed, 0, 4, dtype=tf.int32)
    shape = tf.shape(image)
    return tf.where(tf.equal(shape[0], shape[1]), turns, turns // 2 * 2)


def random_augment(image, seed, augmentation: Augmentation) -> tf.Tensor:
    """Augment one image with values drawn from ``seed`` (shape [2], int32 or int64).

    The same seed always gives the same image, in eager mode and inside ``Dataset.map``.
    Changes switched off in ``augmentation`` are left out of the graph entirely.
    """
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    if augmentation.is_identity:
        return image
    seeds = dict(zip(_DRAWS, tf.unstack(tf.random.split(tf.cast(seed, tf.int64), len(_DRAWS)))))
    values = {}
    if augmentation.flip:
        flip_seeds = tf.random.split(seeds["flip"], 2)
        values.update(flip_left_right=_coin(flip_seeds[0]), flip_up_down=_coin(flip_seeds[1]))
    if augmentation.rotate:
        values["quarter_turns"] = _quarter_turns(seeds["rotate"], image)
    if augmentation.brightness:
        values["brightness_delta"] = _uniform(seeds["brightness"], augmentation.brightness)
    if augmentation.contrast:
        values["contrast_factor"] = _uniform(seeds["contrast"], augmentation.contrast, centre=1.0)
    if augmentation.stain:
        values["stain_alpha"] = _uniform(seeds["stain_alpha"], augmentation.stain, 1.0, shape=[3])
        values["stain_beta"] = _uniform(seeds["stain_beta"], augmentation.stain, shape=[3])
    augmented = apply_augmentation(image, **values)
    # A traced rot90 with a drawn k loses the static shape; the image keeps its own.
    return tf.ensure_shape(augmented, image.shape) if image.shape.is_fully_defined() else augmented


def augmentation_examples(image, augmentation: Augmentation, n: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``n`` augmented versions of one image as uint8 arrays, for a preview figure."""
    versions = [random_augment(image, tf.constant([seed, i], tf.int64), augmentation) for i in range(n)]
    return [np.round(version.numpy()).astype(np.uint8) for version in versions]
