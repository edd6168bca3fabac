"""An interrupted training run resumes from its last checkpoint and ends the same."""

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TOP_CONV, build_tiny_model

from bcnb.model import transfer
from bcnb.run.artifacts import CHECKPOINT_FILE, FINE_TUNE_CHECKPOINT_FILE
from bcnb.train import fit
from bcnb.train.checkpoint import ResumeTraining, TrainingState, run_fingerprint


class Killed(Exception):
    """Stands for the process dying after some epoch."""


def _train(cfg, split, start, stop_after=None):
    """Train from the saved start model; optionally die once ``stop_after`` epochs are done."""
    keras.utils.set_random_seed(cfg.seed)
    model = transfer.load_model(start)
    epochs_seen = []

    def progress(line):
        epochs_seen.append(line)
        if stop_after and len(epochs_seen) == stop_after:
            raise Killed

    history = fit.train_model(cfg, model, split, progress=progress)
    return model, history


@pytest.fixture
def start(tiny_cfg, tmp_path):
    keras.utils.set_random_seed(0)
    return transfer.save_model(build_tiny_model(tiny_cfg.img_size), tmp_path / "initial.keras")


def _whole_then_killed_and_resumed(cfg, split, start, folder, stop_after):
    """The run uninterrupted in folder/whole, then killed after ``stop_after(whole history)``
    epochs and resumed in folder/resumed."""
    whole_model, whole = _train(cfg.replace(run_dir=str(folder / "whole")), split, start)
    resumed_cfg = cfg.replace(run_dir=str(folder / "resumed"))
    with pytest.raises(Killed):
        _train(resumed_cfg, split, start, stop_after=stop_after(whole))
    assert (folder / "resumed" / CHECKPOINT_FILE).is_file()
    resumed_model, resumed = _train(resumed_cfg, split, start)
    return whole_model, whole, resumed_model, resumed


def test_resumed_training_ends_like_an_uninterrupted_run(tiny_cfg, tiny_split, start, tmp_path):
    cfg = tiny_cfg.replace(epochs=12, patience=4, learning_rate=0.05)
    whole_model, whole, resumed_model, resumed = _whole_then_killed_and_resumed(
        cfg, tiny_split, start, tmp_path, stop_after=lambda whole: 5
    )
    pd.testing.assert_frame_equal(resumed, whole)
    np.testing.assert_array_equal(
        resumed_model.get_layer("classifier").kernel.numpy(),
        whole_model.get_layer("classifier").kernel.numpy(),
    )
    assert not (tmp_path / "resumed" / CHECKPOINT_FILE).exists()  # finished: no checkpoint left


def test_killed_after_its_last_epoch_it_still_ends_with_the_best_epochs_weights(
    tiny_cfg, tiny_split, start, tmp_path
):
    """The last epoch's checkpoint is written, then the process dies before training ends
    (where the best epoch's weights are put back): the restart has no epoch left to run, and
    must still keep the best epoch's weights, not the last one's."""
    cfg = tiny_cfg.replace(epochs=12, patience=2, learning_rate=0.05)
    whole_model, whole, resumed_model, resumed = _whole_then_killed_and_resumed(
        cfg,
        tiny_split,
        start,
        tmp_path,
        stop_after=len,  # killed after the whole run's last epoch
    )
    assert whole["val_loss"].idxmin() != len(whole) - 1, "the last epoch must not be the best here"
    pd.testing.assert_frame_equal(resumed, whole)
    np.testing.assert_array_equal(
        resumed_model.get_layer("classifier").kernel.numpy(),
        whole_model.get_layer("classifier").kernel.numpy(),
    )


@pytest.mark.slow
def test_resumed_fine_tuning_ends_like_an_uninterrupted_run(tiny_cfg, tiny_split, start, tmp_path):
    """Killed in the second phase (augmented images, top of the base learning): the head's
    finished checkpoint is reused as it is, and fine-tuning carries on from its own."""
    cfg = tiny_cfg.replace(
        epochs=3,
        patience=10,
        fine_tune_layers=3,  # the tiny base's top convolution and its BatchNormalization
        fine_tune_epochs=4,
        fine_tune_learning_rate=1e-3,
        augment=True,
    )
    whole_model, whole = _train(cfg.replace(run_dir=str(tmp_path / "whole")), tiny_split, start)
    resumed_cfg = cfg.replace(run_dir=str(tmp_path / "resumed"))
    with pytest.raises(Killed):
        _train(resumed_cfg, tiny_split, start, stop_after=5)  # 3 head epochs, then 2 fine-tuning
    assert (tmp_path / "resumed" / FINE_TUNE_CHECKPOINT_FILE).is_file()
    resumed_model, resumed = _train(resumed_cfg, tiny_split, start)
    pd.testing.assert_frame_equal(resumed, whole)
    for resumed_kernel, whole_kernel in zip(_learned_kernels(resumed_model), _learned_kernels(whole_model)):
        np.testing.assert_array_equal(resumed_kernel, whole_kernel)


def _learned_kernels(model):
    """A fine-tuned layer of the base, and the head."""
    top = transfer.base_of(model).get_layer(TINY_TOP_CONV)
    return [top.kernel.numpy(), model.get_layer("classifier").kernel.numpy()]


def test_a_checkpoint_of_another_run_is_ignored(tiny_cfg, tiny_split, start, tmp_path):
    cfg = tiny_cfg.replace(run_dir=str(tmp_path), epochs=3)
    other = TrainingState(run_fingerprint(cfg.replace(seed=7).to_dict(), tiny_split), epoch=2)
    other.save(tmp_path / CHECKPOINT_FILE)
    _, history = _train(cfg, tiny_split, start)
    assert len(history) == 3  # trained from epoch 1, not from the other run's epoch 3


def test_a_damaged_checkpoint_is_ignored(tiny_cfg, tiny_split, tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 cut short")
    assert TrainingState.load(path, "anything") is None


def test_a_finished_phase_does_not_train_on(tmp_path):
    """A phase that stopped early and is started again runs no epoch at all."""
    TrainingState("f", epoch=3, done=True, history=[{"val_loss": 1.0}] * 3).save(tmp_path / "s.npz")
    resume = ResumeTraining(
        tmp_path / "s.npz", "f", epochs=10, early_stopping=keras.callbacks.EarlyStopping()
    )
    assert resume.initial_epoch == 10 and len(resume.history) == 3
    fresh = ResumeTraining(tmp_path / "none.npz", "f", epochs=10, early_stopping=None)
    assert fresh.initial_epoch == 0 and fresh.history == []


def test_state_round_trip(tmp_path):
    arrays = {"variables": [np.ones((2, 1))], "optimizer": [np.zeros(3)], "best_weights": [np.ones(1)]}
    state = TrainingState(
        "f", epoch=3, best_loss=0.25, best_epoch=2, wait=1, history=[{"loss": 0.5}], **arrays
    )
    state.save(tmp_path / "s.npz")
    loaded = TrainingState.load(tmp_path / "s.npz", "f")
    assert (loaded.epoch, loaded.best_loss, loaded.wait, loaded.history) == (3, 0.25, 1, [{"loss": 0.5}])
    np.testing.assert_array_equal(loaded.variables[0], np.ones((2, 1)))
    assert TrainingState.load(tmp_path / "s.npz", "another run") is None
