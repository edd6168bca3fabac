"""The dataset layouts bcnb reads, and how it tells them apart.

Each reader returns a *candidate table*: one row per file the layout counts as part of the
dataset, with ``path``, ``label`` ("benign"/"malignant"), ``patient_id``, ``magnification``
and ``problem`` (empty, or why the file cannot be used as it stands, e.g. a stray
``.DS_Store`` in an image folder). The scan in :mod:`bcnb.data.scan` then opens every candidate.

- ``breakhis``: BreaKHis_v1, from any level of its tree; everything is in the file names.
- ``idc``: the IDC patches, ``<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png``.
- ``folders``: ``<root>/<class>/.../<image>``, two class folders of any names.
- ``csv``: a manifest with columns path,label,patient_id[,magnification].
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bcnb.data.images import IMAGE_SUFFIXES
from bcnb.data.tasks import CLASSES

TABLE_COLUMNS = ["path", "label", "patient_id", "magnification"]
NO_PROBLEM = ""

# BreakHis file names, e.g. SOB_B_A-14-22549AB-40-001.png: procedure (SOB), class (B or M),
# tumour subtype, year-slide (the patient), magnification, image number.
BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]+)-(?P<patient>\d+-[0-9A-Z]+)-"
    r"(?P<magnification>40|100|200|400)-(?P<number>\d+)\.png$",
    re.IGNORECASE,
)
MAGNIFICATION_FOLDER = re.compile(r"^\d+X$", re.IGNORECASE)
# IDC patch names, e.g. 10253_idx5_x1001_y1001_class1.png.
IDC_NAME = re.compile(r"^(?P<patient>[^_]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>[01])\.png$")
LABEL_WORDS = {"benign": "benign", "b": "benign", "0": "benign",
               "malignant": "malignant", "m": "malignant", "1": "malignant"}  # fmt: skip


@dataclass
class Candidates:
    """What a layout reader found: the candidate table and notes for the reader."""

    table: pd.DataFrame
    layout: str
    notes: list[str] = field(default_factory=list)
    patient_level: bool = True  # False when every image is its own "patient"


# --------------------------------------------------------------------------- detection
def detect_layout(path: Path) -> str:
    """Which layout ``path`` holds; a clear error when it is none of them."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise ValueError(f"dataset: {path} is a file but not a .csv manifest")
    for png in path.rglob("*.png"):
        if BREAKHIS_NAME.match(png.name):
            return "breakhis"
        if IDC_NAME.match(png.name) and png.parent.name in ("0", "1"):
            return "idc"
    if len(_class_folders(path)) == 2:
        return "folders"
    if not any(_is_file(p) for p in path.rglob("*")):
        raise ValueError(f"dataset: {path} is empty (expected images or a .csv manifest)")
    raise ValueError(
        f"dataset: cannot tell the layout of {path}: expected BreakHis names "
        "(SOB_B_A-14-22549AB-40-001.png), IDC patches (<patient>/<0|1>/..._class1.png), "
        "two class folders holding images, or a .csv manifest; or set layout"
    )


def read_layout(
    path: Path,
    layout: str,
    positive_class: str = "malignant",
    patient_pattern: str = "",
    patient_id_from: str = "slide_number",
) -> Candidates:
    """Read ``path`` as ``layout`` ("auto" detects it)."""
    chosen = detect_layout(path) if layout == "auto" else layout
    if chosen == "breakhis":
        recognised = read_breakhis(path, patient_id_from)
    elif chosen == "idc":
        recognised = read_idc(path)
    elif chosen == "folders":
        recognised = read_class_folders(path, positive_class, patient_pattern)
    else:
        recognised = read_manifest(path)
    if layout == "auto":
        recognised.notes.insert(0, f"layout: detected {chosen}")
    return recognised


def _is_file(path: Path) -> bool:
    """A file, or a symlink (even a broken one, which the scan then reports)."""
    return path.is_symlink() or path.is_file()


def _require_folder(root: Path, layout: str) -> None:
    if not root.is_dir():
        raise ValueError(f"dataset: {root} is not a folder (layout={layout} expects one)")


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"problem": NO_PROBLEM, **row} for row in rows], columns=columns + ["problem"])


def _stray(path: Path, expected: str = "") -> dict:
    """A row for a file inside the image folders that the layout cannot take as an image."""
    if path.name.startswith("."):
        why = "not an image (hidden file)"
    elif path.suffix.lower() not in IMAGE_SUFFIXES:
        why = f"not an image ({path.suffix or 'no extension'})"
    else:
        why = f"not {expected}"
    return {"path": str(path), "label": "", "patient_id": "", "magnification": "", "problem": why}


# --------------------------------------------------------------------------- BreakHis
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


def read_breakhis(root: Path, patient_id_from: str = "slide_number") -> Candidates:
    """Every BreakHis image below ``root``; other files inside magnification folders are strays.

    A few slide numbers appear under two tumour types (SOB_M_DC-14-13412 and SOB_M_LC-14-13412),
    so they may be one patient: they are named in a note. ``patient_id_from="slide_number"``
    reads each as one patient, so no such pair can straddle two splits; ``"folder"`` keeps them
    apart (DC-14-13412, LC-14-13412), one patient per folder, as BreakHis counts its 82.
    """
    _require_folder(root, "breakhis")
    rows = []
    for path in sorted(p for p in root.rglob("*") if _is_file(p)):
        if BREAKHIS_NAME.match(path.name):
            rows.append({"path": str(path), **parse_breakhis_name(path.name)})
        elif MAGNIFICATION_FOLDER.match(path.parent.name):
            rows.append(_stray(path, "a BreakHis image name"))
    table = _frame(rows, TABLE_COLUMNS + ["subtype"])
    if not (table["problem"] == NO_PROBLEM).any():
        raise ValueError(f"dataset: no BreakHis images (like SOB_B_A-14-22549AB-40-001.png) below {root}")
    notes = _shared_slides(table, patient_id_from)
    if patient_id_from == "folder":
        images = table["problem"] == NO_PROBLEM
        table.loc[images, "patient_id"] = table.loc[images, "subtype"] + "-" + table.loc[images, "patient_id"]
    return Candidates(table, "breakhis", notes)


def _shared_slides(table: pd.DataFrame, patient_id_from: str) -> list[str]:
    """A note naming the slide numbers found under more than one tumour type."""
    types = table[table["problem"] == NO_PROBLEM].groupby("patient_id")["subtype"].unique()
    shared = types[types.map(len) > 1]
    if shared.empty:
        return []
    listed = "; ".join(f"{slide} ({' and '.join(sorted(codes))})" for slide, codes in shared.items())
    if patient_id_from == "slide_number":
        how = "each read as one patient (patient_id_from=slide_number)"
    else:
        how = "counted as one patient per tumour type (patient_id_from=folder)"
    return [
        f"{len(shared)} slide number(s) appear under two tumour types, so may be one patient: {listed}; {how}"
    ]


def _looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# --------------------------------------------------------------------------- IDC
def read_idc(root: Path) -> Candidates:
    """IDC patches; the patient is the folder two levels up, the class the folder above.

    The Kaggle archive holds the patient folders twice (once more inside
    IDC_regular_ps50_idx5/); a patch seen again under the same patient/class/name is
    listed once.
    """
    _require_folder(root, "idc")
    rows, seen, copies = [], set(), 0
    for path in sorted(p for p in root.rglob("*") if _is_file(p)):
        if path.parent.name not in ("0", "1"):
            continue
        patient, folder_class = path.parent.parent.name, path.parent.name
        match = IDC_NAME.match(path.name)
        if match is None:
            rows.append(_stray(path, "an IDC patch name"))
            continue
        key = (patient, folder_class, path.name)
        if key in seen:
            copies += 1
            continue
        seen.add(key)
        problem = (
            "" if match["cls"] == folder_class else f"in folder {folder_class} but named class{match['cls']}"
        )
        label = CLASSES[int(folder_class)]
        rows.append(
            {
                "path": str(path),
                "label": label,
                "patient_id": patient,
                "magnification": "unknown",
                "problem": problem,
            }
        )
    table = _frame(rows, TABLE_COLUMNS)
    if table.empty:
        raise ValueError(f"dataset: no IDC patches (<patient>/<0|1>/..._class1.png) below {root}")
    notes = ["IDC: class 1 (invasive ductal carcinoma) is read as malignant, class 0 as benign"]
    if copies:
        notes.append(f"IDC: {copies} patches found twice (a second copy of the archive) were listed once")
    return Candidates(table, "idc", notes)


# --------------------------------------------------------------------------- class folders
def _class_folders(root: Path) -> list[Path]:
    """Subfolders of ``root`` (hidden ones aside) that hold at least one image file."""
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and any(_looks_like_image(p) for p in d.rglob("*"))
    )


def read_class_folders(
    root: Path, positive_class: str = "malignant", patient_pattern: str = ""
) -> Candidates:
    """``<root>/<class>/.../<image>`` with two class folders; ``positive_class`` is malignant.

    The patient is the ``patient_pattern`` regex's first group over the path relative to
    ``root``; without a pattern, the first folder below the class folder; without one, the
    image itself (and then the split cannot be by patient).
    """
    _require_folder(root, "folders")
    folders = _class_folders(root)
    names = [folder.name for folder in folders]
    if len(folders) != 2:
        seen = ", ".join(names) or "none"
        raise ValueError(f"dataset: {root} has {len(folders)} class folders with images ({seen}); need 2")
    if positive_class not in names:
        raise ValueError(
            f"positive_class: {positive_class!r} is not a class folder of {root} ({', '.join(names)})"
        )
    pattern = re.compile(patient_pattern) if patient_pattern else None
    rows = []
    for folder in folders:
        label = "malignant" if folder.name == positive_class else "benign"
        for path in sorted(p for p in folder.rglob("*") if _is_file(p)):
            if not _looks_like_image(path):
                rows.append(_stray(path))
                continue
            patient_id = _patient_of(path, folder, root, pattern)
            rows.append(
                {"path": str(path), "label": label, "patient_id": patient_id, "magnification": "unknown"}
            )
    table = _frame(rows, TABLE_COLUMNS)
    negative = next(name for name in names if name != positive_class)
    notes = [f"classes: folder {positive_class!r} is read as malignant, {negative!r} as benign"]
    patient_level = bool(pattern) or any(len(Path(p).relative_to(root).parts) > 2 for p in table["path"])
    if not patient_level:
        notes.append(
            "no patient ids: each image is its own patient, so the split is by image, not by patient, "
            "and test accuracy will be optimistic if one patient has several images"
        )
    return Candidates(table, "folders", notes, patient_level)


def _patient_of(path: Path, class_folder: Path, root: Path, pattern: re.Pattern | None) -> str:
    relative = path.relative_to(root).as_posix()
    if pattern is not None:
        match = pattern.search(relative)
        if match is None or not match.groups():
            raise ValueError(f"patient_pattern: {pattern.pattern!r} finds no group in {relative!r}")
        return match.group(1)
    inside = path.relative_to(class_folder).parts
    return inside[0] if len(inside) > 1 else path.stem


# --------------------------------------------------------------------------- CSV manifest
def read_manifest(csv_path: Path) -> Candidates:
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
    used = [c for c in [*TABLE_COLUMNS, "subtype"] if c in table.columns]
    ignored = [c for c in table.columns if c not in used]
    if "magnification" not in table.columns:
        table["magnification"] = "unknown"
    table["label"] = [_label_word(value, csv_path) for value in table["label"]]
    # normpath, not resolve(): a symlinked image keeps its own path (and a broken one is reported).
    table["path"] = [os.path.normpath(csv_path.parent / p) for p in table["path"]]
    table["problem"] = [
        NO_PROBLEM if _is_file(Path(p)) else "missing file (listed in the manifest)" for p in table["path"]
    ]
    note = f"manifest columns used: {', '.join(used)}"
    notes = [note + (f"; ignored: {', '.join(ignored)}" if ignored else "")]
    kept = TABLE_COLUMNS + (["subtype"] if "subtype" in table.columns else [])  # task=subtype reads it
    return Candidates(table[[*kept, "problem"]], "csv", notes)


def _label_word(value: str, source: Path) -> str:
    word = LABEL_WORDS.get(str(value).strip().lower())
    if word is None:
        raise ValueError(f"{source}: label {value!r} is not benign/malignant (or B/M, 0/1)")
    return word
