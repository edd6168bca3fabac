"""Beyond benign vs malignant: BreakHis' eight tumour types (``task=subtype``).

The same frozen base and pooled features, with a softmax head over the eight types instead of
one sigmoid unit. A patient in BreakHis has one tumour type, so splits stay by patient. The
binary question is still answered, by adding up the probabilities of the four malignant
types, so a subtype model can be set beside the paper's binary one on the same figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CLASSES = ("benign", "malignant")  # index 1, malignant, is the positive class
# BreakHis' types as its file names abbreviate them (Spanhol et al., IEEE TBME 2016): the
# four benign ones first, so a type's index says its class.
SUBTYPES = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
SUBTYPE_NAMES = {
    "A": "adenosis", "F": "fibroadenoma", "PT": "phyllodes tumour", "TA": "tubular adenoma",
    "DC": "ductal carcinoma", "LC": "lobular carcinoma", "MC": "mucinous carcinoma",
    "PC": "papillary carcinoma",
}  # fmt: skip
MALIGNANT_TYPES = SUBTYPES[4:]
# Words a manifest may use for a type: its code, its name, BreakHis' folder name.
_WORDS = {
    **{code.lower(): code for code in SUBTYPES},
    **{name.replace(" ", "_"): code for code, name in SUBTYPE_NAMES.items()},
    "phyllodes_tumor": "PT",
}


def class_of_type(code: str) -> str:
    """The class a BreakHis tumour type belongs to: "benign" or "malignant"."""
    return CLASSES[1] if code in MALIGNANT_TYPES else CLASSES[0]


def subtype_code(value: str, source: str = "subtype") -> str:
    """A tumour type as its BreakHis code ("DC" for "ductal carcinoma" or "ductal_carcinoma")."""
    code = _WORDS.get(str(value).strip().lower().replace(" ", "_").replace("-", "_"))
    if code is None:
        raise ValueError(f"{source}: tumour type {value!r} is not one of {', '.join(SUBTYPE_NAMES.values())}")
    return code


def outputs_of(task: str) -> int:
    """The head's units: one sigmoid for binary, one softmax unit per type for subtype."""
    return 1 if task == "binary" else len(SUBTYPES)


def targets_of(table: pd.DataFrame, task: str) -> np.ndarray:
    """What the head learns for each row: 0/1 (malignant) or the type's index 0-7."""
    if task == "binary":
        return (table["label"] == "malignant").to_numpy(dtype=np.float32)
    return table["subtype"].map(SUBTYPES.index).to_numpy(dtype=np.float32)


def malignant_probability(outputs: np.ndarray) -> np.ndarray:
    """P(malignant) per image from a model's outputs: the sigmoid itself, or the sum of the
    four malignant types' softmax probabilities."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        return outputs.reshape(-1)
    return np.clip(outputs[:, len(SUBTYPES) - len(MALIGNANT_TYPES) :].sum(axis=1), 0.0, 1.0)


def subtype_metrics(codes, outputs: np.ndarray) -> dict:
    """Per-type recall and precision, macro F1, balanced accuracy and the 8x8 confusion matrix
    (rows the true type, columns the predicted one, in SUBTYPES order)."""
    from sklearn import metrics as skm  # here: config imports this module, and must start fast

    y_true = np.array([SUBTYPES.index(code) for code in codes])
    y_pred = np.asarray(outputs).argmax(axis=1)
    labels = list(range(len(SUBTYPES)))
    recall = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    precision = skm.precision_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    present = sorted(set(y_true.tolist()))  # macro scores over the types the test split has
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.nanmean(recall[present])),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_type": {
            SUBTYPE_NAMES[code]: {
                "images": int((y_true == i).sum()),
                "recall": _number(recall[i]),
                "precision": _number(precision[i]),
            }
            for i, code in enumerate(SUBTYPES)
        },  # fmt: skip
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "types": list(SUBTYPES),
    }


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
