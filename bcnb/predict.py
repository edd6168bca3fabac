"""Stage 5, predict: a finished run's model and decision rule applied to new images.

For each image: the calibrated probability of malignancy in percent, the label at the
threshold chosen on validation (``decision.json``, written by notebook 04), and optionally a
Grad-CAM overlay. Files that are not readable images are refused one by one with the reason;
a model file is only loaded with Keras' safe mode on, so a file that would run arbitrary code
(a Lambda layer) is refused too. Teaching and research only, never diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image

from bcnb.calibrate import as_percent
from bcnb.config import CONFIG_FILE, Config
from bcnb.decision import apply_decision, load_decision
from bcnb.files import replace_from_writer
from bcnb.gradcam import gradcam, overlay
from bcnb.images import IMAGE_SUFFIXES, load_for_model
from bcnb.model import WEIGHTS_FILE, WeightsInfo, load_model, load_weights_info
from bcnb.modelcard import MODEL_CARD_FILE
from bcnb.report import DISCLAIMER
from bcnb.scan import inspect_file
from bcnb.stain import StainNormalizer, load_normalizer
from bcnb.subtypes import malignant_probability
from bcnb.tta import tta_probabilities

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Predictor:
    """A trained model with the decision rule and image preparation of its run."""

    model: keras.Model
    rule: dict  # temperature and threshold, from decision.json
    img_size: int
    resize: str
    weights: WeightsInfo | None = None  # the base's weights (weights.json); None: unknown
    trained_on: str = UNKNOWN  # the run's dataset: "synthetic" or its path
    batch_size: int = Config.batch_size  # the run's
    model_card: Path | None = None  # the run's model_card.md, where notebook 04 wrote one
    stain: StainNormalizer | None = None  # the run's stain normalisation, if it used one
    tta: bool = False  # the run's decision was fitted on 8-view means: so are these answers

    @classmethod
    def from_run(cls, model_path: str | Path) -> Predictor:
        """Load ``model_path`` (a run's model.keras) and the decision rule beside it."""
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"--model: {path} does not exist")
        try:
            model = load_model(path)
        except Exception as error:  # Keras raises many kinds; all mean "not loadable safely"
            reason = " ".join(str(error).split())[:200]
            raise ValueError(f"--model: {path} cannot be loaded in safe mode ({reason})") from None
        rule = load_decision(path.parent)
        config = path.parent / CONFIG_FILE
        cfg = Config.from_file(config) if config.is_file() else Config()
        if cfg.tiles_per_image:  # its inputs were tiles; a squashed whole image is another input
            raise ValueError(
                f"--model: {path} was trained on tiles (tiles_per_image={cfg.tiles_per_image}); "
                "bcnb predict takes models of whole images"
            )
        weights = load_weights_info(path.parent) if (path.parent / WEIGHTS_FILE).is_file() else None
        trained_on = cfg.dataset if config.is_file() else UNKNOWN
        card = path.parent / MODEL_CARD_FILE
        return cls(
            model,
            rule,
            int(model.input_shape[1]),
            cfg.resize,
            weights,
            trained_on,
            cfg.batch_size,
            card if card.is_file() else None,
            load_normalizer(path.parent, cfg.stain_normalization),
            cfg.tta,
        )

    def notes(self) -> list[str]:
        """One line each: where the model's base and training data came from, when that
        limits what its answers mean, then the disclaimer."""
        notes = (self._weights_note(), self._data_note(), self._card_note(), DISCLAIMER)
        return [line for line in notes if line]

    def banner(self) -> str:
        """The weights as notebooks 02 and 04 show them, the note on the data, the disclaimer."""
        weights = (self.weights.warning() or self.weights.summary()) if self.weights else self._weights_note()
        return "\n".join(line for line in (weights, self._data_note(), self._card_note(), DISCLAIMER) if line)

    def _weights_note(self) -> str:
        if self.weights is None:
            return f"WARNING: no {WEIGHTS_FILE} beside the model: whether its base was pretrained is unknown"
        if not self.weights.pretrained:
            why = self.weights.source
            return f"WARNING: the base had RANDOM weights, not ImageNet weights ({why}): no transfer learning"
        return ""

    def _data_note(self) -> str:
        if self.trained_on == "synthetic":
            return "WARNING: trained on bcnb's built-in generated images, not real tissue"
        if self.trained_on == UNKNOWN:
            return f"WARNING: no {CONFIG_FILE} beside the model: what it was trained on is unknown"
        return ""

    def _card_note(self) -> str:
        if self.model_card is None:
            return f"no {MODEL_CARD_FILE} beside the model: notebook 04 writes what it is for and how it did"
        return f"model card: {self.model_card} (what this model is for, how it was measured, where it fails)"

    def provenance(self) -> dict[str, str]:
        """The columns every prediction carries: the base's weights and the training data."""
        return {"weights": self.weights.used if self.weights else UNKNOWN, "trained_on": self.trained_on}


def find_images(target: str | Path) -> list[Path]:
    """The image files named by ``target``: one file, or every image under a folder."""
    target = Path(target)
    if target.is_file():
        return [target]
    if target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise ValueError(f"{target}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return found
    raise FileNotFoundError(f"{target}: no such file or folder")


def predict_files(predictor: Predictor, paths: list[Path], cam_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per file: its calibrated malignancy (probability and percent) and label, or
    the reason it was refused. With ``cam_dir``, a Grad-CAM overlay PNG per image."""
    position = {path: i for i, path in enumerate(paths)}
    problems = {path: inspect_file(path)[0] for path in paths}
    readable = [path for path in paths if not problems[path]]
    rows = [{**_refused(path, problems[path]), **predictor.provenance()} for path in paths if problems[path]]
    for start in range(0, len(readable), predictor.batch_size):
        batch = readable[start : start + predictor.batch_size]
        images = np.stack(
            [load_for_model(p, predictor.img_size, predictor.resize, stain=predictor.stain) for p in batch]
        )
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
    return replace_from_writer(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
