"""Stage 3, training: fit the classifier head, fast on cached features or end to end.

With the base frozen, called with ``training=False`` and no augmentation, the base is a
fixed function of the image. So its pooled features can be computed once, stored, and the
head (Dropout + Dense) trained on them: the same model as training through the base,
``epochs`` times fewer passes through ResNet50V2. The paper remarks that training a
classifier by feature extraction is the faster method; ``feature_cache=false`` trains end to
end through the frozen base instead, as the Keras transfer-learning guide does.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.datasets import image_dataset, labels_of, make_dataset, tiles_of
from bcnb.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from bcnb.model import classifier_head, feature_extractor
from bcnb.seeds import seed_everything

HISTORY_FILE = "history.csv"
TRAINING_FILE = "training.json"
FEATURES_DIR = "features"


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


# --------------------------------------------------------------------------- features
def extract_features(
    model: keras.Model, table: pd.DataFrame, img_size: int, batch_size: int, resize: str = "squash"
) -> np.ndarray:
    """Pooled base features (n_images, 2048) of the images in ``table``, in table order."""
    images = make_dataset(table, img_size, batch_size, resize).map(lambda image, label: image)
    return feature_extractor(model).predict(images, verbose=0)


def feature_cache_key(model: keras.Model, table: pd.DataFrame, img_size: int, resize: str = "squash") -> str:
    """A hash of everything the features depend on: files, tiles, image size and resize
    mode, and the base's weights."""
    digest = hashlib.sha256(f"img_size={img_size}|resize={resize}".encode())
    for path, tile, tiles in zip(table["path"], *tiles_of(table)):
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{tile}/{tiles}\n".encode())
    for weight in feature_extractor(model).weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def cached_features(
    model: keras.Model,
    table: pd.DataFrame,
    img_size: int,
    batch_size: int,
    path: str | Path,
    resize: str = "squash",
) -> np.ndarray:
    """Features of ``table``'s images, read from ``path`` when its key still matches.

    A cache whose key differs (other images, size or weights) or that cannot be read is
    recomputed and replaced, never trusted.
    """
    path = Path(path)
    key = feature_cache_key(model, table, img_size, resize)
    stored = _read_feature_file(path)
    if stored is not None and stored[0] == key:
        return stored[1]
    features = extract_features(model, table, img_size, batch_size, resize)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), features=features)
    write_bytes_atomic(path, buffer.getvalue())
    return features


def _read_feature_file(path: Path) -> tuple[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return str(stored["key"]), stored["features"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # unreadable: treat as absent


# --------------------------------------------------------------------------- fitting
def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    """Weights that make each class count equally in the loss: n / (2 * n_class).

    On BreakHis (31% benign) a benign image then weighs about 1.6, a malignant one 0.73.
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    return {cls: len(labels) / (2 * count) for cls, count in enumerate(counts) if count}


def train_head(
    model: keras.Model,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    verbose: int | str = 2,
    class_weight: dict[int, float] | None = None,
) -> keras.callbacks.History:
    """Fit the model's own Dropout + Dense layers on pooled features."""
    head = classifier_head(model)
    compile_for_training(head, learning_rate)
    return head.fit(
        train_features,
        train_labels.reshape(-1, 1),
        validation_data=(val_features, val_labels.reshape(-1, 1)),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[early_stopping(patience)],
        class_weight=class_weight,
        verbose=verbose,
    )


def train_end_to_end(
    model: keras.Model,
    train_ds,
    val_ds,
    epochs: int,
    learning_rate: float,
    patience: int,
    verbose: int | str = 2,
    class_weight: dict[int, float] | None = None,
) -> keras.callbacks.History:
    """Fit the whole model on images; the frozen base runs forward on every epoch."""
    compile_for_training(model, learning_rate)
    return model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a tf.data pipeline
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
        features = {
            name: cached_features(
                model, part, cfg.img_size, cfg.batch_size, run_dir / FEATURES_DIR / f"{name}.npz", cfg.resize
            )
            for name, part in (("train", train), ("val", val))
        }
        seed_everything(cfg.seed)  # the same shuffles and dropout, cache or not
        history = train_head(
            model, features["train"], labels_of(train), features["val"], labels_of(val),
            cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.patience, verbose, class_weight,
        )  # fmt: skip
    else:
        train_ds, val_ds = image_dataset(cfg, train, shuffle=True), image_dataset(cfg, val)
        history = train_end_to_end(
            model, train_ds, val_ds, cfg.epochs, cfg.learning_rate, cfg.patience, verbose, class_weight
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
