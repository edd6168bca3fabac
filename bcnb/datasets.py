"""Stage 1, data: find the images, check them, split them by patient, stream them.

The result of loading is an *image table*: one row per image with its ``path`` (absolute),
``label`` ("benign" or "malignant"), ``patient_id`` and ``magnification``. Everything later
(the split, the montage, the tf.data pipeline) works from that table. The layouts live in
:mod:`bcnb.layouts`, the scan for bad files in :mod:`bcnb.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.files import read_run_json, write_json_atomic, write_text_atomic
from bcnb.images import load_for_model, read_rgb
from bcnb.layouts import CLASSES, TABLE_COLUMNS, read_layout
from bcnb.scan import find_bad_images, scan_memory, split_bad
from bcnb.stain import (
    SKIPPED_FILE,
    TARGET_SAMPLE,
    StainFitError,
    StainNormalizer,
    load_normalizer,
    median_target,
    save_normalizer,
)
from bcnb.subtypes import MALIGNANT_TYPES, SUBTYPE_NAMES, SUBTYPES, subtype_code, targets_of
from bcnb.synthetic import SyntheticSpec, ensure_synthetic_dataset

SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.csv"
DATASET_FILE = "dataset.json"


@dataclass
class LoadedDataset:
    """The usable images of a dataset, the files left out, and how it was read."""

    table: pd.DataFrame  # one row per image (per tile when tiling)
    bad: pd.DataFrame  # path, problem: files found unusable by the scan
    layout: str
    source: Path
    notes: list[str]  # what the reader decided, in words for the notebook and report
    patient_level: bool  # False when the layout has no patient ids


# --------------------------------------------------------------------------- loading
def load_dataset(cfg: Config) -> LoadedDataset:
    """Stage entry point: read the layout, select and sample, scan every file, tile."""
    source = dataset_path(cfg)
    found = read_layout(source, cfg.layout, cfg.positive_class, cfg.patient_pattern, cfg.patient_id_from)
    images, strays = _images_and_strays(found.table)
    images = select_magnification(images, cfg.magnification, source)
    if cfg.split_file:  # only the images the fold file lists; those it lists but we lack are bad
        images, missing = listed_in_fold_file(images, cfg.split_file)
        strays = pd.concat([strays, missing], ignore_index=True)
    images = sample_images(images, cfg.max_images, cfg.seed)
    scanned = find_bad_images(pd.concat([images, strays]), remember=scan_memory(source))
    table, bad = split_bad(scanned, cfg.on_bad_image, source)
    check_both_classes(table, source)
    if cfg.task == "subtype":
        table = with_subtypes(table, source)
    tiled = expand_tiles(table, cfg.tiles_per_image).reset_index(drop=True)
    return LoadedDataset(tiled, bad, found.layout, source, found.notes, found.patient_level)


def listed_in_fold_file(images: pd.DataFrame, split_file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images a fold file lists, and rows (with a problem) for the listed files not found."""
    from bcnb.folds import read_fold_file

    listed = set(read_fold_file(split_file)["file"])
    names = images["path"].map(lambda path: Path(path).name)
    missing = sorted(listed - set(names))
    why = f"listed in {Path(split_file).name}, not found in the dataset"
    rows = pd.DataFrame({"path": missing, "label": "", "patient_id": "", "magnification": "", "problem": why})
    return images[names.isin(listed)], rows


def split_for_run(cfg: Config, table: pd.DataFrame) -> pd.DataFrame:
    """Stage entry point: the table with its ``split``, by patient: fold ``fold`` of ``folds``,
    a BreakHis fold file, or val_fraction and test_fraction of the images."""
    from bcnb import folds

    by = "subtype" if cfg.task == "subtype" else "label"  # what each split must hold its share of
    if cfg.folds:
        return folds.split_for_fold(table, cfg.folds, cfg.fold, cfg.val_fraction, cfg.seed, by)
    if cfg.split_file:
        return folds.split_from_fold_file(table, cfg.split_file, cfg.val_fraction, cfg.seed, by)
    return split_by_patient(table, cfg.val_fraction, cfg.test_fraction, cfg.seed, by)


def save_dataset_info(dataset: LoadedDataset, run_dir: str | Path) -> Path:
    """dataset.json: where the images came from, the layout, what the reader decided."""
    info = {
        "source": str(dataset.source),
        "layout": dataset.layout,
        "notes": dataset.notes,
        "patient_level": dataset.patient_level,
        "n_images": int(dataset.table["path"].nunique()),
        "n_bad_files": len(dataset.bad),
    }
    return write_json_atomic(Path(run_dir) / DATASET_FILE, info)


def load_dataset_info(run_dir: str | Path) -> dict:
    return read_run_json(run_dir, DATASET_FILE, "01_data")


def _images_and_strays(candidates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Files the layout recognised as images, and stray files it did not (no label)."""
    is_stray = candidates["label"] == ""
    return candidates[~is_stray], candidates[is_stray]


def dataset_path(cfg: Config) -> Path:
    """The dataset's folder or manifest; the built-in dataset is generated on first use."""
    if cfg.dataset == "synthetic":
        spec = SyntheticSpec(
            patients=cfg.synthetic_patients,
            images_per_patient=cfg.synthetic_images_per_patient,
            difficulty=cfg.synthetic_difficulty,
        )
        return ensure_synthetic_dataset(spec)
    path = Path(cfg.dataset).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"dataset: {path} does not exist (expected a folder or a .csv file)")
    return path


def select_magnification(table: pd.DataFrame, magnification: str, source: Path) -> pd.DataFrame:
    """Keep one magnification, or all of them for ``"all"``."""
    if magnification == "all":
        return table
    kept = table[table["magnification"] == magnification]
    if kept.empty:
        found = ", ".join(sorted(table["magnification"].unique()))
        raise ValueError(f"magnification: no {magnification} images in {source} (found {found})")
    return kept


def sample_images(table: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most ``max_images`` images, drawn in proportion from each class (0 keeps all)."""
    if max_images == 0 or max_images >= len(table):
        return table
    fraction = max_images / len(table)
    return table.groupby("label", group_keys=False).sample(frac=fraction, random_state=seed)


def check_both_classes(table: pd.DataFrame, source: Path) -> None:
    found = set(table["label"])
    if not found:
        raise ValueError(f"dataset: {source} has no usable images left")
    if found != set(CLASSES):
        only = ", ".join(sorted(found))
        raise ValueError(f"dataset: {source} has only {only} images; need both benign and malignant")


def expand_tiles(table: pd.DataFrame, tiles_per_image: int) -> pd.DataFrame:
    """One row per tile (columns ``tile`` and ``tiles``); unchanged when tiling is off.

    Tiles keep their image's patient, so the patient-level split keeps them together.
    """
    if tiles_per_image == 0:
        return table
    tiled = table.loc[table.index.repeat(tiles_per_image)].copy()
    tiled["tile"] = np.tile(np.arange(tiles_per_image), len(table))
    tiled["tiles"] = tiles_per_image
    return tiled


# --------------------------------------------------------------------------- split
def split_by_patient(
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, by: str = "label"
) -> pd.DataFrame:
    """Add a ``split`` column: train/val/test by patient, stratified by class (``by="label"``)
    or by tumour type (``by="subtype"``, see :func:`patient_strata`).

    Images of one patient are near-duplicates, so every patient's images go to one split;
    an image-level split would let the model recognise patients instead of tumours.
    Within each class, patients are shuffled and each goes to the split furthest below its
    share of that class' images.
    """
    shares = {"test": test_fraction, "val": val_fraction, "train": 1 - val_fraction - test_fraction}
    rng = np.random.default_rng(seed)
    images_per_patient = table.groupby("patient_id").size().sort_index()
    assignment: dict[str, str] = {}
    for label, patients in patient_strata(table, len(SPLITS), by).items():
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        assignment.update(assign_patients(shuffled, images_per_patient[patients], shares, label))
    return table.assign(split=table["patient_id"].map(assignment))


def patient_strata(table: pd.DataFrame, parts: int, by: str = "label") -> dict[str, list[str]]:
    """Patients grouped by class (or tumour type), to deal each group out across ``parts`` splits.

    A patient with images of both classes (IDC patches) counts under its majority class. If
    that leaves a class with fewer patients than parts, all patients are dealt out as one
    group: every split still gets whole patients, and image counts still follow the shares.
    By tumour type, a type with fewer patients than parts joins the other rare types of its
    class (see :func:`rare_types`), since it cannot reach every split.
    """
    if by == "subtype":
        return subtype_strata(table, parts)
    patient_class = table.groupby("patient_id")["label"].agg(lambda labels: labels.mode().max())
    strata = {label: sorted(group.index) for label, group in patient_class.groupby(patient_class)}
    mixed = (table.groupby("patient_id")["label"].nunique() > 1).any()
    if mixed and min(len(patients) for patients in strata.values()) < parts:
        return {"all classes": sorted(patient_class.index)}
    return strata


def assign_patients(patients, images_per_patient, shares, label) -> dict[str, str]:
    """Deal shuffled ``patients`` out to the splits of ``shares`` (split: share of images)."""
    wanted = [split for split, share in shares.items() if share > 0]
    if len(patients) < len(wanted):
        raise ValueError(
            f"split: {label} has {len(patients)} patient(s); a patient-level split into "
            f"{'/'.join(wanted)} needs at least {len(wanted)}"
        )
    total = images_per_patient.sum()
    filled = dict.fromkeys(shares, 0)
    assignment = {}
    # Every wanted split gets one patient first, so none is left without this class.
    for split, patient in zip(wanted, patients):
        assignment[patient] = split
        filled[split] += images_per_patient[patient]
    for patient in patients[len(wanted) :]:
        split = max(wanted, key=lambda s: shares[s] * total - filled[s])
        assignment[patient] = split
        filled[split] += images_per_patient[patient]
    return assignment


def subtype_strata(table: pd.DataFrame, parts: int) -> dict[str, list[str]]:
    """Patients by tumour type; the types with fewer than ``parts`` patients pooled by class
    (and the pool joined to its class' largest type if it is still too small)."""
    patient_type = table.groupby("patient_id")["subtype"].first()
    strata = {code: sorted(group.index) for code, group in patient_type.groupby(patient_type)}
    for label in CLASSES:
        rare = [
            code for code, patients in strata.items() if len(patients) < parts and _class_of(code) == label
        ]
        pooled = sorted(p for code in rare for p in strata.pop(code))
        if not pooled:
            continue
        same_class = [code for code in strata if _class_of(code) == label]
        if len(pooled) >= parts or not same_class:
            strata[f"rare {label} types"] = pooled
        else:
            strata[max(same_class, key=lambda code: len(strata[code]))] += pooled
    return strata


def rare_types(table: pd.DataFrame, parts: int) -> list[str]:
    """One line per tumour type with too few patients to reach each of ``parts`` splits."""
    counts = table.groupby("subtype")["patient_id"].nunique()
    counts = counts.reindex([code for code in SUBTYPES if code in counts.index])  # benign types first
    return [
        f"task=subtype: {SUBTYPE_NAMES[code]} has {count} patient(s), too few for one in each of "
        f"{parts} splits: some splits will have none (it is stratified with the other rare types)"
        for code, count in counts.items()
        if count < parts
    ]


def _class_of(code: str) -> str:
    return CLASSES[1] if code in MALIGNANT_TYPES else CLASSES[0]


def with_subtypes(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The table with each image's tumour type as a BreakHis code; one line naming the
    problem where the dataset has no types, or a type that contradicts its label."""
    if "subtype" not in table or (table["subtype"].astype(str).str.strip() == "").any():
        raise ValueError(
            f"task=subtype: {source} has no tumour type for every image "
            "(expected BreakHis file names or a 'subtype' column in a CSV manifest)"
        )
    codes = table["subtype"].map(lambda value: subtype_code(value, f"task=subtype: {source}"))
    clash = table[codes.map(_class_of) != table["label"]]
    if len(clash):
        row = clash.iloc[0]
        raise ValueError(
            f"task=subtype: {row['path']} is labelled {row['label']} but its type is {row['subtype']}"
        )
    return table.assign(subtype=codes)


def save_split(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write the split manifest: one row per image (per tile, when tiling) with its split."""
    columns = TABLE_COLUMNS + (["subtype"] if "subtype" in table else [])
    columns += (["tile", "tiles"] if "tiles" in table else []) + ["split"]
    return write_text_atomic(Path(run_dir) / SPLIT_FILE, table[columns].to_csv(index=False))


def load_split(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 01_data (or bcnb reproduce) first")
    return pd.read_csv(path, dtype={"patient_id": str})


def summarize_split(table: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per split and class, in split order."""
    in_order = table.assign(split=pd.Categorical(table["split"], categories=SPLITS, ordered=True))
    return (
        in_order.groupby(["split", "label"], observed=True)
        .agg(images=("path", "nunique"), patients=("patient_id", "nunique"))
        .reset_index()
        .astype({"split": str})
    )


def magnification_order(names) -> list[str]:
    """Magnifications from lowest to highest (40X before 100X), unknown ones last."""

    def power(name: str) -> float:
        digits = name.rstrip("Xx")
        return float(digits) if digits.isdigit() else float("inf")

    return sorted(set(names), key=power)


def count_images(table: pd.DataFrame) -> pd.DataFrame:
    """Images per class and magnification, with the number of patients per class."""
    counts = table.pivot_table(
        index="label", columns="magnification", values="path", aggfunc="nunique", fill_value=0
    )
    counts = counts[magnification_order(counts.columns)]
    counts["images"] = counts.sum(axis=1)
    counts["patients"] = table.groupby("label")["patient_id"].nunique()
    return counts


# --------------------------------------------------------------------------- images
def read_image(path: str | Path) -> np.ndarray:
    """One image as an RGB uint8 array (for display; training streams through tf.data)."""
    return read_rgb(path)


def load_images(cfg: Config, table: pd.DataFrame) -> np.ndarray:
    """A few of ``table``'s images (or tiles) in memory, as the model takes them: for figures."""
    stain = stain_normalizer(cfg)
    return np.stack(
        [
            load_for_model(path, cfg.img_size, cfg.resize, int(tiles), int(tile), stain)
            for path, tile, tiles in zip(table["path"], *tiles_of(table))
        ]
    )


def labels_of(table: pd.DataFrame) -> np.ndarray:
    """0 for benign, 1 for malignant."""
    return (table["label"] == CLASSES[1]).to_numpy(dtype=np.float32)


def tiles_of(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's tile number and tiles per image; (0, 0) means the whole image."""
    zeros = np.zeros(len(table), dtype=np.int64)
    if "tiles" not in table:
        return zeros, zeros
    return table["tile"].to_numpy(dtype=np.int64), table["tiles"].to_numpy(dtype=np.int64)


def make_dataset(
    table: pd.DataFrame,
    img_size: int,
    batch_size: int,
    resize: str = "squash",
    stain: StainNormalizer | None = None,
    task: str = "binary",
):
    """A tf.data pipeline of (image, label) batches in table order; images are uint8,
    img_size square (for feature extraction and evaluation; training uses
    :class:`bcnb.train.ImageBatches`, whose order changes with the epoch).

    Files are decoded in parallel (Pillow, so any common format and mode works) and
    prefetched, so nothing holds the whole dataset in memory. The model scales pixels
    itself, so the pipeline only converts to RGB and resizes or tiles.
    """
    import tensorflow as tf

    labels = targets_of(table, task).reshape(-1, 1)
    tile, tiles = tiles_of(table)
    ds = tf.data.Dataset.from_tensor_slices(((table["path"].to_numpy(dtype=str), tile, tiles), labels))

    def load(path, tiles, tile):
        return load_for_model(path.decode(), img_size, resize, int(tiles), int(tile), stain)

    def load_batch_item(source, label):
        path, tile, tiles = source
        image = tf.numpy_function(load, [path, tiles, tile], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (img_size, img_size, 3)), label

    ds = ds.map(load_batch_item, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def image_dataset(cfg: Config, table: pd.DataFrame):
    """Stage entry point: the pipeline of ``table``'s images with cfg's size, resize and batch."""
    return make_dataset(table, cfg.img_size, cfg.batch_size, cfg.resize, stain_normalizer(cfg), cfg.task)


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
    write_text_atomic(Path(cfg.run_dir) / SKIPPED_FILE, skipped.to_csv(index=False))
    return normalizer, skipped


def stain_target_parameters(cfg: Config) -> dict:
    """The parameters of the ``stain_target`` image, prepared as model inputs are; a file
    that cannot be read or fitted raises ValueError naming it."""
    path = Path(cfg.stain_target).expanduser()
    try:
        pixels = load_for_model(path, cfg.img_size, cfg.resize)
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
    for path, tile, tiles in zip(table["path"], *tiles_of(table)):
        yield load_for_model(path, cfg.img_size, cfg.resize, int(tiles), int(tile))


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
