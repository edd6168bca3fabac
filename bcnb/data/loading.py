"""Stage 1, data: find the images, check them, split them by patient, stream them.

The result of loading is an *image table*: one row per image with its ``path`` (absolute),
``label`` ("benign" or "malignant"), ``patient_id`` and ``magnification``. Everything later
(the split, the montage, the tf.data pipeline) works from that table. The layouts live in
:mod:`bcnb.data.layouts`, the scan for bad files in :mod:`bcnb.data.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.layouts import read_layout
from bcnb.data.scan import find_bad_images, scan_memory, split_bad
from bcnb.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from bcnb.data.tasks import CLASSES, class_of_type, subtype_code, task_named
from bcnb.run.artifacts import DATASET_FILE
from bcnb.run.files import write_json_atomic


@dataclass
class LoadedDataset:
    """The usable images of a dataset, the files left out, and how it was read."""

    table: pd.DataFrame  # one row per image (per tile when tiling)
    bad: pd.DataFrame  # path, problem: files found unusable by the scan
    layout: str
    source: Path
    notes: list[str]  # what the reader decided, in words for the notebook and report
    patient_level: bool  # False when the layout has no patient ids
    # Every image at every magnification, before sampling and the scan: the patients the split
    # is drawn from (bcnb.data.splitting.split_for_run), the same whichever magnification runs.
    whole: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------- loading
def load_dataset(cfg: Config) -> LoadedDataset:
    """Stage entry point: read the layout, select and sample, scan every file, tile."""
    source = dataset_path(cfg)
    recognised = read_layout(source, cfg.layout, cfg.positive_class, cfg.patient_pattern, cfg.patient_id_from)
    images, strays = _images_and_strays(recognised.table)
    images, notes = known_types(images, source, task_named(cfg.task).by_type)
    strays = strays.drop(columns=strays.columns.difference(images.columns))  # no types where images have none
    if cfg.split_file:  # only the images the fold file lists; those it lists but we lack are bad
        images, missing = listed_in_fold_file(images, cfg.split_file)
        strays = pd.concat([strays, missing], ignore_index=True)
    whole = images.reset_index(drop=True)
    images = select_magnification(images, cfg.magnification, source)
    images = sample_images(images, cfg.max_images, cfg.seed)
    scanned = find_bad_images(pd.concat([images, strays]), remember=scan_memory(source))
    table, bad = split_bad(scanned, cfg.on_bad_image, source)
    check_both_classes(table, source)
    tiled = expand_tiles(table, cfg.tiles_per_image).reset_index(drop=True)
    notes = recognised.notes + notes
    return LoadedDataset(tiled, bad, recognised.layout, source, notes, recognised.patient_level, whole)


def known_types(images: pd.DataFrame, source: Path, required: bool) -> tuple[pd.DataFrame, list[str]]:
    """The images with their tumour types as BreakHis codes, and notes. A task that needs them
    (``required``) stops where they are missing; otherwise the split is then stratified by class
    only, and a note says why where a ``subtype`` column was there but unusable."""
    if required or "subtype" not in images:
        return (with_subtypes(images, source) if required else images), []
    try:
        return with_subtypes(images, source), []
    except ValueError as error:
        why = str(error).removeprefix("task=subtype: ")
        note = f"tumour types not used ({why}): the split is stratified by class only"
        return images.drop(columns="subtype"), [note]


def listed_in_fold_file(images: pd.DataFrame, split_file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images a fold file lists, and rows (with a problem) for the listed files not found."""
    from bcnb.data.splitting import read_fold_file

    listed = set(read_fold_file(split_file)["file"])
    names = images["path"].map(lambda path: Path(path).name)
    missing = sorted(listed - set(names))
    why = f"listed in {Path(split_file).name}, not found in the dataset"
    rows = pd.DataFrame({"path": missing, "label": "", "patient_id": "", "magnification": "", "problem": why})
    return images[names.isin(listed)], rows


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
        available = ", ".join(sorted(table["magnification"].unique()))
        raise ValueError(f"magnification: no {magnification} images in {source} (found {available})")
    return kept


def sample_images(table: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """At most ``max_images`` images, drawn in proportion from each class (0 keeps all)."""
    if max_images == 0 or max_images >= len(table):
        return table
    fraction = max_images / len(table)
    return table.groupby("label", group_keys=False).sample(frac=fraction, random_state=seed)


def check_both_classes(table: pd.DataFrame, source: Path) -> None:
    labels = set(table["label"])
    if not labels:
        raise ValueError(f"dataset: {source} has no usable images left")
    if labels != set(CLASSES):
        only = ", ".join(sorted(labels))
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


def with_subtypes(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The table with each image's tumour type as a BreakHis code; one line naming the
    problem where the dataset has no types, or a type that contradicts its label."""
    if "subtype" not in table or (table["subtype"].astype(str).str.strip() == "").any():
        raise ValueError(
            f"task=subtype: {source} has no tumour type for every image "
            "(expected BreakHis file names or a 'subtype' column in a CSV manifest)"
        )
    codes = table["subtype"].map(lambda value: subtype_code(value, f"task=subtype: {source}"))
    clash = table[codes.map(class_of_type) != table["label"]]
    if len(clash):
        row = clash.iloc[0]
        raise ValueError(
            f"task=subtype: {row['path']} is labelled {row['label']} but its type is {row['subtype']}"
        )
    return table.assign(subtype=codes)


def magnification_order(names) -> list[str]:
    """Magnifications from lowest to highest (40X before 100X), unknown ones last."""

    def power(name: str) -> float:
        digits = name.rstrip("Xx")
        return float(digits) if digits.isdigit() else float("inf")

    return sorted(set(names), key=power)


def magnifications_of(cfg: Config) -> list[str]:
    """The dataset's magnifications, lowest first, read from its layout alone (no scan); a
    dataset without them (IDC, class folders) has only "unknown"."""
    source = dataset_path(cfg)
    recognised = read_layout(source, cfg.layout, cfg.positive_class, cfg.patient_pattern, cfg.patient_id_from)
    images, _ = _images_and_strays(recognised.table)
    return magnification_order(images["magnification"])


def describe_patients(table: pd.DataFrame) -> list[str]:
    """What notebook 01 says about a data set, computed from it (never a sentence true of one
    data set only): images and magnifications per patient, and the share of the larger class."""
    per_patient = table.drop_duplicates("path").groupby("patient_id")
    images, powers = per_patient.size(), per_patient["magnification"].nunique()
    shares = table.drop_duplicates("path")["label"].value_counts(normalize=True)
    return [
        f"{len(images)} patients, {_range(images)} images each (median {images.median():g}), "
        f"at {_range(powers)} magnification(s)",
        f"{shares.idxmax()} is the larger class ({shares.max():.0%} of the images): always answering "
        f"{shares.idxmax()} would score {shares.max():.0%} accuracy",
    ]


def _range(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{low}" if low == high else f"{low} to {high}"


def count_images(table: pd.DataFrame) -> pd.DataFrame:
    """Images per class and magnification, with the number of patients per class."""
    counts = table.pivot_table(
        index="label", columns="magnification", values="path", aggfunc="nunique", fill_value=0
    )
    counts = counts[magnification_order(counts.columns)]
    counts["images"] = counts.sum(axis=1)
    counts["patients"] = table.groupby("label")["patient_id"].nunique()
    return counts
