"""What the model is fed: each image prepared (size, resize or tiles, stain normalisation) and
streamed in batches.

The model scales pixels itself, so preparing an image means decoding it to RGB, fitting it
to ``img_size`` (squashed, centre-cropped or cut into tiles) and, where the run normalises
stains, mapping its colours onto the run's stain target, fitted by notebook 01 on training
images only. A :class:`Preparation` holds those choices, built once per run and handed to
whatever reads images: the pipeline, training batches, feature extraction, bcnb predict.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.images import load_for_model
from bcnb.data.stain import (
    TARGET_SAMPLE,
    StainFitError,
    StainNormalizer,
    load_normalizer,
    median_target,
    save_normalizer,
)
from bcnb.data.tasks import BINARY, Task, task_named
from bcnb.run.artifacts import STAIN_SKIPPED_FILE
from bcnb.run.files import write_text_atomic


@dataclass(frozen=True)
class Preparation:
    """How a run turns an image file into a model input: its size, squashed or centre-cropped
    (a table's rows say which tile, where the run cuts tiles), and its stain normalisation."""

    img_size: int
    resize: str = "squash"
    stain: StainNormalizer | None = None  # the run's fitted normaliser; None: as scanned

    @classmethod
    def from_run(cls, cfg: Config) -> Preparation:
        """The run's preparation: cfg's size and resize, and the stain target notebook 01 fitted."""
        return cls(cfg.img_size, cfg.resize, stain_normalizer(cfg))

    def prepare(self, path: str | Path, tiles: int = 0, tile: int = 0) -> np.ndarray:
        """One model input: uint8 (img_size, img_size, 3) pixels of the file (or of one tile)."""
        return load_for_model(path, self.img_size, self.resize, int(tiles), int(tile), self.stain)

    def inputs_of(self, table: pd.DataFrame) -> Iterator[np.ndarray]:
        """``table``'s model inputs, one row (image or tile) at a time, in order."""
        for path, tile, tiles in zip(table["path"], *tiles_of(table)):
            yield self.prepare(path, tiles, tile)

    def cache_header(self, base: str) -> str:
        """This preparation's part of the feature-cache key, around ``base`` (the base's part)."""
        header = f"img_size={self.img_size}|resize={self.resize}|{base}"
        if self.stain is not None:  # absent otherwise, so caches made before normalisation existed stay valid
            header += f"|stain={self.stain.method}:{self.stain.key()}"
        return header


def load_images(cfg: Config, table: pd.DataFrame) -> np.ndarray:
    """A few of ``table``'s images (or tiles) in memory, as the model takes them: for figures."""
    return np.stack(list(Preparation.from_run(cfg).inputs_of(table)))


def labels_of(table: pd.DataFrame) -> np.ndarray:
    """0 for benign, 1 for malignant: what every task's probability of malignancy is measured on."""
    return BINARY.targets_of(table)


def tiles_of(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's tile number and tiles per image; (0, 0) means the whole image."""
    zeros = np.zeros(len(table), dtype=np.int64)
    if "tiles" not in table:
        return zeros, zeros
    return table["tile"].to_numpy(dtype=np.int64), table["tiles"].to_numpy(dtype=np.int64)


def make_dataset(table: pd.DataFrame, preparation: Preparation, batch_size: int, task: Task = BINARY):
    """A tf.data pipeline of (image, label) batches in table order; images are uint8,
    img_size square (for feature extraction and evaluation; training uses
    :class:`bcnb.train.fit.ImageBatches`, whose order changes with the epoch).

    Files are decoded in parallel (Pillow, so any common format and mode works) and
    prefetched, so nothing holds the whole dataset in memory. The model scales pixels
    itself, so the pipeline only converts to RGB and resizes or tiles.
    """
    import tensorflow as tf

    labels = task.targets_of(table).reshape(-1, 1)
    tile, tiles = tiles_of(table)
    ds = tf.data.Dataset.from_tensor_slices(((table["path"].to_numpy(dtype=str), tile, tiles), labels))

    def load(path, tiles, tile):
        return preparation.prepare(path.decode(), tiles, tile)

    def load_batch_item(source, label):
        path, tile, tiles = source
        image = tf.numpy_function(load, [path, tiles, tile], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (preparation.img_size, preparation.img_size, 3)), label

    ds = ds.map(load_batch_item, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def image_dataset(cfg: Config, table: pd.DataFrame):
    """Stage entry point: the pipeline of ``table``'s images with cfg's size, resize and batch."""
    return make_dataset(table, Preparation.from_run(cfg), cfg.batch_size, task_named(cfg.task))


# --------------------------------------------------------------------------- stain normalisation
def stain_normalizer(cfg: Config) -> StainNormalizer | None:
    """The run's fitted stain normaliser (notebook 01 fits it); None without normalisation."""
    return load_normalizer(cfg.run_dir, cfg.stain_normalization)


def fit_stain_normalizer(cfg: Config, split: pd.DataFrame) -> tuple[StainNormalizer | None, pd.DataFrame]:
    """Stage entry point: fit the stain target (``stain_target``, or the median of up to 64
    training images), save it as stain_target.json, and list every image of the split the
    method cannot fit (kept unnormalised) in stain_skipped.csv. Never looks at val or test
    images to choose the target."""
    if cfg.stain_normalization == "none":
        return None, pd.DataFrame(columns=["path", "split", "reason"])
    if cfg.stain_target:
        target, fitted_on = stain_target_parameters(cfg), f"the image {cfg.stain_target}"
    else:
        train = split[split["split"] == "train"]
        sample = train.sample(min(len(train), TARGET_SAMPLE), random_state=cfg.seed)
        target, reasons = median_target(cfg.stain_normalization, _raw_inputs(cfg, sample))
        fitted_on = f"the median of {len(sample) - sum(map(bool, reasons))} training images"
    normalizer = StainNormalizer(cfg.stain_normalization, target)
    save_normalizer(normalizer, cfg.run_dir, fitted_on)
    reasons = [normalizer.apply(image)[1] for image in _raw_inputs(cfg, split)]
    skipped = split.assign(reason=reasons)[lambda t: t["reason"] != ""][["path", "split", "reason"]]
    write_text_atomic(Path(cfg.run_dir) / STAIN_SKIPPED_FILE, skipped.to_csv(index=False))
    return normalizer, skipped


def stain_target_parameters(cfg: Config) -> dict:
    """The parameters of the ``stain_target`` image, prepared as model inputs are; a file
    that cannot be read or fitted raises ValueError naming it."""
    path = Path(cfg.stain_target).expanduser()
    try:
        pixels = Preparation(cfg.img_size, cfg.resize).prepare(path)
    except Exception as error:  # Pillow raises several kinds for a file that is no image
        reason = getattr(error, "strerror", None) or error.__class__.__name__
        raise ValueError(f"stain_target: {path} is not a readable image ({reason})") from None
    try:
        return StainNormalizer(cfg.stain_normalization).fit(pixels)
    except StainFitError as error:
        raise ValueError(
            f"stain_target: {path} cannot be fitted by {cfg.stain_normalization} ({error})"
        ) from None


def _raw_inputs(cfg: Config, table: pd.DataFrame):
    """``table``'s model inputs before any stain normalisation, one at a time."""
    return Preparation(cfg.img_size, cfg.resize).inputs_of(table)


def stain_preview(
    cfg: Config, split: pd.DataFrame, normalizer: StainNormalizer | None, count: int = 4
) -> dict:
    """A few training images as scanned and after each method (the run's own where it uses
    one, else fitted for the preview on 16 training images): rows of a figure."""
    train = split[split["split"] == "train"]
    sample = list(_raw_inputs(cfg, train.sample(min(len(train), 16), random_state=cfg.seed)))
    shown = sample[:count]
    rows = {"as scanned": shown}
    for method in ("reinhard", "macenko"):
        if normalizer is not None and normalizer.method == method:
            rows[f"{method}: this run's target"] = [normalizer(image) for image in shown]
        else:
            preview = StainNormalizer(method, median_target(method, sample)[0])
            rows[f"{method}: onto a training median"] = [preview(image) for image in shown]
    return rows
