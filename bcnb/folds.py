"""Patient-level cross-validation and BreakHis' official folds: which images each run tests on.

One split gives one number whose interval spans much of the scale on a few dozen patients;
papers on BreakHis report the mean and spread over several patient-disjoint test sets
(Spanhol et al. 2016: five trials of 70/30 by patient). Two ways to get them:

- ``folds=K``: every patient in exactly one of K test folds, stratified by class
  (scikit-learn's ``StratifiedGroupKFold``, groups = patients); run ``fold=k`` tests on fold k.
- ``split_file``: one of Spanhol et al.'s fold files (``dsfold1.txt`` ... ``dsfold5.txt``), one
  line per image, ``file name|magnification|fold|train or test``.

Either way a validation part is carved by patient from the training part, stratified by class,
so that early stopping and the decision threshold never see the test fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bcnb.datasets import assign_patients, patient_strata

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
    """Each image's test fold (1..K): by patient, stratified by class (or tumour type, ``by``),
    shuffled by ``seed``. scikit-learn warns where a type has fewer patients than folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    check_folds(table, folds)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.zeros(len(table), dtype=int)
    for number, (_, test) in enumerate(splitter.split(table, table[by], table["patient_id"]), start=1):
        fold_of[test] = number
    return fold_of


def split_for_fold(
    table: pd.DataFrame, folds: int, fold: int, val_fraction: float, seed: int, by: str = "label"
) -> pd.DataFrame:
    """The table with a ``split`` column: fold ``fold`` is test, validation is carved from the rest."""
    is_test = assign_folds(table, folds, seed, by) == fold
    return _with_validation(table, is_test, val_fraction, seed, by)


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
    assignment: dict[str, str] = {}
    for label, patients in patient_strata(part, 2, by).items():
        shuffled = [patients[i] for i in rng.permutation(len(patients))]
        shares = {"val": share, "train": 1 - share}
        counts = images_per_patient[patients]
        assignment.update(assign_patients(shuffled, counts, shares, f"the training part's {label}"))
    return part["patient_id"].map(assignment)


# --------------------------------------------------------------------------- fold files
def read_fold_file(path: str | Path) -> pd.DataFrame:
    """Spanhol et al.'s fold file: one row per line, ``file|magnification|fold|train or test``.

    A line that does not have that form stops with its number and what was expected.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"split_file: cannot read {path} ({error.__class__.__name__})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("|")]
        numbers = len(fields) == 4 and fields[1].isdigit() and fields[2].isdigit()
        if not numbers or fields[3] not in ("train", "test"):
            raise ValueError(
                f"split_file: {path} line {number}: expected file name|magnification|fold|train or test "
                f"(e.g. SOB_B_A-14-22549AB-40-001.png|40|1|train), got {line.strip()[:80]!r}"
            )
        rows.append(
            {
                "file": Path(fields[0]).name,
                "magnification": f"{fields[1]}X",
                "fold": int(fields[2]),
                "group": fields[3],
            }
        )
    if not rows:
        raise ValueError(f"split_file: {path} lists no images")
    return pd.DataFrame(rows, columns=FOLD_FILE_COLUMNS)


def split_from_fold_file(
    table: pd.DataFrame, path: str | Path, val_fraction: float, seed: int, by: str = "label"
) -> pd.DataFrame:
    """``table`` (images the fold file lists) with its split: the file's test images are test,
    validation is carved from its training images."""
    group = read_fold_file(path).drop_duplicates("file").set_index("file")["group"]
    names = table["path"].map(lambda p: Path(p).name)
    unlisted = sorted(set(names) - set(group.index))
    if unlisted:
        name = Path(path).name
        raise ValueError(f"split_file: {name} does not list {len(unlisted)} image(s), e.g. {unlisted[0]}")
    return _with_validation(table, (names.map(group) == "test").to_numpy(), val_fraction, seed, by)
