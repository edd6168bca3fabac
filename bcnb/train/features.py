"""The feature cache: pooled base features computed once, kept on disk, streamed back.

With the base frozen, called with ``training=False`` and no augmentation, each image always
gives the same 2,048 pooled features, so they are computed once per run. They are written
batch by batch to a ``.npy`` file and read back batch by batch while the head trains: memory
use does not grow with the number of images (8 KB of features per image stay on disk).

Each ``NAME.npy`` has a ``NAME.key.json`` beside it holding a hash of everything the features
depend on, the number of rows and a SHA-256 checksum of the file. The key is written last, so
a file from an interrupted run has no valid key and is recomputed, never read; a file changed
after it was written (same shape, other values) fails its checksum and is recomputed too.

``NAME.rows.csv`` lists the images (and tiles) the rows are of, in order. A run handed a cache
of more images (a sibling run's, of a larger table) takes its own rows from it instead of
extracting them, once the key, computed again over those listed images with this run's model
and preparation, matches: the features are then those images' under this run's base, whoever
computed them. A protocol's heads of one magnification read their rows the same way, without
the model (:func:`stored_features_of`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.pipeline import Preparation, make_dataset, tiles_of
from bcnb.model.transfer import base_of, feature_extractor, weights_digest
from bcnb.run.artifacts import ALL_FEATURES, FEATURES_DIR, SHARDS_DIR
from bcnb.run.files import replace_from_writer, write_json_atomic, write_text_atomic

DTYPE = np.dtype("<f4")
# Extraction only runs the frozen base forward, so it takes bigger batches than training:
# on a 2-core CPU, 64 images a batch run about 13% faster than 32.
EXTRACTION_BATCH = 64
# Checksums read the file in blocks: a BreakHis cache is ~65 MB, never held in memory at once.
CHECKSUM_BLOCK = 1 << 20
ABSENT = "there are no stored features"  # the one reason to compute that is not worth a note
# Why cached_features last recomputed each file over stored features, in this process:
# train.training_inputs hands back only the path, so notebook 03 asks here afterwards.
_RECOMPUTED: dict[str, str] = {}


def feature_batches(
    model: keras.Model, table: pd.DataFrame, preparation: Preparation, batch_size: int
) -> Iterator[np.ndarray]:
    """Pooled features of ``table``'s images, one (batch, 2048) array at a time, in order.

    ``predict_on_batch`` runs Keras' compiled predict step: traced once per input shape and
    dtype, and compiled by XLA where Keras turns that on by itself (TensorFlow on a GPU). On
    this project's 2-core CPU XLA measured no faster (15.8 vs 15.5 images/s), so it is left
    to Keras. The images arrive as uint8; the model casts them on entry.
    """
    extractor = feature_extractor(model)
    for images, _ in make_dataset(table, preparation, batch_size):
        images = images.numpy()
        count = len(images)
        if count < batch_size:  # pad the last batch: a new shape would trace predict again
            images = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]), images.dtype)])
        yield np.asarray(extractor.predict_on_batch(images), dtype=DTYPE)[:count]


def extract_features(
    model: keras.Model, table: pd.DataFrame, preparation: Preparation, batch_size: int
) -> np.ndarray:
    """All features of a (small) table in memory; large tables go through write_features."""
    return np.concatenate(list(feature_batches(model, table, preparation, batch_size)))


def write_features(
    model: keras.Model, table: pd.DataFrame, preparation: Preparation, batch_size: int, path: Path
) -> None:
    """Stream the features of ``table`` into the .npy file ``path`` (atomically)."""
    shape = (len(table), feature_extractor(model).output.shape[-1])

    def write(temporary: Path) -> None:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=DTYPE, shape=shape)
        start = 0
        for batch in feature_batches(model, table, preparation, batch_size):
            out[start : start + len(batch)] = batch
            start += len(batch)
        out.flush()

    replace_from_writer(path, write)


def read_features(path: str | Path, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a feature file (all of them by default), in memory; only those rows are read."""
    stored = np.load(path, mmap_mode="r")
    return np.array(stored) if rows is None else stored[np.asarray(rows, dtype=int)]


def feature_cache_key(model: keras.Model, table: pd.DataFrame, preparation: Preparation) -> str:
    """A hash of everything the features depend on: files, tiles, the preparation (image size,
    resize mode, stain normalisation's method and target), and the base: its name (backbone),
    compute precision and weights."""
    extractor = feature_extractor(model)
    base = base_of(model)
    header = preparation.cache_header(f"base={base.name}|precision={base.dtype_policy.name}")
    digest = hashlib.sha256(header.encode())
    for path, tile, tiles in zip(table["path"], *tiles_of(table)):
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{tile}/{tiles}\n".encode())
    return weights_digest(extractor.weights, digest).hexdigest()


def cached_features(
    model: keras.Model, table: pd.DataFrame, preparation: Preparation, batch_size: int, path: str | Path
) -> Path:
    """The feature file for ``table`` at ``path`` (.npy), recomputed unless its key and checksum
    match; why it was recomputed over stored features, :func:`recompute_note` says."""
    path = Path(path)
    key = feature_cache_key(model, table, preparation)
    reason = stale_reason(path, key, len(table))
    _RECOMPUTED.pop(_note_key(path), None)
    if reason is None:
        return path
    positions = _positions(_stored_rows(model, preparation, path), table) if reason != ABSENT else None
    path.with_suffix(".key.json").unlink(missing_ok=True)  # from here on, the old file is no longer trusted
    measured = {}  # the extraction's speed, when this call extracts every row itself
    shards = _complete_shards(model, table, preparation, path)
    if shards:
        _concatenate(shards, path)
    elif positions is not None:  # this run's rows of a cache of more images: nothing to extract
        _select_rows(path, positions)
    else:
        started = time.perf_counter()
        write_features(model, table, preparation, batch_size, path)
        measured = {"images_per_second": len(table) / (time.perf_counter() - started)}
    write_rows(path, table)
    write_feature_key(path, key, len(table), **measured)
    if reason != ABSENT and positions is None:
        _RECOMPUTED[_note_key(path)] = f"{path}: {reason}: recomputed"
    return path


def rows_file(path: Path) -> Path:
    """Where the images (path, tile, tiles) of a feature file's rows are listed, in order."""
    return Path(path).with_suffix(".rows.csv")


def write_rows(path: Path, table: pd.DataFrame) -> Path:
    tile, tiles = tiles_of(table)
    rows = pd.DataFrame({"path": table["path"].to_numpy(), "tile": tile, "tiles": tiles})
    return write_text_atomic(rows_file(path), rows.to_csv(index=False))


def _stored_rows(model: keras.Model, preparation: Preparation, path: Path) -> pd.DataFrame | None:
    """The images listed for the feature file at ``path``, where its key holds for them under
    this model and preparation (then its rows are their features); None otherwise."""
    try:
        rows = pd.read_csv(rows_file(path), dtype={"path": str})
        key = feature_cache_key(model, rows, preparation)  # stats every listed image: gone is stale
    except (OSError, ValueError, KeyError):
        return None
    return rows if is_current(path, key, len(rows)) else None


def _positions(stored: pd.DataFrame | None, table: pd.DataFrame) -> np.ndarray | None:
    """Where each image (and tile) of ``table`` is among the ``stored`` rows; None if one is not."""
    if stored is None:
        return None
    index = pd.MultiIndex.from_frame(stored[["path", "tile", "tiles"]])
    if not index.is_unique:
        return None
    positions = index.get_indexer(pd.MultiIndex.from_arrays([table["path"].to_numpy(), *tiles_of(table)]))
    return None if (positions < 0).any() else positions


def _select_rows(path: Path, positions: np.ndarray) -> None:
    """Replace the feature file ``path`` by its rows ``positions`` (atomically, in blocks)."""
    stored = np.load(path, mmap_mode="r")  # the old file: still readable once replaced

    def write(temporary: Path) -> None:
        out = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=DTYPE, shape=(len(positions), stored.shape[1])
        )
        for start in range(0, len(positions), EXTRACTION_BATCH * 64):
            chosen = positions[start : start + EXTRACTION_BATCH * 64]
            out[start : start + len(chosen)] = stored[chosen]
        out.flush()

    replace_from_writer(path, write)


def stored_features_of(path: str | Path, table: pd.DataFrame) -> np.ndarray:
    """The features of ``table``'s images (and tiles) from the finished cache at ``path``, in
    ``table``'s order, without the model: its rows file must list them and its checksum hold
    (its key, which needs the model, was checked when the run that wrote it used it)."""
    path = Path(path)
    stored = _stored_key(path.with_suffix(".key.json")) or {}
    try:
        positions = _positions(pd.read_csv(rows_file(path), dtype={"path": str}), table)
    except (OSError, ValueError, KeyError):
        positions = None
    whole = path.is_file() and _holds_rows(path, stored.get("rows", -1))
    if positions is None or not whole or stored.get("sha256") != file_checksum(path):
        raise ValueError(
            f"{path}: expected the finished feature cache of this run's {len(table)} rows (its "
            "rows file listing them, its checksum holding); it is absent, cut short or changed"
        )
    return read_features(path, positions)


def recompute_note(path: str | Path) -> str | None:
    """Why this process' last :func:`cached_features` of ``path`` recomputed stored features, or None."""
    return _RECOMPUTED.get(_note_key(Path(path)))


def write_feature_key(path: Path, key: str, rows: int, **measured: float) -> Path:
    """Write ``path``'s key file (key, rows, checksum of the file as it is now, and what was
    measured while computing it): the last step of a cache."""
    stored = {"key": key, "rows": rows, "sha256": file_checksum(path), **measured}
    return write_json_atomic(path.with_suffix(".key.json"), stored)


def extraction_speed(path: str | Path) -> float | None:
    """Images per second of the one pass over the images that computed the features at
    ``path`` (from disk, on the machine that ran it), as its key file keeps it; None when no
    one pass made them here (shards joined, a Dask cluster, a larger cache's rows taken) or an
    older bcnb wrote them."""
    stored = _stored_key(Path(path).with_suffix(".key.json")) or {}
    return stored.get("images_per_second")


def is_current(path: Path, key: str, rows: int) -> bool:
    """True when ``path`` holds ``rows`` rows, its key file says ``key`` and its checksum matches."""
    return stale_reason(path, key, rows) is None


def stale_reason(path: Path, key: str, rows: int) -> str | None:
    """Why the features at ``path`` cannot be used for ``key`` and ``rows`` (:data:`ABSENT` when
    there are none), or None when they can."""
    path = Path(path)
    if not path.is_file():
        return ABSENT
    if path.stat().st_size == 0:  # np.load raises EOFError on it: as good as absent
        return "the stored features were an empty file"
    stored = _stored_key(path.with_suffix(".key.json"))
    if stored is None:
        return "the stored features had no valid key file (an interrupted run?)"
    if stored.get("key") != key:
        return "the stored features were computed for other images, settings or weights"
    if not _holds_rows(path, rows):
        return f"the stored features were not a complete file of {rows} rows"
    if "sha256" not in stored:
        return "the stored features had no checksum (written by an older bcnb)"
    if stored["sha256"] != file_checksum(path):
        return "the stored features did not match their checksum"
    return None


def file_checksum(path: Path) -> str:
    """SHA-256 of the file's bytes, read in 1 MB blocks, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHECKSUM_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _note_key(path: Path) -> str:
    return str(path.resolve())


# --------------------------------------------------------------------------- shards
def shard_rows(n_rows: int, shard: int, shards: int) -> slice:
    """The contiguous rows that shard ``shard`` of ``shards`` computes."""
    return slice(n_rows * shard // shards, n_rows * (shard + 1) // shards)


def shard_path(path: Path, shard: int, shards: int) -> Path:
    """Where shard ``shard`` of ``shards`` of the feature file ``path`` is written."""
    return path.parent / SHARDS_DIR / f"{path.stem}.{shard}-of-{shards}.npy"


def _complete_shards(model, table: pd.DataFrame, preparation: Preparation, path: Path) -> list[Path]:
    """The shard files of ``path``, in order, if a whole set is there and every key matches."""
    for first_shard in sorted((path.parent / SHARDS_DIR).glob(f"{path.stem}.0-of-*.npy")):
        shards = int(first_shard.stem.rsplit("-of-", 1)[1])
        parts = [shard_path(path, shard, shards) for shard in range(shards)]
        rows = [table.iloc[shard_rows(len(table), shard, shards)] for shard in range(shards)]
        keys = [feature_cache_key(model, part, preparation) for part in rows]
        if all(is_current(part, key, len(r)) for part, key, r in zip(parts, keys, rows)):
            return parts
    return []


def _concatenate(parts: list[Path], path: Path) -> None:
    """Join feature files row-wise into ``path`` (atomically)."""
    stored = [np.load(part, mmap_mode="r") for part in parts]
    shape = (sum(len(part) for part in stored), stored[0].shape[1])

    def write(temporary: Path) -> None:
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=DTYPE, shape=shape)
        start = 0
        for part in stored:
            out[start : start + len(part)] = part
            start += len(part)
        out.flush()

    replace_from_writer(path, write)


def extract_shard(cfg: Config, model: keras.Model, split: pd.DataFrame, shard: int, shards: int) -> Path:
    """Stage entry point for ``bcnb extract --shard I/N``: this process' share of all.npy."""
    path = shard_path(Path(cfg.run_dir) / FEATURES_DIR / ALL_FEATURES, shard, shards)
    rows = split.iloc[shard_rows(len(split), shard, shards)]
    batch_size = max(cfg.batch_size, EXTRACTION_BATCH)
    return cached_features(model, rows, Preparation.from_run(cfg), batch_size, path)


def _holds_rows(path: Path, rows: int) -> bool:
    """True when ``path`` is a complete feature file of ``rows`` rows (not cut short)."""
    try:
        return np.load(path, mmap_mode="r").shape[0] == rows
    except (OSError, ValueError, EOFError):  # absent, empty, or shorter than its header says
        return False


def _stored_key(key_path: Path) -> dict | None:
    """The key file's fields, or None when it is absent or damaged (then there is no cache)."""
    try:
        stored = json.loads(key_path.read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and "key" in stored else None


def feature_file(cfg: Config, model: keras.Model, split: pd.DataFrame) -> Path:
    """Stage entry point: the cached features of every image of the split table, in its
    row order, as run_dir/features/all.npy (one pass over the images for all splits)."""
    path = Path(cfg.run_dir) / FEATURES_DIR / ALL_FEATURES
    batch_size = max(cfg.batch_size, EXTRACTION_BATCH)
    return cached_features(model, split, Preparation.from_run(cfg), batch_size, path)
