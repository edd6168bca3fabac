"""Stain normalisation: every image's colours mapped onto one target's, before the base.

Slides stained in another lab, on another day or scanned by another scanner differ in colour
more than in anything a classifier should care about. Normalisation removes part of that
difference; augmentation (``augment_stain``, notebook 03) instead teaches the model to ignore
it. Two classic methods, written on NumPy:

- **Reinhard** (Reinhard et al., "Color transfer between images", IEEE CG&A 21(5), 2001):
  convert to the decorrelated l-alpha-beta colour space (Ruderman et al., 1998) and give each
  channel the target's mean and standard deviation.
- **Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative
  analysis", ISBI 2009): estimate the haematoxylin and eosin directions in optical density
  from the tissue's pixels, unmix each pixel into the two stain amounts, rescale the amounts
  to the target's 99th percentiles and remix them with the target's stain colours.

An image where a method cannot be fitted (no tissue, a single flat colour, one stain only) is
kept as it is, and its reason is returned, never raised: a few empty fields must not stop a
run. The target is fitted either on one image (``stain_target``) or, by default, on the
training split (the median of its images' parameters): never on validation or test images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bcnb.run.artifacts import STAIN_TARGET_FILE

# Macenko et al.'s rule: a pixel is tissue when its optical density exceeds 0.15 in every
# channel (background glass transmits nearly all light: density near 0).
TISSUE_DENSITY = 0.15
MIN_TISSUE_SHARE = 0.01  # below 1% tissue pixels the image is treated as empty
ANGLE_PERCENTILE = 1.0  # Macenko's robust extremes: the 1st and 99th percentile angles
CONCENTRATION_PERCENTILE = 99.0
TARGET_SAMPLE = 64  # training images whose parameters make the default target (their median)

# Reinhard et al.'s matrices: RGB to LMS cone space, and log-LMS to l-alpha-beta.
RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)


class StainFitError(ValueError):
    """This image cannot be fitted by this method; the message says why."""


# --------------------------------------------------------------------------- colour spaces
def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Beer-Lambert optical density of 8-bit RGB: -ln((I + 1) / 256); white glass is 0."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)


def from_optical_density(density: np.ndarray) -> np.ndarray:
    """8-bit RGB of an optical density (the inverse of :func:`optical_density`), clipped."""
    return np.clip(np.round(256.0 * np.exp(-density) - 1.0), 0, 255).astype(np.uint8)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB to Reinhard's l-alpha-beta; (I + 1) / 256 keeps the logarithm finite."""
    lms = (np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0 @ RGB_TO_LMS.T
    return np.log10(lms) @ LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_lab`, rounded and clipped to 8-bit RGB."""
    lms = 10.0 ** (np.asarray(lab) @ np.linalg.inv(LMS_TO_LAB).T)
    rgb = 256.0 * (lms @ np.linalg.inv(RGB_TO_LMS).T) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """The optical densities (n, 3) of the pixels that are tissue; raises on an empty field."""
    density = optical_density(rgb).reshape(-1, 3)
    tissue = density[(density > TISSUE_DENSITY).all(axis=1)]
    if len(tissue) < MIN_TISSUE_SHARE * len(density) or len(tissue) < 2:
        share = len(tissue) / max(len(density), 1)
        raise StainFitError(
            f"no tissue ({share:.1%} of pixels stained; at least {MIN_TISSUE_SHARE:.0%} needed)"
        )
    return tissue


# --------------------------------------------------------------------------- Reinhard
def reinhard_parameters(rgb: np.ndarray) -> dict:
    """Mean and standard deviation of each l-alpha-beta channel over the whole image."""
    tissue_pixels(rgb)  # an empty field has nothing to match
    lab = rgb_to_lab(rgb).reshape(-1, 3)
    std = lab.std(axis=0)
    if (std < 1e-6).any():
        raise StainFitError("a single flat colour (no spread to match)")
    return {"mean": lab.mean(axis=0).tolist(), "std": std.tolist()}


def reinhard_transform(rgb: np.ndarray, source: dict, target: dict) -> np.ndarray:
    lab = rgb_to_lab(rgb)
    scale = np.asarray(target["std"]) / np.asarray(source["std"])
    return lab_to_rgb((lab - source["mean"]) * scale + target["mean"])


# --------------------------------------------------------------------------- Macenko
def macenko_parameters(rgb: np.ndarray) -> dict:
    """The stain matrix (haematoxylin row first, unit optical-density vectors) and each
    stain's 99th-percentile amount."""
    tissue = tissue_pixels(rgb)
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, [2, 1]]  # the two directions of largest spread
    plane *= np.where(plane[0] < 0, -1.0, 1.0)  # point both into positive density
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    if high - low < 1e-3:
        raise StainFitError("one stain only (the tissue's colours lie on one line)")
    extremes = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (low, high)]
    # Haematoxylin absorbs more red light than eosin does: its vector has the larger red part.
    stains = np.array(extremes if extremes[0][0] > extremes[1][0] else extremes[::-1])
    amounts = stain_amounts(rgb, stains)
    top = np.percentile(amounts, CONCENTRATION_PERCENTILE, axis=0)
    if (top <= 1e-6).any():
        raise StainFitError("one stain only (the other's amount is zero)")
    return {"stains": stains.tolist(), "max_amounts": top.tolist()}


def stain_amounts(rgb: np.ndarray, stains) -> np.ndarray:
    """Each pixel's amount of each stain (n, 2): least squares on optical density."""
    density = optical_density(rgb).reshape(-1, 3)
    amounts, *_ = np.linalg.lstsq(np.asarray(stains).T, density.T, rcond=None)
    return amounts.T


def macenko_transform(rgb: np.ndarray, source: dict, target: dict) -> np.ndarray:
    amounts = stain_amounts(rgb, source["stains"])
    amounts *= np.asarray(target["max_amounts"]) / np.asarray(source["max_amounts"])
    density = amounts @ np.asarray(target["stains"])
    return from_optical_density(density).reshape(np.shape(rgb))


METHODS = {
    "reinhard": (reinhard_parameters, reinhard_transform),
    "macenko": (macenko_parameters, macenko_transform),
}


# --------------------------------------------------------------------------- normaliser
@dataclass(frozen=True)
class StainNormalizer:
    """One method with its fitted target: maps an image's colours onto the target's."""

    method: str
    target: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"stain_normalization: expected one of {', '.join(METHODS)}, got {self.method!r}"
            )

    def fit(self, rgb: np.ndarray) -> dict:
        """This method's parameters of ``rgb``; raises StainFitError where it cannot."""
        return METHODS[self.method][0](rgb)

    def apply(self, rgb: np.ndarray) -> tuple[np.ndarray, str]:
        """(normalised uint8 image, ""), or (the image unchanged, why) where it cannot be fitted."""
        try:
            source = self.fit(rgb)
        except StainFitError as error:
            return np.asarray(rgb, dtype=np.uint8), str(error)
        return METHODS[self.method][1](rgb, source, self.target), ""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.apply(rgb)[0]

    def key(self) -> str:
        """A short hash of method and target: part of the feature cache's key."""
        text = json.dumps({"method": self.method, "target": self.target}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def median_target(method: str, images) -> tuple[dict, list[str]]:
    """The element-wise median of the parameters of ``images`` (arrays), and one reason per
    image that could not be fitted ("" where it could)."""
    normalizer = StainNormalizer(method)
    fitted, reasons = [], []
    for rgb in images:
        try:
            fitted.append(normalizer.fit(rgb))
            reasons.append("")
        except StainFitError as error:
            reasons.append(str(error))
    if not fitted:
        raise ValueError(f"stain_target: none of the {len(reasons)} images could be fitted ({reasons[0]})")
    target = {name: np.median([f[name] for f in fitted], axis=0) for name in fitted[0]}
    if method == "macenko":  # a median of unit vectors is shorter than one: unit length again
        target["stains"] = target["stains"] / np.linalg.norm(target["stains"], axis=1, keepdims=True)
    return {name: value.tolist() for name, value in target.items()}, reasons


def save_normalizer(normalizer: StainNormalizer, run_dir: str | Path, fitted_on: str) -> Path:
    from bcnb.run.files import write_json_atomic

    record = {"method": normalizer.method, "target": normalizer.target, "fitted_on": fitted_on}
    return write_json_atomic(Path(run_dir) / STAIN_TARGET_FILE, record)


def load_normalizer(run_dir: str | Path, method: str) -> StainNormalizer | None:
    """The run's fitted normaliser (None for method "none"); its file must be there."""
    if method == "none":
        return None
    path = Path(run_dir) / STAIN_TARGET_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run notebook 01_data first (stain_normalization={method})"
        )
    record = json.loads(path.read_text())
    if record["method"] != method:
        raise ValueError(f"{path}: fitted for {record['method']}, but stain_normalization={method}")
    return StainNormalizer(record["method"], record["target"])
