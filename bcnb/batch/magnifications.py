"""A protocol's models of one magnification: new heads trained on each fold's cached features.

BreakHis papers train and test one model per magnification (40X, 100X, 200X, 400X) on the same
patient folds (Spanhol et al., IEEE TBME 63(7):1455-1462, 2016). With the base frozen, called
with ``training=False`` and no augmentation, such a model differs from the fold's model of all
magnifications only in its head: every image has the same pooled features. So
``bcnb reproduce --folds K --per-magnification`` trains, once a fold's notebooks have run, one
new head per magnification on that magnification's rows of the fold's feature cache (the
fold's own train, validation and test patients), with notebook 03's compile, ``fit``, epoch
order, early stopping and resuming (:func:`bcnb.train.fit.train_new_head`), then scores its
test images. No base is loaded and no image is read again: the extra cost is the head trainings.

    fold-1/magnifications/40X/
      history.csv, training.json   the head's training, as a run's notebook 03 writes them
      checkpoint/                  the resumable training state (while training)
      head.keras                   the trained head (Dropout + Dense on 2,048 features)
      predictions.csv              its test images' probabilities; written last: the model is done

Each head starts from the seed's initialisation and is scored at the paper's threshold of 0.5
(the table BreakHis papers print); no threshold is chosen for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from bcnb.config import Config
from bcnb.run.artifacts import (
    ALL_FEATURES,
    FEATURES_DIR,
    HEAD_MODEL_FILE,
    MAGNIFICATIONS_DIR,
    PREDICTIONS_FILE,
    load_split,
)
from bcnb.run.nativelog import native_stderr


def magnification_folder(fold: Path, magnification: str) -> Path:
    """Where a fold's model of one magnification keeps its files."""
    return Path(fold) / MAGNIFICATIONS_DIR / magnification


def is_finished(fold: Path, magnification: str) -> bool:
    """Whether the fold's model of ``magnification`` is done (its predictions are written last)."""
    return (magnification_folder(fold, magnification) / PREDICTIONS_FILE).is_file()


def unfinished(fold: Path, magnifications: Iterable[str]) -> list[str]:
    return [name for name in magnifications if not is_finished(fold, name)]


def made_in(fold: Path) -> list[str]:
    """The magnifications the fold has a model folder of (finished or not)."""
    folder = Path(fold) / MAGNIFICATIONS_DIR
    return sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []


def check_asked_for(fold: Path, magnifications: Iterable[str]) -> None:
    """Refuse to go on with a fold holding models of magnifications this request does not make
    (a protocol resumed without --per-magnification): its summary would not show them."""
    from bcnb.run.record import RecordMismatch

    others = [name for name in made_in(fold) if name not in set(magnifications)]
    if others:
        raise RecordMismatch(
            f"--resume: {fold} holds models of one magnification ({', '.join(others)}) which this "
            "request does not make: resume with --per-magnification, or run without --resume to start afresh"
        )


def one_thread_for_heads() -> None:
    """Let TensorFlow run this process' ops on one thread, for a process that trains these heads
    and nothing larger (``bcnb reproduce``'s own process, a Dask worker): a head's steps are
    many tiny ops that a second thread only hands around. Four heads of one BreakHis-size
    magnification took 16.1 s against 20.9 s on this project's 2 cores, with the same weights.
    TensorFlow takes the setting only before its runtime starts (which this starts); after that,
    nothing changes."""
    with native_stderr():  # TensorFlow's start-up lines (no GPU, oneDNN) kept off the terminal
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the runtime has started in this process: its threads stay as they are
            pass
        # Started here, once: its start-up lines are filtered here rather than written, later,
        # wherever the heads' thread finds file descriptor 2 (a kernel's log, while one runs).
        tf.constant(0.0).numpy()


def train_magnification_models(
    fold: Path, cfg: Config, magnifications: Iterable[str], progress: Callable[[str], None] = lambda m: None
) -> None:
    """Train and test the fold's unfinished models of one magnification (``cfg`` is the fold's)."""
    todo = unfinished(fold, magnifications)
    if not todo:
        return
    from bcnb.train.features import stored_features_of

    split = load_split(fold)
    features = stored_features_of(Path(fold) / FEATURES_DIR / ALL_FEATURES, split)
    for magnification in todo:
        progress(f"{Path(fold).name}: the model of {magnification} alone, on its cached features")
        rows = np.flatnonzero(split["magnification"].to_numpy() == magnification)
        own = split.iloc[rows].reset_index(drop=True)
        check_parts(own, fold, magnification)
        one = cfg.replace(magnification=magnification, run_dir=str(magnification_folder(fold, magnification)))
        train_and_test(one, own, features[rows])


def check_parts(split, fold: Path, magnification: str) -> None:
    """A model of one magnification trains, stops early and is tested on that magnification's
    images of the fold's parts: refuse, in one line, a part that has none."""
    missing = [part for part in ("train", "val", "test") if not (split["split"] == part).any()]
    if missing:
        raise ValueError(
            f"--per-magnification: {fold} has no {' and no '.join(missing)} images at {magnification}; "
            "expected every magnification in each part of every fold"
        )


def train_and_test(cfg: Config, split, features: np.ndarray) -> None:
    """One head on ``features`` (a row per row of ``split``) into ``cfg.run_dir``: trained, saved,
    and its test rows' probabilities written, last."""
    from bcnb.data.tasks import task_named
    from bcnb.evaluate.scores import save_predictions
    from bcnb.model.transfer import save_model
    from bcnb.train.fit import VALIDATION_BATCH, train_new_head

    folder = Path(cfg.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    head, _ = train_new_head(cfg, split, features)
    save_model(head, folder / HEAD_MODEL_FILE)
    test = np.flatnonzero(split["split"].to_numpy() == "test")
    outputs = head.predict(features[test], batch_size=VALIDATION_BATCH, verbose=0)
    save_predictions(split.iloc[test], task_named(cfg.task).malignant_probability(outputs), folder)
