"""Stage 3, training: fit the classifier head, fast on cached features or end to end.

With the base frozen, called with ``training=False`` and no augmentation, the base is a
fixed function of the image. So its pooled features can be computed once, stored
(:mod:`bcnb.features`), and the head (Dropout + Dense) trained on them: the same model as
training through the base, ``epochs`` times fewer passes through ResNet50V2. The paper
remarks that training a classifier by feature extraction is the faster method;
``feature_cache=false`` trains end to end through the frozen base instead, as the Keras
transfer-learning guide does.

Fine-tuning (``fine_tune_layers > 0``) is a second phase beyond the paper: the top of the
base learns too, at a low learning rate, from (optionally augmented) images; it starts from
the head's best weights and keeps them unless the validation loss improves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.augment import Augmentation
from bcnb.checkpoint import (
    CHECKPOINT_FILE,
    FINE_TUNE_CHECKPOINT_FILE,
    TrainingState,
    capture,
    restore,
    run_fingerprint,
)
from bcnb.config import Config
from bcnb.datasets import image_dataset, labels_of, make_dataset
from bcnb.features import FeatureBatches, features_of
from bcnb.files import read_run_json, write_json_atomic, write_text_atomic
from bcnb.model import classifier_head, unfreeze_top_layers
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
    for epoch in range(state.epoch, epochs if not state.done else 0):
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
    if not state.done:
        state.done = True  # a resumed run must not train on past an early stop
        if checkpoint:
            state.save(checkpoint)
    for variable, value in zip(trainee.trainable_variables, state.best_weights):
        variable.assign(value)
    return state


def train_model(
    cfg: Config, model: keras.Model, split: pd.DataFrame, progress: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """Stage entry point: train ``model`` on the split's train and val images.

    The head first; then, with ``fine_tune_layers``, the top of the base as well. Resumes
    from the run folder's checkpoints when they are of this very run. Writes
    ``history.csv`` and ``training.json`` (features too, with ``feature_cache``) and returns
    the history, one row per epoch, with the phase of each. ``progress`` receives one line
    per epoch.
    """
    run_dir = Path(cfg.run_dir)
    train = split[split["split"] == "train"]
    class_weight = balanced_class_weight(labels_of(train)) if cfg.class_weight == "balanced" else None
    fingerprint = run_fingerprint(cfg.to_dict(), split)
    started = time.perf_counter()
    trainee, train_data, val_data = _training_data(cfg, model, split)
    seed_everything(cfg.seed)  # the same dropout, cache or not
    compile_for_training(trainee, cfg.learning_rate)
    head = _run_phase(trainee, train_data, val_data, cfg.epochs, cfg, run_dir / CHECKPOINT_FILE,
                      TrainingState(fingerprint), class_weight, progress)  # fmt: skip
    history = [{**row, "phase": "head"} for row in head.history]
    fine_tuned = []
    if cfg.fine_tunes:
        fine_tuned = unfreeze_top_layers(model, cfg.fine_tune_layers)
        tuned = fine_tune(cfg, model, split, head, class_weight, progress)
        history += [{**row, "phase": "fine_tune"} for row in tuned.history]
    seconds = time.perf_counter() - started
    # The full model gets the same loss and metrics, so evaluate() reports them. Building
    # its optimizer now lets the saved model load without a "skipping optimizer" warning.
    compile_for_training(model, cfg.fine_tune_learning_rate if cfg.fine_tunes else cfg.learning_rate)
    model.optimizer.build(model.trainable_variables)
    frame = history_frame(history)
    save_history(frame, run_dir, cfg, seconds, fine_tuned)
    for name in (CHECKPOINT_FILE, FINE_TUNE_CHECKPOINT_FILE):
        (run_dir / name).unlink(missing_ok=True)  # finished: a re-run trains afresh
    return frame


def fine_tune(
    cfg: Config,
    model: keras.Model,
    split: pd.DataFrame,
    head: TrainingState,
    class_weight: dict[int, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingState:
    """The second phase: the whole model (top of the base unfrozen) learns from images.

    Call after :func:`bcnb.model.unfreeze_top_layers`. It starts from the head's best
    epoch, whose validation loss it must beat for any of its epochs to be kept.
    """
    compile_for_training(model, cfg.fine_tune_learning_rate)
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    start = TrainingState(head.fingerprint, best_loss=head.best_loss,
                          best_weights=[np.array(v.numpy()) for v in model.trainable_variables])  # fmt: skip
    say = (lambda line: progress(f"fine-tuning {line}")) if progress else None
    return _run_phase(model, _image_epochs(cfg, train, cfg.seed + 1_000_000), image_dataset(cfg, val),
                      cfg.fine_tune_epochs, cfg, Path(cfg.run_dir) / FINE_TUNE_CHECKPOINT_FILE, start,
                      class_weight, say)  # fmt: skip


def _run_phase(trainee, train_data, val_data, epochs, cfg, checkpoint, fresh, class_weight, progress):
    """Fit ``trainee`` (compiled) from its checkpoint of this run if there is one, else from
    ``fresh``."""
    trainee.optimizer.build(trainee.trainable_variables)
    state = TrainingState.load(checkpoint, fresh.fingerprint)
    if state:
        restore(state, trainee)
    return fit(trainee, train_data, val_data, epochs, cfg.patience, state or fresh, checkpoint,
               class_weight, progress)  # fmt: skip


def _image_epochs(cfg: Config, table: pd.DataFrame, seed: int) -> Callable[[int], object]:
    """train_data(epoch) over images: shuffled, and augmented when asked, by seed + epoch."""
    augmentation = Augmentation.from_config(cfg) if cfg.augment else None

    def images(epoch: int):
        return make_dataset(table, cfg.img_size, cfg.batch_size, cfg.resize, True, seed + epoch, augmentation)

    return images


def _training_data(cfg: Config, model: keras.Model, split: pd.DataFrame):
    """What trains the head, on what: (trainee, train_data(epoch) -> batches, val_data).

    With the feature cache, the head learns from features/all.npy (augmentation cannot
    apply: the features are those of the original images); without, the whole model
    learns from images. Each epoch's shuffle is seeded by seed + epoch.
    """
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    if not cfg.feature_cache:
        return model, _image_epochs(cfg, train, cfg.seed), image_dataset(cfg, val)
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


def save_history(
    history: pd.DataFrame, run_dir: Path, cfg: Config, seconds: float, fine_tuned: list[str] = ()
) -> None:
    """history.csv, and training.json: what training used and what it did (the report's source)."""
    write_text_atomic(run_dir / HISTORY_FILE, history.to_csv(index=False))
    write_json_atomic(run_dir / TRAINING_FILE, training_summary(history, cfg, seconds, fine_tuned))


def training_summary(history: pd.DataFrame, cfg: Config, seconds: float, fine_tuned: list[str] = ()) -> dict:
    """What training used (optimizer, learning rate, ...) and what it did (epochs, best epoch)."""
    return {
        "optimizer": "Adam",
        "loss": "binary cross-entropy",
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "epochs_requested": cfg.epochs,
        "patience": cfg.patience,
        "epochs_run": len(history),
        "best_epoch": best_epoch(history),
        "feature_cache": cfg.feature_cache,
        "class_weight": cfg.class_weight,
        "augment": cfg.augment,
        "augmentation": {
            "brightness": cfg.augment_brightness,
            "contrast": cfg.augment_contrast,
            "stain": cfg.augment_stain,
        },
        "fine_tune_layers": cfg.fine_tune_layers,
        "fine_tune_learning_rate": cfg.fine_tune_learning_rate,
        "fine_tune_epochs_requested": cfg.fine_tune_epochs if cfg.fine_tunes else 0,
        "fine_tune_epochs_run": int((history["phase"] == "fine_tune").sum()),
        "fine_tuned_layers": list(fine_tuned),  # layers of the base that learned (BN excluded)
        "seconds": round(seconds, 2),
    }


def load_training_summary(run_dir: str | Path) -> dict:
    return read_run_json(run_dir, TRAINING_FILE, "03_train")


def load_history(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 03_train first")
    return pd.read_csv(path)
