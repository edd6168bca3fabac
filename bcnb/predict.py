"""Stage 5, predict: a finished run's model and decision rule applied to new images.

For each image: the calibrated probability of malignancy in percent, the label at the
threshold chosen on validation (``decision.json``, written by notebook 04), and optionally a
Grad-CAM overlay. A model file is only loaded with Keras' safe mode on, so a file that would
run arbitrary code (a Lambda layer) is refused. Teaching and research only, never diagnosis.

Files are refused one by one with the reason, and the others predicted: files that are not
PNG, JPEG, TIFF or BMP (the types the data sets hold; a GIF too), broken symlinks, files that
do not decode, images too large to decode safely (a decompression bomb), and images smaller
than ``MIN_SIDE`` pixels on a side. Hidden files (``.DS_Store``) in a folder are skipped.

Checking paths needs no TensorFlow: Keras is imported only to load the model, so a wrong
path costs one fast line, not the seconds TensorFlow takes to start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from bcnb.config import CONFIG_FILE, Config
from bcnb.data.images import IMAGE_SUFFIXES
from bcnb.data.pipeline import Preparation
from bcnb.data.scan import inspect_file
from bcnb.data.stain import load_normalizer
from bcnb.data.tasks import CLASSES
from bcnb.report import caveats
from bcnb.run.artifacts import load_split
from bcnb.run.files import replace_from_writer
from bcnb.run.record import load_run_config

if TYPE_CHECKING:
    import keras

    from bcnb.model.transfer import WeightsInfo

# Smaller images are refused: fitted to the model's input (224 px) a 1x1 or 8x8 image is
# nearly all invented pixels. 16 keeps every real data set's images (IDC's patches are 50 px,
# BreakHis' 700x460) and refuses icons and placeholder images.
MIN_SIDE = 16
EXAMPLE_COUNT = 4  # bcnb predict --examples and notebook 06's stand-ins

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Predictor:
    """A trained model with the decision rule and image preparation of its run."""

    model: keras.Model
    rule: dict  # temperature and threshold, from decision.json
    preparation: Preparation  # the run's size, resize and stain normalisation
    weights: WeightsInfo | None = None  # the base's weights (weights.json); None: unknown
    trained_on: str = UNKNOWN  # the run's dataset: "synthetic" or its path
    batch_size: int = Config.batch_size  # the run's
    model_card: Path | None = None  # the run's model_card.md, where notebook 04 wrote one
    tta: bool = False  # the run's decision was fitted on 8-view means: so are these answers

    @classmethod
    def from_run(cls, model_path: str | Path) -> Predictor:
        """Load ``model_path`` (a run's model.keras) and the decision rule beside it."""
        path = Path(model_path)
        rule, cfg = read_run(path)
        from bcnb.model.transfer import load_model, load_weights_info
        from bcnb.run.artifacts import MODEL_CARD_FILE, WEIGHTS_FILE

        try:
            model = load_model(path)
        except Exception as error:  # Keras raises many kinds; all mean "not loadable safely"
            reason = " ".join(str(error).split())[:200]
            raise ValueError(f"--model: {path} cannot be loaded in safe mode ({reason})") from None
        _check_fitted_on(model, rule, path)
        folder = path.parent
        weights = load_weights_info(folder) if (folder / WEIGHTS_FILE).is_file() else None
        trained_on = cfg.dataset if cfg else UNKNOWN
        cfg = cfg or Config()
        card = folder / MODEL_CARD_FILE
        # The size the model takes, whatever config.yaml says; the stain target of its own folder.
        preparation = Preparation(
            int(model.input_shape[1]), cfg.resize, load_normalizer(folder, cfg.stain_normalization)
        )
        return cls(
            model,
            rule,
            preparation,
            weights,
            trained_on,
            cfg.batch_size,
            card if card.is_file() else None,
            cfg.tta,
        )

    def notes(self) -> list[str]:
        """One line each: where the model's base and training data came from, when that
        limits what its answers mean, then the disclaimer."""
        return [*caveats.short_lines(self._provenance()), self._card_note(), caveats.DISCLAIMER]

    def banner(self) -> str:
        """The run's caveats as notebooks 02 and 04 show them, the model card, the disclaimer."""
        return caveats.notice(self._provenance(), self._card_note())

    def _provenance(self) -> caveats.Provenance:
        dataset = None if self.trained_on == UNKNOWN else self.trained_on
        return caveats.Provenance.from_weights(self.weights, dataset)

    def _card_note(self) -> str:
        from bcnb.run.artifacts import MODEL_CARD_FILE

        if self.model_card is None:
            return f"no {MODEL_CARD_FILE} beside the model: notebook 04 writes what it is for and how it did"
        return f"model card: {self.model_card} (what this model is for, how it was measured, where it fails)"

    def provenance(self) -> dict[str, str]:
        """The columns every prediction carries: the base's weights and the training data."""
        return {"weights": self.weights.used if self.weights else UNKNOWN, "trained_on": self.trained_on}


def _check_fitted_on(model, rule: dict, path: Path) -> None:
    """The decision rule beside ``path`` must have been fitted on this very model (where it says
    which: decision.json of runs made before it does not)."""
    from bcnb.evaluate.decision import FITTED_ON, weights_fingerprint
    from bcnb.run.artifacts import DECISION_FILE, MODEL_FILE

    if rule.get(FITTED_ON) not in (None, weights_fingerprint(model)):
        raise ValueError(
            f"--model: {path} is not the model {path.parent / DECISION_FILE} was fitted on (other "
            f"weights): give the run's {MODEL_FILE}, or evaluate this model with notebook 04 first"
        )


# --------------------------------------------------------------------------- before Keras
def read_run(model_path: str | Path) -> tuple[dict, Config | None]:
    """The decision rule and the Config (None without config.yaml) of the run that
    ``model_path`` belongs to, checked without loading Keras."""
    path = Path(model_path)
    if path.is_dir():
        raise ValueError(
            f"--model: {path} is a folder; expected a run's model file, e.g. {path / 'model.keras'}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"--model: {path} does not exist")
    from bcnb.run.artifacts import load_decision

    rule = load_decision(path.parent)
    cfg = load_run_config(path.parent) if (path.parent / CONFIG_FILE).is_file() else None
    if cfg and cfg.tiles_per_image:  # its inputs were tiles; a squashed whole image is another input
        raise ValueError(
            f"--model: {path} was trained on tiles (tiles_per_image={cfg.tiles_per_image}); "
            "bcnb predict takes models of whole images"
        )
    return rule, cfg


def find_images(targets: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every file that ``targets`` name (files, and folders searched through), in order.

    Hidden files in folders are left out; whether the rest are images is
    :func:`check_image`'s to say, so that none is skipped without a word.
    """
    targets = [Path(targets)] if isinstance(targets, (str, Path)) else [Path(t) for t in targets]
    if not targets:
        raise ValueError("expected at least one image file or folder")
    # All of them first: a typo in the third path is named before any work is done.
    missing = [str(target) for target in targets if not (target.exists() or target.is_symlink())]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such file or folder")
    files = [path for target in targets for path in _files_in(target)]
    return list(dict.fromkeys(files))  # a file named twice (itself and its folder) once


def _files_in(target: Path) -> list[Path]:
    """``target`` itself, or every file under the folder but hidden ones, sorted."""
    if not target.is_dir():
        return [target]
    files = sorted(
        path
        for path in target.rglob("*")
        if not path.is_dir() and not any(part.startswith(".") for part in path.relative_to(target).parts)
    )
    if not files:
        raise ValueError(f"{target}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def check_image(path: str | Path) -> str:
    """Why bcnb predict refuses ``path``, or "" for an image it can classify."""
    path = Path(path)
    if path.exists() and not path.is_file():
        return "not a regular file"  # a pipe or a device: reading it could wait forever
    if path.exists() and path.suffix.lower() not in IMAGE_SUFFIXES:
        expected = ", ".join(IMAGE_SUFFIXES)
        return f"not a supported image type ({path.suffix or 'no suffix'}; expected {expected})"
    return inspect_file(path)[0] or _too_small(path)


def _too_small(path: Path) -> str:
    """Why an image is too small to classify, or "" (its header only is read)."""
    with Image.open(path) as image:
        width, height = image.size
    if min(width, height) >= MIN_SIDE:
        return ""
    return f"too small to classify ({width}x{height} pixels; expected at least {MIN_SIDE} on each side)"


def example_images(split: pd.DataFrame, count: int = EXAMPLE_COUNT) -> list[Path]:
    """``count`` test images of ``split``: the classes take turns, each image from another
    patient while the split has patients left; the same ones every time."""
    test = split[split["split"] == "test"].sort_values(["patient_id", "path"])
    if test.empty:
        raise ValueError("split: no test images to take examples from")
    # Every patient's first image before anyone's second, then benign and malignant in turn.
    test = test.assign(visit=test.groupby("patient_id").cumcount()).sort_values(["visit", "patient_id"])
    order = {name: rank for rank, name in enumerate(CLASSES)}
    rank = test["label"].map(order).fillna(len(order))  # a label of another task: after both
    test = test.assign(turn=test.groupby("label").cumcount(), rank=rank)
    picked = test.sort_values(["turn", "rank", "label"], kind="stable").head(count)
    return [Path(path) for path in picked["path"]]


def run_examples(model_path: str | Path, count: int = EXAMPLE_COUNT) -> list[Path]:
    """A few of the run's own test images (split.csv beside ``model_path``), to try it on."""
    return example_images(load_split(Path(model_path).parent), count)


# --------------------------------------------------------------------------- predicting
def predict_files(predictor: Predictor, paths: list[Path], cam_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per file: its calibrated malignancy (probability and percent) and label, or
    the reason it was refused. With ``cam_dir``, a Grad-CAM overlay PNG per image."""
    from bcnb.data.tasks import malignant_probability
    from bcnb.evaluate.calibrate import as_percent
    from bcnb.evaluate.decision import apply_decision
    from bcnb.evaluate.gradcam import gradcam, overlay
    from bcnb.evaluate.tta import tta_probabilities

    position = {path: i for i, path in enumerate(paths)}
    problems = {path: check_image(path) for path in paths}
    readable = [path for path in paths if not problems[path]]
    rows = [{**_refused(path, problems[path]), **predictor.provenance()} for path in paths if problems[path]]
    for start in range(0, len(readable), predictor.batch_size):
        batch = readable[start : start + predictor.batch_size]
        images = np.stack([predictor.preparation.prepare(path) for path in batch])
        if predictor.tta:
            probabilities = tta_probabilities(predictor.model, [(images, None)])
        else:
            probabilities = malignant_probability(predictor.model.predict(images, verbose=0))
        calibrated, labels = apply_decision(predictor.rule, probabilities)
        for path, probability, label in zip(batch, calibrated, labels):
            rows.append(
                {
                    "file": str(path),
                    "malignant": as_percent(probability),
                    "probability": round(float(probability), 4),
                    "label": label,
                    "refused": "",
                    **predictor.provenance(),
                }
            )
        if cam_dir is not None:
            heat, _ = gradcam(predictor.model, images, called_malignant=labels == "malignant")
            for row, path, image, cam in zip(rows[-len(batch) :], batch, images, heat):
                # Numbered: two folders may hold files of the same name.
                name = f"{position[path]:04d}_{path.stem}_gradcam.png"
                row["grad_cam"] = str(save_overlay(overlay(image, cam), Path(cam_dir) / name))
    order = {str(path): i for path, i in position.items()}
    return pd.DataFrame(rows).sort_values("file", key=lambda names: names.map(order)).reset_index(drop=True)


def _refused(path: Path, problem: str) -> dict:
    return {"file": str(path), "malignant": "", "probability": np.nan, "label": "", "refused": problem}


def save_overlay(pixels: np.ndarray, path: Path) -> Path:
    """Write an overlay as a PNG file, whole or not at all."""
    return replace_from_writer(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


# --------------------------------------------------------------------------- what is printed
def describe_rule(rule: dict) -> str:
    """The line above the predictions: the threshold, on what, and how it was chosen."""
    how = rule.get("threshold_rule", "")
    if not rule.get("threshold_rule_applied", True):  # decision.json from before the flag: applied
        chosen = f"the paper's 0.5, because validation could not choose ({rule['threshold_reason']})"
    elif how == "fixed":
        chosen = "the paper's 0.5, fixed, not chosen on data"
    elif how == "youden":
        chosen = "chosen on validation (Youden's J)"
    elif how == "sensitivity":
        target = rule["target_sensitivity"]
        chosen = f"chosen on validation (the highest that finds {target:.0%} of malignant images there)"
    else:
        chosen = f"by the rule {how or 'not recorded'}"
    return (
        f"threshold {rule['threshold']:.3f} on the calibrated probability of malignancy, {chosen}; "
        f"calibration temperature {rule['temperature']:.2f}"
    )


def describe_predictions(table: pd.DataFrame, rule: dict) -> list[str]:
    """One line per predicted image of ``table`` (refused ones left out): the label in
    capitals and the probability beside the threshold, in words that cannot be misread."""
    shown = table[table["refused"] == ""]
    width = max((len(name) for name in shown["file"]), default=0)
    return [
        _describe_one(row.file.ljust(width), row.probability, row.label == "malignant", rule["threshold"])
        for row in shown.itertuples()
    ]


def _describe_one(file: str, probability: float, malignant: bool, threshold: float) -> str:
    percent, bar = _percents(probability, threshold, malignant)
    label, side = ("MALIGNANT", "at or above") if malignant else ("BENIGN   ", "below")
    return f"{file}  {label}  probability of malignancy {percent} ({side} the {bar} threshold)"


def _percents(probability: float, threshold: float, malignant: bool) -> tuple[str, str]:
    """Probability and threshold in percent, with as many decimals as it takes for them to
    read in the label's order: never "79% (below the 78.9% threshold)"."""
    for digits in (0, 1, 2):
        (percent, value), (bar, limit) = _shown(probability, digits), _shown(threshold, max(digits, 1))
        if (value >= limit) == malignant:
            break
    return percent, bar


def _shown(p: float, digits: int) -> tuple[str, float]:
    """``p`` in percent rounded half up to ``digits`` decimals: (as printed, as read)."""
    from bcnb.evaluate.calibrate import as_percent

    if digits == 0 and not 0.01 <= p <= 0.99:  # "<1%" and ">99%", as everywhere in bcnb
        return as_percent(p), 0.5 if p < 0.01 else 99.5
    value = np.floor(round(100 * p * 10**digits, 9) + 0.5) / 10**digits
    return f"{value:.{digits}f}%", float(value)
