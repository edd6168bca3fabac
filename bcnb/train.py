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
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.checkpoint import CHECKPOINT_FILE, TrainingState, capture, restore, run_fingerprint
from bcnb.config import Config
from bcnb.datasets import image_dataset, labels_of, make_dataset
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
    train_data: Callable[[int], object],
    val_data,
    epochs: int,
    patience: int,
    state: TrainingState,
    checkpoint: Path | None = None,
    class_weight: dict[int, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingState:
    """Train epoch by epoch, with early stopping, from ``state`` (a fresh or a resumed one).

    ``trainee`` is compiled: the head on cached features, or the whole model on images (the
    frozen base then runs forward on every epoch); either way only the Dense layer learns.
    ``train_data(epoch)`` gives that epoch's batches, shuffled by the seed and the epoch's
    number alone. After each epoch the state is saved to ``checkpoint``; when training ends
    the best epoch's weights are put back (what Keras' EarlyStopping does, kept here so that
    its bookkeeping survives an interruption).
    """
    for epoch in range(state.epoch, epochs):
        logs = trainee.fit(train_data(epoch), validation_data=val_data, epochs=1, verbose=0,
                           shuffle=False, class_weight=class_weight).history  # fmt: skip
        row = {name: float(values[-1]) for name, values in logs.items()}
        state.history.append(row)
        state.epoch = epoch + 1
        state.wait += 1
        if row["val_loss"] < state.best_loss:
            state.best_loss, state.best_epoch, state.wait = row["val_loss"], epoch + 1, 0
            state.best_weights = [np.array(v.numpy()) for v in trainee.trainable_variables]
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}: " + " - ".join(f"{k} {v:.4f}" for k, v in row.items()))
        if checkpoint:
            capture(state, trainee)
            state.save(checkpoint)
        if state.wait >= patience and epoch > 0:
            break
    for variable, value in zip(trainee.trainable_variables, state.best_weights):
        variable.assign(value)
    return state


def train_model(
    cfg: Config, model: keras.Model, split: pd.DataFrame, progress: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """Stage entry point: train ``model`` on the split's train and val images.

    Resumes from the run folder's checkpoint when one of this very run is there. Writes
    ``history.csv`` and ``training.json`` (features too, with ``feature_cache``) and returns
    the history, one row per epoch. ``progress`` receives one line per epoch.
    """
    run_dir = Path(cfg.run_dir)
    train = split[split["split"] == "train"]
    class_weight = balanced_class_weight(labels_of(train)) if cfg.class_weight == "balanced" else None
    started = time.perf_counter()
    trainee, train_data, val_data = _training_data(cfg, model, split)
    seed_everything(cfg.seed)  # the same dropout, cache or not
    compile_for_training(trainee, cfg.learning_rate)
    trainee.optimizer.build(trainee.trainable_variables)
    checkpoint = run_dir / CHECKPOINT_FILE
    fingerprint = run_fingerprint(cfg.to_dict(), split)
    state = TrainingState.load(checkpoint, fingerprint)
    if state:
        restore(state, trainee)
    state = fit(trainee, train_data, val_data, cfg.epochs, cfg.patience, state or TrainingState(fingerprint),
                checkpoint, class_weight, progress)  # fmt: skip
    seconds = time.perf_counter() - started
    # The full model gets the same loss and metrics, so evaluate() reports them. Building
    # its optimizer now lets the saved model load without a "skipping optimizer" warning.
    compile_for_training(model, cfg.learning_rate)
    model.optimizer.build(model.trainable_variables)
    frame = history_frame(state.history)
    save_history(frame, run_dir, cfg, seconds)
    checkpoint.unlink(missing_ok=True)  # finished: a re-run trains afresh
    return frame


def _training_data(cfg: Config, model: keras.Model, split: pd.DataFrame):
    """What trains, on what: (trainee, train_data(epoch) -> batches, val_data).

    With the feature cache, the head learns from features/all.npy; without, the whole
    model learns from images. Each epoch's shuffle is seeded by seed + epoch.
    """
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    if not cfg.feature_cache:

        def images(epoch: int):
            return make_dataset(train, cfg.img_size, cfg.batch_size, cfg.resize, True, cfg.seed + epoch)

        return model, images, image_dataset(cfg, val)
    path = features_of(cfg, model, split)
    rows = {name: np.flatnonzero(split["split"].to_numpy() == name) for name in ("train", "val")}

    def features(epoch: int):
        return FeatureBatches(path, labels_of(train), cfg.batch_size, True, cfg.seed + epoch, rows["train"])

    # The head shares the model's Dropout and Dense layers: training it trains the model.
    return (
        classifier_head(model),
        features,
        FeatureBatches(path, labels_of(val), cfg.batch_size, rows=rows["val"]),
    )


def history_frame(history: list[dict]) -> pd.DataFrame:
    """One row per epoch (numbered from 1) with every loss and metric Keras logged."""
    frame = pd.DataFrame(history)
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
