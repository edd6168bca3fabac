"""Stage 1, data: find the images, label them, split them by patient, stream them.

The result of loading is an *image table*: one row per image with its ``path`` (absolute),
``label`` ("benign" or "malignant"), ``patient_id`` and ``magnification``. Everything later
(the split, the montage, the tf.data pipeline) works from that table.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.files import write_text_atomic
from bcnb.images import load_for_model, read_rgb
from bcnb.synthetic import SyntheticSpec, ensure_synthetic_dataset

CLASSES = ("benign", "malignant")  # index 1, malignant, is the positive class
TABLE_COLUMNS = ["path", "label", "patient_id", "magnification"]
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.csv"

# BreakHis file names, e.g. SOB_B_A-14-22549AB-40-001.png: procedure (SOB), class (B or M),
# tumour subtype, year-slide (the patient), magnification, image number.
BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]+)-(?P<patient>\d+-[0-9A-Z]+)-"
    r"(?P<magnification>40|100|200|400)-(?P<number>\d+)\.png$",
    re.IGNORECASE,
)
LABEL_WORDS = {"benign": "benign", "b": "benign", "0": "benign",
               "malignant": "malignant", "m": "malignant", "1": "malignant"}  # fmt: skip


# --------------------------------------------------------------------------- loading
def load_image_table(cfg: Config) -> pd.DataFrame:
    """Load the image table for ``cfg``: the dataset, its layout, magnification, sampling."""
    root = dataset_path(cfg)
    layout = detect_layout(root) if cfg.layout == "auto" else cfg.layout
    table = read_breakhis(root) if layout == "breakhis" else read_manifest(root)
    table = select_magnification(table, cfg.magnification, source=root)
    table = sample_images(table, cfg.max_images, cfg.seed)
    check_both_classes(table, source=root)
    return expand_tiles(table, cfg.tiles_per_image).reset_index(drop=True)


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


def detect_layout(path: Path) -> str:
    """'csv' for a manifest file, 'breakhis' for a folder holding BreakHis-named images."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"dataset: {path} is a file but not a .csv manifest")
    if any(BREAKHIS_NAME.match(p.name) for p in path.rglob("*.png")):
        return "breakhis"
    if not any(p.is_file() for p in path.rglob("*")):
        raise ValueError(f"dataset: {path} is empty (expected BreakHis images or a .csv manifest)")
    raise ValueError(
        f"dataset: cannot tell the layout of {path}: expected BreakHis image names like "
        "SOB_B_A-14-22549AB-40-001.png, or give a .csv manifest (layout=csv)"
    )


def parse_breakhis_name(name: str) -> dict[str, str]:
    """Read label, subtype, patient and magnification from a BreakHis file name."""
    match = BREAKHIS_NAME.match(name)
    if match is None:
        raise ValueError(f"{name}: not a BreakHis image name (like SOB_B_A-14-22549AB-40-001.png)")
    return {
        "label": "benign" if match["kind"].upper() == "B" else "malignant",
        "subtype": match["subtype"].upper(),
        "patient_id": match["patient"],
        "magnification": f"{match['magnification']}X",
    }


def read_breakhis(root: Path) -> pd.DataFrame:
    """Every BreakHis image below ``root``, whichever level of BreaKHis_v1 it is."""
    if not root.is_dir():
        raise ValueError(f"dataset: {root} is not a folder (layout=breakhis expects one)")
    rows = [
        {"path": str(path), **parse_breakhis_name(path.name)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and BREAKHIS_NAME.match(path.name)
    ]
    if not rows:
        raise ValueError(f"dataset: no BreakHis images (like SOB_B_A-14-22549AB-40-001.png) below {root}")
    return pd.DataFrame(rows)[TABLE_COLUMNS + ["subtype"]]


def read_manifest(csv_path: Path) -> pd.DataFrame:
    """A CSV with columns path,label,patient_id[,magnification]; paths relative to the CSV."""
    if not csv_path.is_file():
        raise ValueError(f"dataset: {csv_path} is not a file (layout=csv expects a .csv manifest)")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{csv_path}: not a readable CSV ({error.__class__.__name__})") from None
    missing = [c for c in ("path", "label", "patient_id") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column {', '.join(missing)} (need path,label,patient_id)")
    if table.empty:
        raise ValueError(f"{csv_path}: has a header but no images")
    if "magnification" not in table.columns:
        table["magnification"] = "unknown"
    table["label"] = [_label_word(value, csv_path) for value in table["label"]]
    table["path"] = [str((csv_path.parent / p).resolve()) for p in table["path"]]
    absent = [p for p in table["path"] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{csv_path}: {len(absent)} listed images do not exist, e.g. {absent[0]}")
    return table[TABLE_COLUMNS]


def _label_word(value: str, source: Path) -> str:
    word = LABEL_WORDS.get(str(value).strip().lower())
    if word is None:
        raise ValueError(f"{source}: label {value!r} is not benign/malignant (or B/M, 0/1)")
    return word


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
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> pd.DataFrame:
    """Add a ``split`` column: train/val/test by patient, stratified by class.

    Images of one patient are near-duplicates, so every patient's images go to one split;
    an image-level split would let the model recognise patients instead of tumours.
    Within each class, patients are shuffled and each goes to the split furthest below its
    share of that class' images.
    """
    shares = {"test": test_fraction, "val": val_fraction, "train": 1 - val_fraction - test_fraction}
    rng = np.random.default_rng(seed)
    images_per_patient = table.groupby("patient_id").size().sort_index()
    # A patient with images of both classes (as in IDC patches) is dealt with its majority class.
    patient_class = table.groupby("patient_id")["label"].agg(lambda labels: labels.mode().max())
    assignment: dict[str, str] = {}
    for label, patients in patient_class.groupby(patient_class).groups.items():
        patients = sorted(patients)
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        assignment.update(_assign_patients(shuffled, images_per_patient[patients], shares, label))
    return table.assign(split=table["patient_id"].map(assignment))


def _assign_patients(patients, images_per_patient, shares, label) -> dict[str, str]:
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


def save_split(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write the split manifest: one row per image (per tile, when tiling) with its split."""
    columns = TABLE_COLUMNS + (["tile", "tiles"] if "tiles" in table else []) + ["split"]
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
    shuffle: bool = False,
    seed: int = 0,
):
    """A tf.data pipeline of (image, label) batches; images are float 0-255, img_size square.

    Files are decoded in parallel (Pillow, so any common format and mode works) and
    prefetched, so nothing holds the whole dataset in memory. The model scales pixels
    itself, so the pipeline only converts to RGB and resizes or tiles.
    """
    import tensorflow as tf

    labels = labels_of(table).reshape(-1, 1)
    tile, tiles = tiles_of(table)
    ds = tf.data.Dataset.from_tensor_slices(((table["path"].to_numpy(dtype=str), tile, tiles), labels))
    if shuffle:
        ds = ds.shuffle(len(table), seed=seed, reshuffle_each_iteration=True)

    def load(path, tiles, tile):
        return load_for_model(path.decode(), img_size, resize, int(tiles), int(tile))

    def load_batch_item(source, label):
        path, tile, tiles = source
        image = tf.numpy_function(load, [path, tiles, tile], tf.float32, stateful=False)
        return tf.ensure_shape(image, (img_size, img_size, 3)), label

    ds = ds.map(load_batch_item, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def image_dataset(cfg: Config, table: pd.DataFrame, shuffle: bool = False):
    """Stage entry point: the pipeline of ``table``'s images with cfg's size, resize and batch."""
    return make_dataset(table, cfg.img_size, cfg.batch_size, cfg.resize, shuffle, cfg.seed)
