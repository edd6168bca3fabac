"""Checkpoints that let an interrupted training run finish as if it never stopped.

Keras' own ``BackupAndRestore`` puts back the weights, the optimizer and the epoch, but not
what early stopping has learnt (the best loss, the patience used, the best weights) nor the
order of the data, so a resumed run would stop at another epoch and keep other weights.
:class:`ResumeTraining` is bcnb's one training callback, for that alone: after every epoch it
writes ``checkpoint/training.npz`` (``fine_tune.npz`` for the second phase) with the weights
that learn, the Dropout layers' random state, the optimizer's moments, early stopping's
bookkeeping and the history so far; and it tells the training batches which epoch it is,
since each epoch's order depends only on the seed and the epoch's number. A run killed at any
moment and started again (``bcnb reproduce --resume``, or notebook 03 re-run) carries on from
its last finished epoch and ends with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.config import PRESENTATION
from bcnb.run.files import write_bytes_atomic

_ARRAYS = ("variables", "optimizer", "best_weights")


@dataclass
class TrainingState:
    """Everything about a training phase that changes from one epoch to the next."""

    fingerprint: str  # which run this is: the parameters and the split
    epoch: int = 0  # epochs finished
    best_loss: float = float("inf")
    best_epoch: int = 0  # 0-based, as Keras' EarlyStopping counts
    wait: int = 0  # epochs since the best one
    done: bool = False  # training ended (epochs used up or stopped early)
    seconds: float = 0.0  # spent training, over every attempt
    history: list[dict] = field(default_factory=list)
    variables: list[np.ndarray] = field(default_factory=list)  # learning weights + dropout state
    optimizer: list[np.ndarray] = field(default_factory=list)
    best_weights: list[np.ndarray] = field(default_factory=list)  # the learning part only

    def save(self, path: Path) -> None:
        arrays = {f"{group}_{i}": value for group in _ARRAYS for i, value in enumerate(getattr(self, group))}
        # The fields one by one: asdict would deep-copy every array and the whole history, each epoch.
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAYS}
        counts = {group: len(getattr(self, group)) for group in _ARRAYS}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps({**meta, "counts": counts})), **arrays)
        write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> TrainingState | None:
        """The saved state, if there is a readable one for this very run."""
        try:
            with np.load(path) as stored:
                meta = json.loads(str(stored["meta"]))
                groups = {g: [stored[f"{g}_{i}"] for i in range(n)] for g, n in meta.pop("counts").items()}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        if meta["fingerprint"] != fingerprint:
            return None  # another run's checkpoint: start afresh
        return cls(**meta, **groups)


def run_fingerprint(config: dict, split: pd.DataFrame) -> str:
    """A hash of the parameters and the split table; parameters that only change how a run
    is shown (where it lives, widgets) change nothing in training, so they are left out."""
    kept = {k: v for k, v in config.items() if k not in PRESENTATION}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode())
    digest.update(split[["path", "label", "split"]].to_csv(index=False).encode())
    return digest.hexdigest()


def state_variables(trainee: keras.Model) -> list:
    """What changes while a model trains: its trainable weights and the Dropout layers'
    random state (the frozen base never does, so it is not saved)."""
    seeds = [v for v in trainee.non_trainable_variables if "seed_generator" in v.path]
    return list(trainee.trainable_variables) + seeds


def _trainable_positions(trainee: keras.Model) -> list[int]:
    """Positions of the trainable weights in ``get_weights()`` (EarlyStopping's best weights)."""
    return [i for i, v in enumerate(trainee.weights) if v.trainable]


class ResumeTraining(keras.callbacks.Callback):
    """Save a training phase after every epoch; continue a killed one where it stopped.

    Put it in ``fit(callbacks=[...])`` beside the phase's ``EarlyStopping`` and pass
    ``initial_epoch=resume.initial_epoch`` to ``fit``. ``train_data`` gets the number of each
    epoch before the epoch starts (its order depends on it). ``must_beat``: a validation loss
    the phase must beat for its weights to be kept (fine-tuning against the head's best).
    """

    def __init__(
        self,
        path: str | Path,
        fingerprint: str,
        epochs: int,
        early_stopping,
        train_data=None,
        must_beat: float | None = None,
    ):
        super().__init__()
        self.path, self.early_stopping, self.train_data = Path(path), early_stopping, train_data
        self.state = TrainingState.load(self.path, fingerprint) or TrainingState(fingerprint)
        self.resumed = self.state.epoch > 0
        self.initial_epoch = epochs if self.state.done else self.state.epoch
        self.must_beat = must_beat
        self._started = 0.0

    @property
    def history(self) -> list[dict]:
        """Every epoch of the phase, those before a restart included."""
        return self.state.history

    @property
    def best_loss(self) -> float:
        return self.state.best_loss

    def on_train_begin(self, logs=None):
        self._started = time.perf_counter()
        if not self.resumed:
            return
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        for variable, value in zip(state_variables(self.model), self.state.variables):
            variable.assign(value)
        for variable, value in zip(self.model.optimizer.variables, self.state.optimizer):
            variable.assign(value)

    def on_epoch_begin(self, epoch, logs=None):
        if self.train_data is not None:
            self.train_data.epoch = epoch
        if epoch == self.initial_epoch:  # after EarlyStopping's own on_train_begin has reset it
            self._restore_early_stopping()

    def _restore_early_stopping(self) -> None:
        stopper = self.early_stopping
        if self.resumed:
            stopper.wait, stopper.best_epoch = self.state.wait, self.state.best_epoch
            stopper.best = None if np.isinf(self.state.best_loss) else self.state.best_loss
            if self.state.best_weights:
                stopper.best_weights = self._full(self.state.best_weights)
        elif self.must_beat is not None:  # start from the weights to beat, and their loss
            stopper.best, stopper.best_weights = self.must_beat, self.model.get_weights()
            self.state.best_loss = self.must_beat

    def on_epoch_end(self, epoch, logs=None):
        stopper = self.early_stopping
        self.state.history.append({name: float(value) for name, value in logs.items()})
        self.state.epoch = epoch + 1
        self.state.wait, self.state.best_epoch = stopper.wait, stopper.best_epoch
        self.state.best_loss = float("inf") if stopper.best is None else float(stopper.best)
        if stopper.best_weights is not None:
            self.state.best_weights = self._learning_part(stopper.best_weights)
        self.state.done = bool(self.model.stop_training)
        self._save()

    def on_train_end(self, logs=None):
        # EarlyStopping puts the best weights back at the end of training; those are kept.
        stopper = self.early_stopping
        best = stopper.best_weights
        if best is None and self.resumed and self.state.best_weights:
            # Killed after its last epoch was saved but before this point: the restart runs
            # no epoch, so the stopper was never given the best weights back. They are here.
            best = self._full(self.state.best_weights)
        if stopper.restore_best_weights and best is not None:
            self.model.set_weights(best)
        self.state.done = True  # a restart must not train on past the end
        self._save()

    def _save(self) -> None:
        self.state.seconds += time.perf_counter() - self._started
        self._started = time.perf_counter()
        self.state.variables = [np.array(v.numpy()) for v in state_variables(self.model)]
        self.state.optimizer = [np.array(v.numpy()) for v in self.model.optimizer.variables]
        self.state.save(self.path)

    def _learning_part(self, weights: list[np.ndarray]) -> list[np.ndarray]:
        return [np.array(weights[position]) for position in _trainable_positions(self.model)]

    def _full(self, learning: list[np.ndarray]) -> list[np.ndarray]:
        weights = self.model.get_weights()
        for position, value in zip(_trainable_positions(self.model), learning):
            weights[position] = value
        return weights
