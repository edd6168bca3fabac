"""Every file a run folder holds: its name, which notebook writes it, and its reader and writer.

This is the contract between the notebooks (they talk to each other only through the run
folder) and everything that reads a run afterwards: the report, the model card, a protocol's
summary, a sweep's table, ``bcnb predict``. Reading a run's records needs no TensorFlow: the
readers here return plain dicts and tables; the modules that own a record's meaning (the
weights, the decision rule) build their objects from them.

    RUN/
      .bcnb.json         what the folder is, and the record's digest   (bcnb.run.record)
      config.yaml        the record: every parameter of the run        (bcnb.run.record)
      dataset.json       where the images came from                    01
      split.csv          every image with its split                    01
      bad_images.csv     files left out, with why (on_bad_image=skip)  01
      stain_target.json  the fitted stain target; stain_skipped.csv    01
      weights.json       which weights the base really got             02
      model_initial.keras, model.keras                                 02, 03
      features/          the cached base features (all.npy, key, rows)  03
      checkpoint/        the resumable training state (while training) 03
      history.csv, training.json, logs/ (TensorBoard)                  03
      metrics.json, predictions.csv, decision.json                     04
      report.md, model_card.md, figures/                               04
      magnifications/    a protocol's models of one magnification     --per-magnification
      compare/           notebook 05's backbones                       05
      notebooks/         the executed notebooks and kernels.log        bcnb reproduce
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bcnb.run.files import write_json_atomic, write_text_atomic

# The run folder's own: what the folder is and the record's digest; the record itself.
MARKER_FILE = ".bcnb.json"
# 01: the data
DATASET_FILE = "dataset.json"
SPLIT_FILE = "split.csv"
BAD_IMAGES_FILE = "bad_images.csv"
STAIN_TARGET_FILE = "stain_target.json"  # the fitted target
STAIN_SKIPPED_FILE = "stain_skipped.csv"  # the images kept unnormalised, with the reason
# 02: the model
WEIGHTS_FILE = "weights.json"
INITIAL_MODEL_FILE = "model_initial.keras"
# 03: training
MODEL_FILE = "model.keras"
FEATURES_DIR = "features"
ALL_FEATURES = "all.npy"
SHARDS_DIR = "shards"  # bcnb extract --shard I/N writes features/shards/all.I-of-N.npy
CHECKPOINT_FILE = "checkpoint/training.npz"
FINE_TUNE_CHECKPOINT_FILE = "checkpoint/fine_tune.npz"
HISTORY_FILE = "history.csv"
TRAINING_FILE = "training.json"
LOGS_DIR = "logs"  # tensorboard=true: logs/head, logs/fine_tune
# 04: evaluation
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
DECISION_FILE = "decision.json"
REPORT_FILE = "report.md"
MODEL_CARD_FILE = "model_card.md"
FIGURES_DIR = "figures"
# bcnb reproduce --folds K --per-magnification: each fold's heads of one magnification
MAGNIFICATIONS_DIR = "magnifications"  # magnifications/40X/: history, head.keras, predictions
HEAD_MODEL_FILE = "head.keras"
# 05: the backbone comparison
COMPARE_DIR = "compare"
# bcnb reproduce: the executed notebooks, and what their kernels wrote outside them
EXECUTED_DIR = "notebooks"  # each takes its name only once it has run to its end
KERNEL_LOG = "kernels.log"
# A protocol's folder (--folds, --repeats): summary.md, .json, .png; a sweep's: sweep.md, .csv
SUMMARY = "summary"
SWEEP_TABLE = "sweep"

# Which notebook writes what, for the message when a file is not there yet.
_WRITTEN_BY = {
    DATASET_FILE: "01_data",
    SPLIT_FILE: "01_data",
    WEIGHTS_FILE: "02_model",
    TRAINING_FILE: "03_train",
    HISTORY_FILE: "03_train",
    METRICS_FILE: "04_evaluate",
    DECISION_FILE: "04_evaluate",
    PREDICTIONS_FILE: "04_evaluate",
}


def feature_cache_files(features: str | Path) -> list[Path]:
    """A feature cache's files that are there: the features (``.npy``), their key and the rows
    they are of (bcnb.train.features says what each holds)."""
    features = Path(features)
    paths = (features, features.with_suffix(".key.json"), features.with_suffix(".rows.csv"))
    return [path for path in paths if path.is_file()]


def path_of(run_dir: str | Path, name: str) -> Path:
    """The file ``name`` of a run; FileNotFoundError naming the notebook that writes it."""
    path = Path(run_dir) / name
    if not path.is_file():
        notebook = _WRITTEN_BY.get(name, "the notebook that writes it")
        raise FileNotFoundError(f"{path} not found: run notebook {notebook} first")
    return path


def read_json(run_dir: str | Path, name: str) -> Any:
    """A JSON record of a run (see the names above)."""
    return json.loads(path_of(run_dir, name).read_text())


def write_json(run_dir: str | Path, name: str, value: Any) -> Path:
    """Write a JSON record whole or not at all; NaN (an AUC on one class) becomes null."""
    return write_json_atomic(Path(run_dir) / name, _without_nan(value))


def _without_nan(value):
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """A CSV record of a run; patient ids stay text (14-22549 is not a number)."""
    return pd.read_csv(path_of(run_dir, name), dtype={"patient_id": str})


def write_table(run_dir: str | Path, name: str, table: pd.DataFrame) -> Path:
    return write_text_atomic(Path(run_dir) / name, table.to_csv(index=False))


# --------------------------------------------------------------------------- by record
def load_split(run_dir: str | Path) -> pd.DataFrame:
    """split.csv: one row per image (per tile, when tiling) with its split."""
    return read_table(run_dir, SPLIT_FILE)


def load_dataset_info(run_dir: str | Path) -> dict:
    return read_json(run_dir, DATASET_FILE)


def load_training_summary(run_dir: str | Path) -> dict:
    return read_json(run_dir, TRAINING_FILE)


def load_history(run_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(path_of(run_dir, HISTORY_FILE))


def load_metrics(run_dir: str | Path) -> dict:
    return read_json(run_dir, METRICS_FILE)


def load_decision(run_dir: str | Path) -> dict:
    return read_json(run_dir, DECISION_FILE)


def load_predictions(run_dir: str | Path) -> pd.DataFrame:
    return read_table(run_dir, PREDICTIONS_FILE)
