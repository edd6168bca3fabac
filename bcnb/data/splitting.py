"""Patient-level cross-validation and BreakHis' official folds: which images each run tests on.

One split gives one number whose interval spans much of the scale on a few dozen patients;
papers on BreakHis report the mean and spread over several patient-disjoint test sets
(Spanhol et al. 2016: five trials of 70/30 by patient). Two ways to get them:

- ``folds=K``: every patient in exactly one of K test folds, stratified (scikit-learn's
  ``StratifiedGroupKFold``, groups = patients); run ``fold=k`` tests on fold k. The folds are
  drawn from the patients of the whole dataset, every magnification, so a run of one
  magnification tests on the same patients as the others (:func:`split_for_run`'s ``whole``).
- ``split_file``: one of Spanhol et al.'s fold files (``dsfold1.txt`` ... ``dsfold5.txt``), one
  line per image, ``file name|magnification|fold|train or test``.

Either way a validation part is carved by patient from the training part, stratified, so that
early stopping and the decision threshold never see the test fold.

Stratified means by class and, where the tumour types are known (BreakHis names, a manifest's
``subtype`` column, the built-in data), by type within class: by class alone, all three
adenosis patients of a run could land in test and a model would never train on adenosis.
:func:`types_missing_from_training` names any type a training part still lacks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.layouts import TABLE_COLUMNS
from bcnb.data.tasks import CLASSES, SUBTYPE_NAMES, SUBTYPES, class_of_type, task_named
from bcnb.run.artifacts import SPLIT_FILE
from bcnb.run.files import write_text_atomic

FOLD_FILE_COLUMNS = ["file", "magnification", "fold", "group"]


def check_folds(table: pd.DataFrame, folds: int) -> None:
    """K test folds need at least K patients of each class."""
    patients = table.groupby("label")["patient_id"].nunique()
    if patients.min() < folds:
        smaller = patients.idxmin()
        raise ValueError(
            f"folds: {folds} folds need {folds} patients of each class; {smaller} has {patients.min()}"
        )


def assign_folds(table: pd.DataFrame, folds: int, seed: int, by: str = "label") -> np.ndarray:
    """Each image's test fold (1..K): by patient, shuffled by ``seed``, stratified by tumour type
    where the types are known, else by class (``by`` is kept for callers; the table decides).

    By type, the patients of a type go to as many different folds as it has patients (each
    fold then trains on the others); where that leaves a test fold without one class, the
    folds are stratified by class instead.
    """
    check_folds(table, folds)
    fold_of = np.zeros(len(table), dtype=int)
    for strata in ([table["subtype"]] if has_types(table) else []) + [table["label"]]:
        fold_of = _group_folds(table, strata, folds, seed)
        if all(table["label"][fold_of == k].nunique() == 2 for k in range(1, folds + 1)):
            break
    return fold_of


def _group_folds(table: pd.DataFrame, strata: pd.Series, folds: int, seed: int) -> np.ndarray:
    """scikit-learn's StratifiedGroupKFold over patients; zeros where it cannot stratify by ``strata``."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.zeros(len(table), dtype=int)
    with warnings.catch_warnings():
        # A type with fewer images than folds cannot reach them all: types_missing_from_training says so.
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        try:
            for number, (_, test) in enumerate(splitter.split(table, strata, table["patient_id"]), start=1):
                fold_of[test] = number
        except ValueError:  # every stratum smaller than the folds: by class, then
            return np.zeros(len(table), dtype=int)
    return fold_of


def split_for_fold(
    table: pd.DataFrame,
    folds: int,
    fold: int,
    val_fraction: float,
    seed: int,
    by: str = "label",
    whole: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The table with a ``split`` column: fold ``fold`` is test, validation is carved from the
    rest; both drawn from the patients of ``whole`` (the dataset at every magnification;
    ``table`` itself by default), so that every magnification's runs share them."""
    whole = table if whole is None else whole
    is_test = assign_folds(whole, folds, seed, by) == fold
    return on_patients(table, _with_validation(whole, is_test, val_fraction, seed, by))


def on_patients(table: pd.DataFrame, decided: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the split that ``decided`` (a split of a table holding its patients) gives
    each of its patients."""
    if decided.index.equals(table.index) and (decided["path"].to_numpy() == table["path"].to_numpy()).all():
        return decided
    split_of = decided.groupby("patient_id")["split"].first()
    return table.assign(split=table["patient_id"].map(split_of).to_numpy())


def _with_validation(
    table: pd.DataFrame, is_test: np.ndarray, val_fraction: float, seed: int, by: str = "label"
) -> pd.DataFrame:
    """Test where ``is_test``; of the rest, about ``val_fraction`` of all images go to
    validation, by patient and stratified by class; the others train."""
    rest = table[~is_test]
    share = min(0.5, val_fraction * len(table) / max(len(rest), 1))
    split = pd.Series("test", index=table.index)
    split[rest.index] = carve_validation(rest, share, seed, by)
    return table.assign(split=split.to_numpy())


def carve_validation(part: pd.DataFrame, share: float, seed: int, by: str = "label") -> pd.Series:
    """ "val" or "train" for each row of ``part``: whole patients, about ``share`` of its images
    in each class to validation."""
    rng = np.random.default_rng(seed)
    images_per_patient = part.groupby("patient_id").size().sort_index()
    types = patient_types(part) if by == "label" else None
    assignment: dict[str, str] = {}
    for label, patients in patient_strata(part, 2, by).items():
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        shares = {"val": share, "train": 1 - share}
        counts = images_per_patient[patients]
        assignment.update(assign_patients(shuffled, counts, shares, f"the training part's {label}", types))
    return part["patient_id"].map(assignment)


# --------------------------------------------------------------------------- fold files
def read_fold_file(path: str | Path) -> pd.DataFrame:
    """Spanhol et al.'s fold file: one row per line, ``file|magnification|fold|train or test``.

    A line that does not have that form, an image listed as both train and test, or a file
    without test (or train) images stops with the file, the line numbers and what was expected.
    """
    return _fold_file_lines(path).drop(columns="line")


def _fold_file_lines(path: str | Path) -> pd.DataFrame:
    """The fold file's rows, with the number of the line each came from (``line``)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"split_file: cannot read {path} ({error.__class__.__name__})") from None
    rows = [_fold_file_row(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ValueError(f"split_file: {path} lists no images")
    table = pd.DataFrame(rows, columns=[*FOLD_FILE_COLUMNS, "line"])
    _check_groups(path, table)
    return table


def _fold_file_row(path: Path, number: int, line: str) -> dict:
    """One line of a fold file as a row; a line of another form stops, naming it."""
    fields = [field.strip() for field in line.split("|")]
    numbers = len(fields) == 4 and fields[1].isdigit() and fields[2].isdigit()
    if not numbers or fields[3] not in ("train", "test"):
        raise ValueError(
            f"split_file: {path} line {number}: expected file name|magnification|fold|train or test "
            f"(e.g. SOB_B_A-14-22549AB-40-001.png|40|1|train), got {line.strip()[:80]!r}"
        )
    return {
        "file": Path(fields[0]).name,
        "magnification": f"{fields[1]}X",
        "fold": int(fields[2]),
        "group": fields[3],
        "line": number,
    }


def _check_groups(path: Path, table: pd.DataFrame) -> None:
    """Refuse an image listed as both train and test, and a file without train or test images
    (a run on it would fail only once trained). The same line twice is harmless."""
    first = table.drop_duplicates(["file", "group"])
    both = first[first.duplicated("file", keep=False)]
    if not both.empty:
        name = both["file"].iloc[0]
        lines = both[both["file"] == name].set_index("group")["line"]
        raise ValueError(
            f"split_file: {path} lists {name} as train (line {lines['train']}) and as test "
            f"(line {lines['test']}); expected each image in one of them"
        )
    for group in ("train", "test"):
        if not (table["group"] == group).any():
            raise ValueError(f"split_file: {path} has no {group} lines; expected both train and test images")


def split_from_fold_file(
    table: pd.DataFrame,
    path: str | Path,
    val_fraction: float,
    seed: int,
    by: str = "label",
    whole: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``table`` (images the fold file lists) with its split: the file's test images are test,
    validation is carved from its training images (of ``whole``, every magnification, where
    given: the same validation patients for each). Refused when the file puts a patient on
    both sides, or none of ``table``'s images on one side."""
    rows = _fold_file_lines(path).drop_duplicates("file").set_index("file")
    name = Path(path).name
    listed = _listed(table, rows, name)
    for group in ("train", "test"):
        if not (listed["group"] == group).any():
            raise ValueError(
                f"split_file: {name} puts none of the {len(table)} images of this run in {group}; "
                f"expected both train and test images"
            )
    whole = listed if whole is None else _listed(whole, rows, name)
    decided = _with_validation(whole, (whole["group"] == "test").to_numpy(), val_fraction, seed, by)
    return on_patients(table, decided.drop(columns=["group", "line"]))


def _listed(table: pd.DataFrame, rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """``table`` with each image's ``group`` (train or test) and ``line`` in the fold file; refused
    where the file does not list an image, or puts a patient on both sides."""
    names = table["path"].map(lambda p: Path(p).name)
    unlisted = sorted(set(names) - set(rows.index))
    if unlisted:
        raise ValueError(f"split_file: {name} does not list {len(unlisted)} image(s), e.g. {unlisted[0]}")
    listed = table.assign(group=names.map(rows["group"]).to_numpy(), line=names.map(rows["line"]).to_numpy())
    _check_patients(listed, name)
    return listed


def _check_patients(listed: pd.DataFrame, name: str) -> None:
    """Refuse a fold file that puts one patient's images in both train and test."""
    sides = listed.groupby("patient_id")["group"].nunique()
    straddling = sorted(sides[sides > 1].index)
    if not straddling:
        return
    patient = straddling[0]
    images = listed[listed["patient_id"] == patient]
    line = {group: int(images[images["group"] == group]["line"].min()) for group in ("train", "test")}
    others = f" (and {len(straddling) - 1} more patients)" if len(straddling) > 1 else ""
    raise ValueError(
        f"split_file: {name} puts patient {patient} in train (line {line['train']}) and in test "
        f"(line {line['test']}){others}; expected each patient on one side{_shared_slide_hint(images)}"
    )


def _shared_slide_hint(images: pd.DataFrame) -> str:
    """Where the patient's images are of two BreakHis tumour types: the likely cause, and the fix."""
    if "subtype" not in images or images["subtype"].nunique() < 2:
        return ""
    types = " and ".join(sorted(images["subtype"].unique()))
    return (
        f"; its images are of two tumour types ({types}), one slide number in two BreakHis folders: "
        "patient_id_from=folder counts BreakHis' patients as the fold files do"
    )


SPLITS = ("train", "val", "test")


def split_for_run(cfg: Config, table: pd.DataFrame, whole: pd.DataFrame | None = None) -> pd.DataFrame:
    """Stage entry point: the table with its ``split``, by patient: fold ``fold`` of ``folds``,
    a BreakHis fold file, or val_fraction and test_fraction of the images.

    ``whole`` (:attr:`bcnb.data.loading.LoadedDataset.whole`, every magnification) is what the
    folds and fractions are drawn from, so that a run of one magnification gives its patients
    the parts a run of all of them gives them; ``table`` itself by default.
    """
    by = task_named(cfg.task).column  # what each split must hold its share of
    whole = table if whole is None or whole.empty else whole
    if cfg.folds:
        return split_for_fold(table, cfg.folds, cfg.fold, cfg.val_fraction, cfg.seed, by, whole)
    if cfg.split_file:
        return split_from_fold_file(table, cfg.split_file, cfg.val_fraction, cfg.seed, by, whole)
    return on_patients(table, split_by_patient(whole, cfg.val_fraction, cfg.test_fraction, cfg.seed, by))


# --------------------------------------------------------------------------- split
def split_by_patient(
    table: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int, by: str = "label"
) -> pd.DataFrame:
    """Add a ``split`` column: train/val/test by patient, stratified by class (``by="label"``;
    and by tumour type within class where the table holds the types) or by tumour type
    (``by="subtype"``, task=subtype: each type a stratum, see :func:`patient_strata`).

    Images of one patient are near-duplicates, so every patient's images go to one split;
    an image-level split would let the model recognise patients instead of tumours.
    Within each class, patients are shuffled and each goes to the split furthest below its
    share of that class' images (and of its type's, see :func:`assign_patients`).
    """
    shares = {"test": test_fraction, "val": val_fraction, "train": 1 - val_fraction - test_fraction}
    rng = np.random.default_rng(seed)
    images_per_patient = table.groupby("patient_id").size().sort_index()
    types = patient_types(table) if by == "label" else None
    assignment: dict[str, str] = {}
    for label, patients in patient_strata(table, len(SPLITS), by).items():
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        assignment.update(assign_patients(shuffled, images_per_patient[patients], shares, label, types))
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


def assign_patients(patients, images_per_patient, shares, label, types=None) -> dict[str, str]:
    """Deal shuffled ``patients`` out to the splits of ``shares`` (split: share of images): each
    to the split furthest below its share of the class' images and, with ``types`` (patient:
    tumour type), of its type's images too, so that each type is dealt out like its class
    (measured on the built-in data and BreakHis' mix of types: no type left out of training,
    the class' shares kept, where pooling the types as strata cut benign training to a third)."""
    wanted = [split for split, share in shares.items() if share > 0]
    if len(patients) < len(wanted):
        raise ValueError(
            f"split: {label} has {len(patients)} patient(s); a patient-level split into "
            f"{'/'.join(wanted)} needs at least {len(wanted)}"
        )
    groups = {p: ("class",) if types is None else ("class", types[p]) for p in patients}
    total: dict[str, float] = {}
    for patient in patients:
        for group in groups[patient]:
            total[group] = total.get(group, 0) + images_per_patient[patient]
    filled: dict[tuple[str, str], float] = {}
    assignment = {}

    def deal(patient, split):
        assignment[patient] = split
        for group in groups[patient]:
            filled[group, split] = filled.get((group, split), 0) + images_per_patient[patient]

    def behind(patient, split):  # how far the split is below its share, of each group
        return sum((shares[split] * total[g] - filled.get((g, split), 0)) / total[g] for g in groups[patient])

    # Every wanted split gets one patient first, so none is left without this class.
    for split, patient in zip(wanted, patients):
        deal(patient, split)
    for patient in patients[len(wanted) :]:
        deal(patient, max(wanted, key=lambda split: behind(patient, split)))
    return assignment


def subtype_strata(table: pd.DataFrame, parts: int) -> dict[str, list[str]]:
    """Patients by tumour type; the types with fewer than ``parts`` patients pooled by class
    (and the pool joined to its class' largest type if it is still too small)."""
    patient_type = table.groupby("patient_id")["subtype"].first()
    strata = {code: sorted(group.index) for code, group in patient_type.groupby(patient_type)}
    for label in CLASSES:
        rare = [
            code
            for code, patients in strata.items()
            if len(patients) < parts and class_of_type(code) == label
        ]
        pooled = sorted(p for code in rare for p in strata.pop(code))
        if not pooled:
            continue
        same_class = [code for code in strata if class_of_type(code) == label]
        if len(pooled) >= parts or not same_class:
            strata[f"rare {label} types"] = pooled
        else:
            strata[max(same_class, key=lambda code: len(strata[code]))] += pooled
    return strata


def has_types(table: pd.DataFrame) -> bool:
    """Whether every row of ``table`` says its tumour type (then splits are stratified by it)."""
    if "subtype" not in table or table.empty:
        return False
    return bool((table["subtype"].fillna("").astype(str).str.strip() != "").all())


def patient_types(table: pd.DataFrame) -> pd.Series | None:
    """Each patient's tumour type (the first of its images'), or None where types are unknown."""
    return table.groupby("patient_id")["subtype"].first() if has_types(table) else None


PART_WORDS = {"train": "training", "val": "validation", "test": "test"}


def types_missing_from_training(split: pd.DataFrame) -> list[str]:
    """One line per tumour type with no patient in the training part of ``split`` (a table with
    ``split`` and ``subtype``), e.g. "no adenosis patient in training (2 in test)"; none where
    the types are unknown. A model cannot learn a type it never trains on."""
    if not has_types(split):
        return []
    patients = split.groupby(["subtype", "split"])["patient_id"].nunique().unstack(fill_value=0)
    known = [code for code in SUBTYPES if code in patients.index]
    lines = []
    for code in known + sorted(set(patients.index) - set(known)):
        held = patients.loc[code]
        if held.get("train", 0) == 0:
            where = [f"{held[part]} in {PART_WORDS[part]}" for part in ("val", "test") if held.get(part, 0)]
            lines.append(f"no {SUBTYPE_NAMES.get(code, code)} patient in training ({', '.join(where)})")
    return lines


def stratified_by(split: pd.DataFrame, by: str = "label") -> str:
    """How a split was stratified, in the report's words: what :func:`split_by_patient` and the
    folds did with this table's columns."""
    if by == "subtype":
        return "stratified by tumour type"
    return (
        "stratified by class and by tumour type within class" if has_types(split) else "stratified by class"
    )


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


def save_split(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write the split manifest: one row per image (per tile, when tiling) with its split."""
    columns = TABLE_COLUMNS + (["subtype"] if "subtype" in table else [])
    columns += (["tile", "tiles"] if "tiles" in table else []) + ["split"]
    return write_text_atomic(Path(run_dir) / SPLIT_FILE, table[columns].to_csv(index=False))


def summarize_split(table: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per split and class, in split order."""
    in_order = table.assign(split=pd.Categorical(table["split"], categories=SPLITS, ordered=True))
    return (
        in_order.groupby(["split", "label"], observed=True)
        .agg(images=("path", "nunique"), patients=("patient_id", "nunique"))
        .reset_index()
        .astype({"split": str})
    )
