"""Checkpoints that let an interrupted training run finish as if it never stopped.

After every epoch, training writes ``checkpoint/training.npz`` into the run folder: the
weights that learn, the random state of the Dropout layer, the optimiser's moments, early
stopping's bookkeeping (best loss, patience used, best weights) and the history so far. The
data order of each epoch depends only on the seed and the epoch's number. So a run killed
at any moment and started again (``bcnb reproduce --resume``, or notebook 03 re-run) carries
on from the last finished epoch and ends with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from bcnb.files import write_bytes_atomic

CHECKPOINT_FILE = "checkpoint/training.npz"
FINE_TUNE_CHECKPOINT_FILE = "checkpoint/fine_tune.npz"


@dataclass
class TrainingState:
    """Everything about a training run that changes from one epoch to the next."""

    fingerprint: str  # which run this is: the parameters and the split
    epoch: int = 0  # epochs finished
    best_loss: float = float("inf")
    best_epoch: int = 0
    wait: int = 0  # epochs since the best one
    done: bool = False  # training ended (epochs used up or stopped early)
    history: list[dict] = field(default_factory=list)
    variables: list[np.ndarray] = field(default_factory=list)  # learning weights + dropout state
    optimizer: list[np.ndarray] = field(default_factory=list)
    best_weights: list[np.ndarray] = field(default_factory=list)

    def save(self, path: Path) -> None:
        arrays = {f"{group}_{i}": value for group in ("variables", "optimizer", "best_weights")
                  for i, value in enumerate(getattr(self, group))}  # fmt: skip
        meta = {k: v for k, v in asdict(self).items() if k not in ("variables", "optimizer", "best_weights")}
        counts = {group: len(getattr(self, group)) for group in ("variables", "optimizer", "best_weights")}
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
    """A hash of the parameters and the split table; where the run lives and whether its
    notebooks show widgets change nothing in training, so they are left out."""
    kept = {k: v for k, v in config.items() if k not in ("run_dir", "interactive")}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode())
    digest.update(split[["path", "label", "split"]].to_csv(index=False).encode())
    return digest.hexdigest()


def state_variables(trainee: keras.Model) -> list:
    """What changes while the head trains: trainable weights and the Dropout layers' random
    state (the frozen base's weights never do, so they are not saved)."""
    seeds = [v for v in trainee.non_trainable_variables if "seed_generator" in v.path]
    return list(trainee.trainable_variables) + seeds


def capture(state: TrainingState, trainee: keras.Model) -> None:
    state.variables = [np.array(v.numpy()) for v in state_variables(trainee)]
    state.optimizer = [np.array(v.numpy()) for v in trainee.optimizer.variables]


def restore(state: TrainingState, trainee: keras.Model) -> None:
    for variable, value in zip(state_variables(trainee), state.variables):
        variable.assign(value)
    for variable, value in zip(trainee.optimizer.variables, state.optimizer):
        variable.assign(value)
