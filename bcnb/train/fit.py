"""Stage 3, training: the inputs that ``fit`` needs, and the same ``fit`` as notebook 03.

Notebook 03 writes the paper's lines out: ``compile(Adam, binary cross-entropy, accuracy)``
and ``fit(train, validation_data=val, epochs=..., callbacks=[EarlyStopping, ...])``. This
module gives those lines their inputs and keeps what is easy to get wrong:

- **Cached features.** With the base frozen, called with ``training=False`` and no
  augmentation, it is a fixed function of the image: its pooled features are computed once
  (:mod:`bcnb.train.features`) and the head (Dropout + Dense) trains on them, the same model as
  training through the base, ``epochs`` times fewer passes through ResNet50V2 (the paper:
  "training a classifier by feature extraction is a faster method"). Both ways run the same
  ``fit`` on different inputs (:func:`training_inputs`), in the same order.
- **The order of each epoch** depends on the pair (seed, epoch) alone, so a resumed run sees
  what an uninterrupted one saw, and runs with neighbouring seeds share no draws.
- **Resuming** a killed run (:class:`bcnb.train.checkpoint.ResumeTraining`).

:func:`train_model` is those steps in one call, for notebook 05, the tests and anyone who
wants the result without the lesson; a test keeps it equal to notebook 03.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.config import Config
from bcnb.data.augment import Augmentation, random_augment
from bcnb.data.pipeline import Preparation, tiles_of
from bcnb.data.tasks import BINARY, Task, task_named
from bcnb.model.transfer import classifier_head, new_head, unfreeze_top_layers
from bcnb.run.artifacts import (
    CHECKPOINT_FILE,
    FINE_TUNE_CHECKPOINT_FILE,
    HISTORY_FILE,
    LOGS_DIR,
    TRAINING_FILE,
)
from bcnb.run.files import write_json_atomic, write_text_atomic
from bcnb.run.seeds import seed_everything
from bcnb.train.checkpoint import ResumeTraining, run_fingerprint
from bcnb.train.features import feature_file, read_features

# A step of the head on cached features (Dropout and one Dense unit on 2,048 numbers) costs
# less than the call into TensorFlow that runs it; Keras runs this many per call there.
HEAD_STEPS_PER_CALL = 64
# Validation batches on cached features: the loss and accuracy are means over every image,
# whatever the batch, so larger batches give the same figures in fewer steps.
VALIDATION_BATCH = 256
PHASES = {"head": CHECKPOINT_FILE, "fine_tune": FINE_TUNE_CHECKPOINT_FILE}


# --------------------------------------------------------------------------- batches
def epoch_order(n: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """The order of ``n`` training examples in one epoch, drawn from (seed, stream, epoch)
    alone: seed 42's epoch 1 is not seed 43's epoch 0. ``stream`` keeps phases apart."""
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


class EpochBatches(keras.utils.PyDataset):
    """Batches of some rows, shuffled per epoch by :func:`epoch_order` (or in table order).

    ``epoch`` is set before each epoch by :class:`bcnb.train.checkpoint.ResumeTraining`. Training
    on cached features and end to end use the same order: Dropout's masks go by position in
    the batch, so the same order gives the same training, cache or not.
    """

    def __init__(
        self, labels: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0, stream: int = 0
    ):
        super().__init__()
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
        self.batch_size, self.shuffle, self.seed, self.stream = batch_size, shuffle, seed, stream
        self.epoch = 0
        self._order: tuple[int | None, np.ndarray] = (None, np.arange(0))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def positions(self, index: int) -> np.ndarray:
        """Which of the rows (0 .. n-1) make batch ``index`` of the current epoch."""
        if self._order[0] != self.epoch:  # drawn once per epoch
            n = len(self.labels)
            order = epoch_order(n, self.seed, self.epoch, self.stream) if self.shuffle else np.arange(n)
            self._order = (self.epoch, order)
        return self._order[1][index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index: int):
        chosen = self.positions(index)
        return self.inputs(chosen), self.labels[chosen]

    def inputs(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FeatureBatches(EpochBatches):
    """(features, labels) batches read from some rows of a cached feature file."""

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, batch_size: int, **order):
        super().__init__(labels, batch_size, **order)
        self.path, self.rows = Path(path), np.asarray(rows)

    def inputs(self, positions: np.ndarray) -> np.ndarray:
        return read_features(self.path, self.rows[positions])


def feature_epochs(
    features: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    stream: int = 0,
):
    """The batches of :class:`FeatureBatches`, from features held in memory, as a tf.data pipeline.

    What ``fit`` reads on cached features, with no Python between its steps: as each epoch
    starts, its order is drawn (:func:`epoch_order` of (seed, stream, epoch), as FeatureBatches
    draws it) and its rows gathered in that order, once; TensorFlow then cuts them into batches
    of ``batch_size``, the last one partial. The same batches in the same order give the same
    Dropout masks and the same Adam steps: the same training as FeatureBatches, bit for bit.
    Without ``shuffle``, the rows in their order (validation).

    Returns a ``tf.data.Dataset`` whose ``epoch`` attribute chooses the order: set it before an
    epoch starts (:class:`bcnb.train.checkpoint.ResumeTraining` does); ``fit`` reads it when it
    starts the epoch's pass over the data.
    """
    import tensorflow as tf

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    if not shuffle:  # one order for every epoch: slices of two tensors, no function to run
        dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size)
        dataset.epoch = 0
        return dataset
    n = len(labels)

    def rows_in_order() -> tuple[np.ndarray, np.ndarray]:  # run by TensorFlow as each pass starts
        order = epoch_order(n, seed, dataset.epoch, stream)
        return features[order], labels[order]

    def drawn(_):
        rows, targets = tf.numpy_function(rows_in_order, [], (tf.float32, tf.float32), stateful=True)
        return tf.ensure_shape(rows, features.shape), tf.ensure_shape(targets, labels.shape)

    # One element per epoch, the whole epoch, which rebatch cuts as batch(batch_size) would.
    dataset = (
        tf.data.Dataset.range(1)
        .map(drawn)
        .rebatch(batch_size)
        .apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
    )
    dataset.epoch = 0
    return dataset


class ImageBatches(EpochBatches):
    """(images, labels) batches of a table's images, as the model takes them (0-255 pixels),
    augmented when asked with draws seeded by (seed, stream, epoch) and the position."""

    def __init__(
        self,
        table: pd.DataFrame,
        preparation: Preparation,
        batch_size: int,
        augmentation: Augmentation | None = None,
        task: Task = BINARY,
        **order,
    ):
        super().__init__(task.targets_of(table), batch_size, **order)
        tile, tiles = tiles_of(table)
        self.sources = list(zip(table["path"], tiles, tile))
        self.preparation, self.augmentation = preparation, augmentation

    def inputs(self, positions: np.ndarray) -> np.ndarray:
        images = [self.preparation.prepare(*self.sources[p]) for p in positions]
        if self.augmentation is None:
            return np.stack(images)
        key = int(np.random.default_rng([self.seed, self.stream, self.epoch]).integers(2**31))
        return np.stack(
            [
                random_augment(image, [key, int(p)], self.augmentation).numpy()
                for image, p in zip(images, positions)
            ]
        )


# --------------------------------------------------------------------------- inputs
def training_inputs(cfg: Config, model: keras.Model, split: pd.DataFrame):
    """What ``fit`` trains and on what: (model_to_fit, train_data, val_data).

    With ``feature_cache`` model_to_fit is the head, sharing the model's Dropout and Dense
    layers (training it trains the model), and the data are the cached features of each
    image (computed now if they are not cached yet); otherwise model_to_fit is the whole
    model and the data are images, which pass through the frozen base on every epoch.
    """
    if not cfg.feature_cache:
        train, val = split[split["split"] == "train"], split[split["split"] == "val"]
        return model, *image_inputs(cfg, train, val, augment=cfg.augment)
    path = feature_file(cfg, model, split)
    return classifier_head(model), *feature_inputs(cfg, split, lambda rows: read_features(path, rows))


def feature_inputs(cfg: Config, split: pd.DataFrame, features_of: Callable[[np.ndarray], np.ndarray]):
    """(train_data, val_data) on cached features; ``features_of(rows)`` gives the features of
    those rows of ``split`` (positions), in their order."""
    task = task_named(cfg.task)

    def part(name: str, batch_size: int, shuffle: bool):
        rows = np.flatnonzero(split["split"].to_numpy() == name)
        targets = task.targets_of(split.iloc[rows])
        return feature_epochs(features_of(rows), targets, batch_size, shuffle=shuffle, seed=cfg.seed)

    return part("train", cfg.batch_size, True), part("val", max(cfg.batch_size, VALIDATION_BATCH), False)


def steps_per_call(train_data) -> int:
    """``compile(steps_per_execution=...)``: many on cached features, whose steps are tiny;
    one on images, whose steps are a pass of the base. The trained model is the same."""
    return 1 if isinstance(train_data, ImageBatches) else HEAD_STEPS_PER_CALL


def image_inputs(cfg: Config, train: pd.DataFrame, val: pd.DataFrame, augment: bool = False, stream: int = 0):
    """(train_data, val_data) of images; ``augment`` transforms the training images."""
    augmentation = Augmentation.from_config(cfg) if augment else None
    preparation, task = Preparation.from_run(cfg), task_named(cfg.task)
    train_data = ImageBatches(
        train, preparation, cfg.batch_size, augmentation, task, shuffle=True, seed=cfg.seed, stream=stream
    )
    return train_data, ImageBatches(val, preparation, cfg.batch_size, task=task)


def fine_tuning_inputs(cfg: Config, split: pd.DataFrame):
    """(train_data, val_data) for fine-tuning: images, augmented when ``cfg.augment``, in an
    order of their own (stream 1), since the base itself now learns from them."""
    train, val = split[split["split"] == "train"], split[split["split"] == "val"]
    return image_inputs(cfg, train, val, augment=cfg.augment, stream=1)


def class_weights(cfg: Config, split: pd.DataFrame) -> dict[int, float] | None:
    """``fit``'s class_weight: None, or each class weighed by the inverse of its share."""
    if cfg.class_weight != "balanced":
        return None
    return balanced_class_weight(task_named(cfg.task).targets_of(split[split["split"] == "train"]))


def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    """Weights that make each class present count equally in the loss: n / (k * n_class)
    for k classes present.

    On BreakHis (31% benign) a benign image then weighs about 1.6, a malignant one 0.73.
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    present = np.count_nonzero(counts)
    return {cls: len(labels) / (present * count) for cls, count in enumerate(counts) if count}


def resume_training(
    cfg: Config, split: pd.DataFrame, phase: str, early_stopping, train_data, must_beat: float | None = None
) -> ResumeTraining:
    """The phase's resuming callback, with its checkpoint in the run folder."""
    epochs = cfg.epochs if phase == "head" else cfg.fine_tune_epochs
    path = Path(cfg.run_dir) / PHASES[phase]
    fingerprint = run_fingerprint(cfg.to_dict(), split)
    return ResumeTraining(path, fingerprint, epochs, early_stopping, train_data, must_beat)


def tensorboard_dir(cfg: Config, phase: str) -> str:
    """Where Keras' TensorBoard callback writes the logs of ``phase`` (head or fine_tune)."""
    return str(Path(cfg.run_dir) / LOGS_DIR / phase)


class EpochLines(keras.callbacks.Callback):
    """One line per epoch to ``say`` (print, a log): what fit(verbose=2) prints, without the
    "Epoch i/N" line and carriage returns that flood files and headless notebooks."""

    def __init__(self, epochs: int, say: Callable[[str], None] = print, prefix: str = ""):
        super().__init__()
        self.epochs, self.say, self.prefix = epochs, say, prefix

    def on_epoch_end(self, epoch, logs=None):
        self.say(f"{self.prefix}epoch {epoch + 1}/{self.epochs}: {metrics_line(logs)}")


def metrics_line(logs: dict | None) -> str:
    """An epoch's losses and metrics as Keras logs them: "loss 0.4120 - accuracy 0.8125 - ..."."""
    return " - ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items())


# --------------------------------------------------------------------------- training
def compile_for_training(
    model: keras.Model, learning_rate: float, steps_per_execution: int = 1, task: Task = BINARY
) -> None:
    """The paper's compile: Adam on binary cross-entropy, reporting accuracy; for tumour
    types, cross-entropy over the eight classes (the label is the type's index)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=task.loss(),
        metrics=[task.accuracy()],
        steps_per_execution=steps_per_execution,
    )


def fit_phase(
    cfg: Config,
    split: pd.DataFrame,
    phase: str,
    model_to_fit: keras.Model,
    train_data,
    val_data,
    must_beat: float | None = None,
    callbacks: list = (),
) -> ResumeTraining:
    """``model_to_fit.fit`` (compiled already), with early stopping and resuming, as notebook 03 writes it."""
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
    )
    resume = resume_training(cfg, split, phase, early_stopping, train_data, must_beat)
    logs = [keras.callbacks.TensorBoard(tensorboard_dir(cfg, phase))] if cfg.tensorboard else []
    model_to_fit.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.epochs if phase == "head" else cfg.fine_tune_epochs,
        initial_epoch=resume.initial_epoch,
        shuffle=False,  # the batches come shuffled by (seed, epoch): Keras must not reorder them
        class_weight=class_weights(cfg, split),
        callbacks=[early_stopping, resume, *logs, *callbacks],
        verbose=0,
    )
    return resume


def train_model(
    cfg: Config, model: keras.Model, split: pd.DataFrame, progress: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """Stage entry point: notebook 03's training in one call; returns the history.

    The head first; then, with ``fine_tune_layers``, the top of the base as well, from the
    head's best epoch, keeping its own weights only if they beat that epoch's validation
    loss. Resumes from the run folder's checkpoints when they are of this very run. Writes
    ``history.csv`` and ``training.json`` (features too, with ``feature_cache``);
    ``progress`` receives one line per epoch.
    """
    model_to_fit, train_data, val_data = training_inputs(cfg, model, split)
    seed_everything(cfg.seed)  # the same dropout, cache or not
    task = task_named(cfg.task)
    compile_for_training(model_to_fit, cfg.learning_rate, steps_per_call(train_data), task)
    lines = [EpochLines(cfg.epochs, progress)] if progress else []
    phases = [fit_phase(cfg, split, "head", model_to_fit, train_data, val_data, callbacks=lines)]
    fine_tuned = []
    if cfg.fine_tunes:
        fine_tuned = unfreeze_top_layers(model, cfg.fine_tune_layers)
        compile_for_training(model, cfg.fine_tune_learning_rate, task=task)
        lines = [EpochLines(cfg.fine_tune_epochs, progress, "fine-tuning ")] if progress else []
        tune_data, val_images = fine_tuning_inputs(cfg, split)
        phases.append(
            fit_phase(
                cfg,
                split,
                "fine_tune",
                model,
                tune_data,
                val_images,
                must_beat=phases[0].best_loss,
                callbacks=lines,
            )
        )
    return finish_training(cfg, model, phases, fine_tuned)


def train_new_head(
    cfg: Config, split: pd.DataFrame, features: np.ndarray
) -> tuple[keras.Model, pd.DataFrame]:
    """A head of its own (:func:`bcnb.model.transfer.new_head`) trained on ``features``, one row
    per row of ``split``, as notebook 03 trains the model's head on cached features: the same
    compile, ``fit``, epoch order, early stopping and resuming, in ``cfg.run_dir``. Writes
    history.csv and training.json there; returns (head, history).

    What a protocol's models of one magnification are: no base loaded, no image read again.
    """
    train_data, val_data = feature_inputs(cfg, split, lambda rows: features[rows])
    seed_everything(cfg.seed)
    head = new_head(features.shape[1], cfg.dropout, cfg.task)
    compile_for_training(head, cfg.learning_rate, HEAD_STEPS_PER_CALL, task_named(cfg.task))
    done = fit_phase(cfg, split, "head", head, train_data, val_data)
    return head, record_training(cfg, [done])


def finish_training(
    cfg: Config, model: keras.Model, phases: list[ResumeTraining], fine_tuned: list[str] = ()
) -> pd.DataFrame:
    """After the last ``fit``: compile the full model as the paper did (so that ``evaluate``
    reports its loss and accuracy), then :func:`record_training`. Returns the history of every phase."""
    learning_rate = cfg.fine_tune_learning_rate if cfg.fine_tunes else cfg.learning_rate
    compile_for_training(model, learning_rate, task=task_named(cfg.task))
    model.optimizer.build(model.trainable_variables)  # so the saved model loads without a warning
    return record_training(cfg, phases, fine_tuned)


def record_training(cfg: Config, phases: list[ResumeTraining], fine_tuned: list[str] = ()) -> pd.DataFrame:
    """Save the history of every phase and what training used, and remove the checkpoints
    (finished: a re-run trains afresh). Returns the history."""
    rows = [{**row, "phase": phase} for phase, done in zip(PHASES, phases) for row in done.history]
    history = history_frame(rows)
    run_dir = Path(cfg.run_dir)
    save_history(history, run_dir, cfg, sum(done.state.seconds for done in phases), fine_tuned)
    for name in PHASES.values():
        (run_dir / name).unlink(missing_ok=True)
    return history


# --------------------------------------------------------------------------- records
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
