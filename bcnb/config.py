"""One configuration object for a whole run.

Each field belongs to the stage (notebook) that first uses it, listed in ``STAGES``: a
notebook's ``parameters`` cell holds the flat literals of its own stage, named exactly like
the fields of :class:`Config`, and the run's record (``config.yaml``, see
:mod:`bcnb.run.record`) supplies the rest. The same object drives ``bcnb reproduce``, where
``--config FILE.yaml`` and ``--set key=value`` fill every field at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

# What each choice parameter allows. This module imports nothing of bcnb: every other one
# may import it, and the command line reads it before anything heavy starts.
TASKS = ("binary", "subtype")
STAIN_METHODS = ("none", "reinhard", "macenko")
LAYOUTS = ("auto", "breakhis", "idc", "folders", "csv")
ON_BAD_IMAGE = ("error", "skip")
CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("float32", "mixed_bfloat16")
STRATEGIES = ("auto", "mirrored")
RESIZE_MODES = ("squash", "center_crop")
MAGNIFICATIONS = ("all", "40X", "100X", "200X", "400X")
BACKBONE_NAMES = ("resnet50v2", "vgg19", "densenet121", "efficientnetb0", "mobilenetv2")
THRESHOLD_RULES = ("fixed", "youden", "sensitivity")
PATIENT_ID_FROM = ("slide_number", "folder")
CONFIG_FILE = "config.yaml"

# Which stage first uses each parameter: its notebook's parameters cell holds it, and that
# notebook records it in the run folder (bcnb reproduce records every stage it runs at once).
STAGES = {
    "data": ("task", "dataset", "layout", "positive_class", "patient_pattern", "patient_id_from",
             "magnification", "on_bad_image", "max_images", "val_fraction", "test_fraction", "folds", "fold",
             "split_file",
             "synthetic_patients", "synthetic_images_per_patient", "synthetic_difficulty",
             "tiles_per_image", "stain_normalization", "stain_target", "seed"),
    "model": ("img_size", "resize", "backbone", "weights", "allow_random_weights", "dropout", "precision"),
    "train": ("feature_cache", "class_weight", "batch_size", "epochs", "learning_rate", "patience",
              "strategy", "augment", "augment_brightness", "augment_contrast", "augment_stain",
              "fine_tune_layers", "fine_tune_epochs", "fine_tune_learning_rate", "tensorboard"),
    "evaluate": ("threshold_rule", "target_sensitivity", "bootstrap_samples", "tta"),
    "compare": ("compare_backbones",),
    "predict": ("predict_images",),
}  # fmt: skip
# The notebook of each stage, in the order they run.
NOTEBOOK_OF_STAGE = {
    "data": "01_data.ipynb",
    "model": "02_model.ipynb",
    "train": "03_train.ipynb",
    "evaluate": "04_evaluate.ipynb",
    "compare": "05_compare_backbones.ipynb",
    "predict": "06_predict.ipynb",
}
# Parameters that change how a run is shown or used, never what it is: a notebook may run
# on a finished run folder with other values of these.
PRESENTATION = ("interactive", "predict_images", "run_dir")
# Parameters that name a file or folder, with the words they take instead of a path.
PATH_PARAMETERS = {
    "dataset": ("synthetic",),
    "weights": ("imagenet", "none"),
    "split_file": ("",),
    "stain_target": ("",),
    "predict_images": ("",),
}


@dataclass(frozen=True)
class Config:
    """Every parameter of a run; invalid values raise ValueError naming the field."""

    # What to tell apart: "binary" (benign or malignant, the paper's) or "subtype" (BreakHis'
    # eight tumour types, from the file names or a manifest's subtype column).
    task: str = "binary"
    # Data: "synthetic" (the built-in dataset) or a path to BreakHis or a CSV manifest.
    dataset: str = "synthetic"
    layout: str = "auto"
    positive_class: str = "malignant"  # layout=folders: the class folder read as malignant
    patient_pattern: str = ""  # layout=folders: regex whose first group is the patient id
    # BreakHis: a patient is a slide number ("slide_number": 14-13412, whatever the tumour
    # type in the name) or a patient folder ("folder": DC-14-13412 and LC-14-13412 apart, as
    # BreakHis counts its 82). The first never lets one slide straddle two splits.
    patient_id_from: str = "slide_number"
    magnification: str = "all"
    on_bad_image: str = "error"  # or "skip": leave unusable files out and list them
    max_images: int = 0  # 0 keeps every image; a smaller number samples per class
    # The split: val_fraction and test_fraction of the images, by patient; or, with folds=K,
    # test fold `fold` (1..K) of K patient-level folds; or a BreakHis fold file (split_file,
    # Spanhol et al.'s dsfold1.txt ...). Validation is then carved from the training part.
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    folds: int = 0
    fold: int = 0
    split_file: str = ""
    # The built-in dataset's size and how much benign and malignant overlap (0 to 1).
    # Images per patient are per magnification: 3 gives each patient 12 (at 40X-400X).
    synthetic_patients: int = 40
    synthetic_images_per_patient: int = 3
    synthetic_difficulty: float = 0.5
    # Images: fitted to img_size x img_size by squashing the whole view or cropping the
    # centre; tiles_per_image > 0 cuts each image into that many img_size tiles instead.
    img_size: int = 224
    resize: str = "squash"
    tiles_per_image: int = 0
    # Stain normalisation (beyond the paper), in the input pipeline before the base: none,
    # reinhard or macenko, onto stain_target (an image file; "" fits the training split's median).
    stain_normalization: str = "none"
    stain_target: str = ""
    # Model: the paper's ResNet50V2 transfer model, or the same head on another base.
    backbone: str = "resnet50v2"  # or vgg19, densenet121, efficientnetb0, mobilenetv2
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    allow_random_weights: bool = True
    dropout: float = 0.2
    precision: str = "float32"  # or "mixed_bfloat16": faster where the hardware has bf16
    # Training.
    feature_cache: bool = True
    class_weight: str = "none"  # or "balanced": weigh each class by the inverse of its share
    # The paper states no batch size (its "4/4" evaluation fits 61 images at 16-20, or 122 at
    # Keras' default 32). 16 keeps end-to-end training at 224x224 within a laptop's memory and
    # gives a small training split several updates per epoch.
    batch_size: int = 16
    epochs: int = 100  # an upper bound: early stopping usually ends training sooner
    learning_rate: float = 1e-3
    patience: int = 10  # epochs without a better validation loss before stopping
    strategy: str = "auto"  # "auto": several GPUs are mirrored; "mirrored": every device
    # Augmentation of training images, for epochs that see images (end to end, fine-tuning):
    # flips and quarter turns, plus brightness, contrast and H&E stain jitter of these sizes.
    augment: bool = False
    augment_brightness: float = 0.1
    augment_contrast: float = 0.1
    augment_stain: float = 0.05
    # Fine-tuning after the head: the top fine_tune_layers layers of the base learn too
    # (BatchNormalization stays frozen). 0 trains the head only, as the paper does.
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    # Keras' TensorBoard logs of every epoch in run_dir/logs (tensorboard --logdir RUN/logs).
    tensorboard: bool = False
    # Evaluation: the decision threshold is chosen on the validation split ("fixed" is 0.5;
    # "youden" maximises sensitivity + specificity; "sensitivity" reaches target_sensitivity).
    threshold_rule: str = "youden"
    target_sensitivity: float = 0.95
    bootstrap_samples: int = 2000  # resamples of test patients for confidence intervals
    # Test-time augmentation: the mean probability over each image's 8 orientations
    # (measured against one view on validation; the decision and results then use it).
    tta: bool = False
    # Notebook 05: the backbones compared on the same split.
    compare_backbones: str = "resnet50v2,vgg19,densenet121,efficientnetb0,mobilenetv2"
    # Notebook 06: a file or folder of new images ("" stands in a few of the run's test images).
    predict_images: str = ""
    # Widgets in JupyterLab; false shows their static equivalents (bcnb reproduce sets it).
    interactive: bool = True
    seed: int = 42
    run_dir: str = "../runs/notebooks"

    def __post_init__(self) -> None:
        for field in fields(self):
            _check_type(field.name, getattr(self, field.name), field.type)
            if field.type == "float":
                # Store 1 as 1.0 so the saved config reads the same as the defaults.
                object.__setattr__(self, field.name, float(getattr(self, field.name)))
        if self.magnification.isdigit():  # "40" means "40X"
            object.__setattr__(self, "magnification", f"{self.magnification}X")
        # Backbones as papers write them (ResNet50V2, VGG19) name the same bases.
        object.__setattr__(self, "backbone", self.backbone.strip().lower())
        object.__setattr__(self, "compare_backbones", ",".join(self.backbones_to_compare()))
        for problem in self._problems():
            raise ValueError(problem)

    def _problems(self) -> Iterable[str]:
        """Yield a message for each value outside its allowed range."""
        if not self.dataset.strip():
            yield "dataset: expected 'synthetic' or a path, got an empty string"
        yield from _choice("task", self.task, TASKS)
        yield from _choice("layout", self.layout, LAYOUTS)
        if not self.positive_class.strip():
            yield "positive_class: expected the name of a class folder, got an empty string"
        yield from _regex("patient_pattern", self.patient_pattern)
        yield from _choice("patient_id_from", self.patient_id_from, PATIENT_ID_FROM)
        yield from _choice("on_bad_image", self.on_bad_image, ON_BAD_IMAGE)
        yield from _choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        yield from _choice("magnification", self.magnification, MAGNIFICATIONS)
        yield from _at_least("max_images", self.max_images, 0)
        yield from _between("val_fraction", self.val_fraction, 0.05, 0.5)
        yield from _between("test_fraction", self.test_fraction, 0.05, 0.5)
        if self.val_fraction + self.test_fraction > 0.6:
            yield "val_fraction + test_fraction: expected at most 0.6, leaving data to train on"
        yield from self._fold_problems()
        yield from synthetic_problems(
            self.synthetic_patients, self.synthetic_images_per_patient, self.synthetic_difficulty
        )
        yield from _at_least("img_size", self.img_size, 32)
        yield from _choice("resize", self.resize, RESIZE_MODES)
        yield from _at_least("tiles_per_image", self.tiles_per_image, 0)
        yield from _choice("stain_normalization", self.stain_normalization, STAIN_METHODS)
        if self.stain_target and self.stain_normalization == "none":
            yield "stain_target: a normalisation target; expected stain_normalization reinhard or macenko"
        if not self.weights.strip():
            yield "weights: expected 'imagenet', 'none' or a path to a weights file, got ''"
        yield from _between("dropout", self.dropout, 0.0, 0.95)
        yield from _choice("precision", self.precision, PRECISIONS)
        yield from _at_least("batch_size", self.batch_size, 1)
        yield from _at_least("epochs", self.epochs, 1)
        if not 0.0 < self.learning_rate <= 1.0:
            yield f"learning_rate: expected a number in (0, 1], got {self.learning_rate}"
        yield from _at_least("patience", self.patience, 1)
        yield from _choice("strategy", self.strategy, STRATEGIES)
        yield from _choice("backbone", self.backbone, BACKBONE_NAMES)
        for name in ("augment_brightness", "augment_contrast", "augment_stain"):
            yield from _between(name, getattr(self, name), 0.0, 0.5)
        yield from _at_least("fine_tune_layers", self.fine_tune_layers, 0)
        yield from _at_least("fine_tune_epochs", self.fine_tune_epochs, 1)
        if not 0.0 < self.fine_tune_learning_rate <= 1.0:
            yield f"fine_tune_learning_rate: expected a number in (0, 1], got {self.fine_tune_learning_rate}"
        yield from _choice("threshold_rule", self.threshold_rule, THRESHOLD_RULES)
        yield from _between("target_sensitivity", self.target_sensitivity, 0.5, 1.0)
        yield from _at_least("bootstrap_samples", self.bootstrap_samples, 100)
        for name in self.backbones_to_compare():
            yield from _choice("compare_backbones", name, BACKBONE_NAMES)
        yield from _at_least("seed", self.seed, 0)
        if not self.run_dir.strip():
            yield "run_dir: expected a folder path, got an empty string"

    def _fold_problems(self) -> Iterable[str]:
        if self.folds == 1 or self.folds < 0:
            yield f"folds: expected 0 (one split) or at least 2, got {self.folds}"
        elif self.folds and not 1 <= self.fold <= self.folds:
            yield f"fold: expected the test fold, 1 to {self.folds}, got {self.fold}"
        elif not self.folds and self.fold:
            yield f"fold: expected 0 without folds, got {self.fold} (set folds too)"
        if self.split_file and self.folds:
            yield "split_file: a fold file gives the split itself; expected folds=0 with it"

    def backbones_to_compare(self) -> list[str]:
        return [name.strip().lower() for name in self.compare_backbones.split(",") if name.strip()]

    @property
    def fine_tunes(self) -> bool:
        return self.fine_tune_layers > 0

    # ------------------------------------------------------------------ building
    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> Config:
        """Load a YAML file of ``field: value`` pairs; ``overrides`` win over the file."""
        return cls(**{**read_parameters(path), **overrides})

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        _reject_unknown(changes, where="replace()")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_parameters(path: str | Path) -> dict[str, Any]:
    """The ``parameter: value`` pairs of a YAML file; ValueError naming the file if it cannot
    be read, is not UTF-8 YAML, or names a parameter bcnb does not have."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ValueError(f"{path}: cannot read config file ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (expected a YAML file of parameter: value pairs)") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of parameter: value")
    _reject_unknown(values, where=str(path))
    return values


def synthetic_problems(patients: int, images_per_patient: int, difficulty: float) -> list[str]:
    """What makes a built-in dataset impossible, named as Config's parameters (used by the built-in dataset
    too): at least 6 patients for three splits of both classes."""
    problems = []
    if patients < 6:
        problems.append(f"synthetic_patients: expected an integer >= 6, got {patients}")
    if images_per_patient < 1:
        problems.append(f"synthetic_images_per_patient: expected an integer >= 1, got {images_per_patient}")
    if not 0.0 <= difficulty <= 1.0:
        problems.append(f"synthetic_difficulty: expected a number between 0.0 and 1.0, got {difficulty}")
    return problems


def field_names() -> list[str]:
    return [field.name for field in fields(Config)]


def resolve_paths(cfg: Config) -> Config:
    """``cfg`` with every path parameter absolute (``~`` expanded), so that it names the same
    file from any working folder (notebooks run in their run folder, not the caller's)."""
    changes = {
        name: str(Path(getattr(cfg, name)).expanduser().resolve())
        for name, words in PATH_PARAMETERS.items()
        if getattr(cfg, name).lower() not in words
    }
    return cfg.replace(**changes) if changes else cfg


def defines_the_run(name: str) -> bool:
    """False for parameters that only change how a run is shown (see PRESENTATION)."""
    return name not in PRESENTATION


def parse_override(text: str) -> tuple[str, Any]:
    """Turn ``"key=value"`` from the command line into a typed ``(key, value)`` pair."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected key=value")
    types = {field.name: field.type for field in fields(Config)}
    if key not in types:
        raise ValueError(f"unknown parameter {key!r}; known: {', '.join(types)}")
    return key, _parse_value(key, raw.strip(), types[key])


def _parse_value(key: str, raw: str, kind: str) -> Any:
    if kind == "bool":
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if raw.lower() not in words:
            raise ValueError(f"{key}: expected true or false, got {raw!r}")
        return words[raw.lower()]
    converter = {"int": int, "float": float}.get(kind)
    if converter is None:
        return raw
    try:
        return converter(raw)
    except ValueError:
        raise ValueError(
            f"{key}: expected {'an integer' if kind == 'int' else 'a number'}, got {raw!r}"
        ) from None


def _reject_unknown(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise ValueError(f"{where}: unknown parameter {', '.join(map(repr, unknown))}")


def _check_type(name: str, value: Any, kind: str) -> None:
    # bool is a subclass of int in Python: reject True where a number is expected.
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise ValueError(f"{name}: expected {kind}, got {value!r}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> Iterable[str]:
    if value not in allowed:
        yield f"{name}: expected one of {', '.join(allowed)}, got {value!r}"


def _regex(name: str, pattern: str) -> Iterable[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        yield f"{name}: not a valid regular expression ({error})"
        return
    if pattern and compiled.groups < 1:
        yield f"{name}: expected a regular expression with a group for the patient id, got {pattern!r}"


def _at_least(name: str, value: int, low: int) -> Iterable[str]:
    if value < low:
        yield f"{name}: expected an integer >= {low}, got {value}"


def _between(name: str, value: float, low: float, high: float) -> Iterable[str]:
    if not low <= value <= high:
        yield f"{name}: expected a number between {low} and {high}, got {value}"
