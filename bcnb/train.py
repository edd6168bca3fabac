"""Stage 3, training: fit the classifier head, fast on cached features or end to end.

With the base frozen, called with ``training=False`` and no augmentation, the base is a
fixed function of the image. So its pooled features can be computed once, stored
(:mod:`bcnb.features`), and the head (Dropout + Dense) trained on them: the same model as
training through the base, ``epochs`` times fewer passes through ResNet50V2. The paper
remarks that training a classifier by feature extraction is the faster method;
``feature_cache=false`` trains end to end through the frozen base instead, as the Keras
transfer-learning guide does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.datasets import image_dataset, labels_of
from bcnb.features import FeatureBatches, features_of
from bcnb.files import write_json_atomic, write_text_atomic
from bcnb.model import classifier_head
from bcnb.seeds import seed_everything

HISTORY_FILE = "history.csv"
TRAINING_FILE = "training.json"


def compile_for_training(model: keras.Model, learning_rate: float) -> None:
    """Adam on binary cross-entropy, tracking accuracy and ROC AUC."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
    )


def early_stopping(patience: int) -> keras.callbacks.EarlyStopping:
    """Stop when validation loss has not improved for ``patience`` epochs; keep the best."""
    return keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)


# --------------------------------------------------------------------------- fitting
def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    """Weights that make each class count equally in the loss: n / (2 * n_class).

    On BreakHis (31% benign) a benign image then weighs about 1.6, a malignant one 0.73.
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    return {cls: len(labels) / (2 * count) for cls, count in enumerate(counts) if count}


def fit(
    trainee: keras.Model,
    train_data,
    val_data,
    epochs: int,
    learning_rate: float,
    patience: int,
    verbose: int | str = 2,
    class_weight: dict[int, float] | None = None,
) -> keras.callbacks.History:
    """Adam on binary cross-entropy with early stopping; the data come in batches.

    ``trainee`` is the head on cached features, or the whole model on images (where the
    frozen base runs forward on every epoch). Either way only the Dense layer learns.
    """
    compile_for_training(trainee, learning_rate)
    return trainee.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        shuffle=False,  # the batches shuffle themselves; Keras cannot shuffle a pipeline
        callbacks=[early_stopping(patience)],
        class_weight=class_weight,
        verbose=verbose,
    )


def train_model(cfg: Config, model: keras.Model, split: pd.DataFrame, verbose: int | str = 2) -> pd.DataFrame:
    """Stage entry point: train ``model`` on the split's train and val images.

    Writes ``history.csv`` and ``training.json`` into the run folder (features too, with
    ``feature_cache``) and returns the history, one row per epoch.
    """
    run_dir = Path(cfg.run_dir)
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    class_weight = balanced_class_weight(labels_of(train)) if cfg.class_weight == "balanced" else None
    seed_everything(cfg.seed)
    started = time.perf_counter()
    if cfg.feature_cache:
        path = features_of(cfg, model, split)
        seed_everything(cfg.seed)  # the same shuffles and dropout, cache or not
        trainee = classifier_head(model)  # shares the model's Dropout and Dense layers
        train_rows, val_rows = (
            np.flatnonzero(split["split"].to_numpy() == name) for name in ("train", "val")
        )
        train_data = FeatureBatches(path, labels_of(train), cfg.batch_size, True, cfg.seed, train_rows)
        val_data = FeatureBatches(path, labels_of(val), cfg.batch_size, rows=val_rows)
    else:
        trainee = model
        train_data, val_data = image_dataset(cfg, train, shuffle=True), image_dataset(cfg, val)
    history = fit(
        trainee, train_data, val_data, cfg.epochs, cfg.learning_rate, cfg.patience, verbose, class_weight
    )
    seconds = time.perf_counter() - started
    # The full model gets the same loss and metrics, so evaluate() reports them. Building
    # its optimizer now lets the saved model load without a "skipping optimizer" warning.
    compile_for_training(model, cfg.learning_rate)
    model.optimizer.build(model.trainable_variables)
    frame = history_frame(history)
    save_history(frame, run_dir, cfg, seconds)
    return frame


def history_frame(history: keras.callbacks.History) -> pd.DataFrame:
    """One row per epoch (numbered from 1) with every loss and metric Keras logged."""
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame


def best_epoch(history: pd.DataFrame) -> int:
    """The epoch whose weights were kept: lowest validation loss."""
    return int(history.loc[history["val_loss"].idxmin(), "epoch"])


def save_history(history: pd.DataFrame, run_dir: Path, cfg: Config, seconds: float) -> None:
    write_text_atomic(run_dir / HISTORY_FILE, history.to_csv(index=False))
    summary = {
        "epochs_requested": cfg.epochs,
        "epochs_run": len(history),
        "best_epoch": best_epoch(history),
        "feature_cache": cfg.feature_cache,
        "class_weight": cfg.class_weight,
        "seconds": round(seconds, 2),
    }
    write_json_atomic(run_dir / TRAINING_FILE, summary)


def load_training_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 03_train first")
    return json.loads(path.read_text())


def load_history(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 03_train first")
    return pd.read_csv(path)
