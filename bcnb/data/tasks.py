"""The task: what a run tells apart, and everything that follows from it (:class:`Task`).

``task=binary`` is the paper's: benign or malignant, one sigmoid unit, binary cross-entropy.
``task=subtype`` goes beyond it to BreakHis' eight tumour types: the same frozen base and
pooled features, a softmax head over the eight types. A patient in BreakHis has one tumour
type, so splits stay by patient. The binary question is still answered, by adding up the
probabilities of the four malignant types, so a subtype model can be set beside the paper's
binary one on the same figures. The rest of bcnb asks the Task, never the name.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Task:
    """What a task changes in a run: the head, its loss and accuracy, what it learns from the
    table, and how its outputs answer benign vs malignant."""

    name: str  # as Config.task and the run's record spell it
    units: int  # the head's Dense units
    activation: str  # the head's activation
    loss_class: str  # a keras.losses class, built by loss(): Keras is imported only then
    accuracy_class: str  # a keras.metrics class, built by accuracy()
    column: str  # the table column the head learns; each split holds its share of its values
    classes: tuple[str, ...]  # the values of ``column``, in the order of the head's outputs
    by_type: bool  # the head tells tumour types apart: the table must carry them
    head: str  # the head in a report's words

    def loss(self):
        """The compile's loss: binary cross-entropy (the paper's), or over the types' indices."""
        import keras

        return getattr(keras.losses, self.loss_class)()

    def accuracy(self):
        """The compile's metric, named "accuracy" as the paper's history shows it."""
        import keras

        return getattr(keras.metrics, self.accuracy_class)(name="accuracy")

    def targets_of(self, table: pd.DataFrame) -> np.ndarray:
        """What the head learns for each row: 0/1 (malignant) or the type's index 0-7."""
        values = table[self.column]
        if self.units == 1:  # one sigmoid unit learns the probability of the last class
            return (values == self.classes[-1]).to_numpy(dtype=np.float32)
        return values.map(self.classes.index).to_numpy(dtype=np.float32)

    def malignant_probability(self, outputs: np.ndarray) -> np.ndarray:
        """P(malignant) per image from this task's model outputs; other widths raise ValueError."""
        width = np.shape(outputs)[1] if np.ndim(outputs) == 2 else 1
        if width != self.units:
            raise ValueError(f"task={self.name}: expected {self.units} outputs per image, got {width}")
        return malignant_probability(outputs)


BINARY = Task(  # the paper's
    name="binary",
    units=1,
    activation="sigmoid",
    loss_class="BinaryCrossentropy",
    accuracy_class="BinaryAccuracy",
    column="label",
    classes=CLASSES,
    by_type=False,
    head="Dense(1, sigmoid)",
)
SUBTYPE = Task(
    name="subtype",
    units=len(SUBTYPES),
    activation="softmax",
    loss_class="SparseCategoricalCrossentropy",
    accuracy_class="SparseCategoricalAccuracy",
    column="subtype",
    classes=SUBTYPES,
    by_type=True,
    head="Dense(8, softmax) over BreakHis' tumour types (benign vs malignant: the malignant types' sum)",
)
TASKS = {task.name: task for task in (BINARY, SUBTYPE)}


def task_named(name: str) -> Task:
    """The task Config.task names; ValueError naming the parameter for any other name."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def malignant_probability(outputs: np.ndarray) -> np.ndarray:
    """P(malignant) per image from any bcnb model's outputs, read off their width (for a model
    file whose task is not at hand): the sigmoid itself, or the sum of the four malignant
    types' softmax probabilities."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        return outputs.reshape(-1)
    return np.clip(outputs[:, len(SUBTYPES) - len(MALIGNANT_TYPES) :].sum(axis=1), 0.0, 1.0)


def subtype_metrics(codes, outputs: np.ndarray) -> dict:
    """Per-type recall and precision, macro F1, balanced accuracy and the 8x8 confusion matrix
    (rows the true type, columns the predicted one, in SUBTYPES order)."""
    from sklearn import metrics as skm  # here: the data layer imports this module, and must start fast

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
