"""Head training on in-memory features (issue 23): the batches, weights and history that
FeatureBatches (a PyDataset reading each batch from the feature file, the way training
was fed before) gives, bit for bit, with no Python between the steps."""

import keras
import numpy as np
import pandas as pd
import pytest

from bcnb import Config
from bcnb.model.transfer import FEATURE_LAYER, classifier_head
from bcnb.train import fit

N_TRAIN, N_VAL, WIDTH = 61, 23, 2048  # 61 = 3 batches of 16 and a partial one of 13


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A hand-made feature set: rows of 2,048 numbers, labels a noisy linear rule gives them,
    the split table training reads, and the same rows as a feature file."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (N_TRAIN + N_VAL, WIDTH)).astype(np.float32)
    y = (x[:, :16].sum(axis=1) + rng.normal(0, 2, len(x)) > 0).astype(np.float32)
    split = pd.DataFrame(
        {
            "path": [f"image{i}.png" for i in range(len(x))],
            "label": np.where(y > 0, "malignant", "benign"),
            "split": ["train"] * N_TRAIN + ["val"] * N_VAL,
        }
    )
    path = tmp_path_factory.mktemp("features") / "all.npy"
    np.save(path, x)
    return x, y, split, path


def _batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset]


@pytest.mark.parametrize("batch_size", [16, 61, 100])
def test_in_memory_batches_are_those_of_feature_batches(features, batch_size):
    x, y, _, path = features
    rows = np.arange(N_TRAIN)
    reference = fit.FeatureBatches(path, rows, y[rows], batch_size, shuffle=True, seed=42)
    fast = fit.feature_epochs(x[rows], y[rows], batch_size, shuffle=True, seed=42)
    assert fast.cardinality().numpy() == len(reference)
    for epoch in (0, 1, 7, 2):  # any epoch, in any order: the pair (seed, epoch) alone decides
        reference.epoch = fast.epoch = epoch
        got = _batches(fast)
        assert len(got) == len(reference)
        for index, (features_in, labels_in) in enumerate(got):
            expected_x, expected_y = reference[index]
            np.testing.assert_array_equal(features_in, expected_x)
            np.testing.assert_array_equal(labels_in, expected_y)
    # without shuffle, the rows in their order, for every epoch (validation)
    in_order = fit.feature_epochs(x[rows], y[rows], batch_size)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in _batches(in_order)]), x[rows])


def test_each_pass_reads_the_epoch_as_it_starts(features):
    """The order is drawn when a pass starts, from ``epoch`` as ResumeTraining set it."""
    x, y, _, _ = features
    fast = fit.feature_epochs(x[:N_TRAIN], y[:N_TRAIN], 16, shuffle=True, seed=42)
    passes = iter(fast)  # made before the epoch is set, as Keras may: nothing drawn yet
    fast.epoch = 5
    first = next(passes)[0].numpy()
    order = fit.epoch_order(N_TRAIN, 42, 5)
    np.testing.assert_array_equal(first, x[order[:16]])


def _stand_in_model(seed: int) -> keras.Model:
    """The transfer model's top (pooling, the named Dropout and Dense layers) on a tiny
    'base' output, so that classifier_head builds the head as it does for ResNet50V2."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((2, 2, WIDTH))
    pooled = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(image)
    dropped = keras.layers.Dropout(0.2, name="dropout")(pooled)
    return keras.Model(image, keras.layers.Dense(1, activation="sigmoid", name="classifier")(dropped))


def _train(way: str, features, folder, **settings) -> tuple[keras.Model, pd.DataFrame]:
    """fit_phase (EarlyStopping and ResumeTraining, as notebook 03) fed ``way``."""
    x, y, split, path = features
    cfg = Config(run_dir=str(folder), weights="none", img_size=32, batch_size=16, **settings)
    model = _stand_in_model(seed=3)
    keras.utils.set_random_seed(cfg.seed)  # the Dropout layer's draws start here, both ways
    head = classifier_head(model)
    val_batch = max(cfg.batch_size, fit.VALIDATION_BATCH)
    rows = np.arange(len(x))
    if way == "file":
        train = fit.FeatureBatches(
            path, rows[:N_TRAIN], y[:N_TRAIN], cfg.batch_size, shuffle=True, seed=cfg.seed
        )
        val = fit.FeatureBatches(path, rows[N_TRAIN:], y[N_TRAIN:], val_batch)
    else:
        train = fit.feature_epochs(x[:N_TRAIN], y[:N_TRAIN], cfg.batch_size, shuffle=True, seed=cfg.seed)
        val = fit.feature_epochs(x[N_TRAIN:], y[N_TRAIN:], val_batch)
    fit.compile_for_training(head, cfg.learning_rate, fit.HEAD_STEPS_PER_CALL)
    done = fit.fit_phase(cfg, split, "head", head, train, val)
    return model, pd.DataFrame(done.history)


@pytest.mark.parametrize(
    "settings",
    [
        {"epochs": 8, "patience": 100, "learning_rate": 0.01},  # every epoch runs
        {"epochs": 40, "patience": 2, "learning_rate": 0.3, "class_weight": "balanced"},  # stops early
    ],
    ids=["all_epochs", "early_stopping_and_class_weight"],
)
def test_in_memory_training_is_feature_batches_training_bit_for_bit(features, settings, tmp_path):
    """Same Dropout masks, same Adam steps, same validation: the same kernel, bias and history."""
    before, history_before = _train("file", features, tmp_path / "file", **settings)
    now, history_now = _train("memory", features, tmp_path / "memory", **settings)
    if settings["patience"] < settings["epochs"]:
        assert len(history_now) < settings["epochs"]  # early stopping ended both, at the same epoch
    pd.testing.assert_frame_equal(history_now, history_before, check_exact=True)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(
            getattr(now.get_layer("classifier"), name).numpy(),
            getattr(before.get_layer("classifier"), name).numpy(),
        )
    assert not np.allclose(
        now.get_layer("classifier").kernel.numpy(), _stand_in_model(3).get_layer("classifier").kernel.numpy()
    )


def test_cached_features_train_many_steps_per_call_and_images_one(tiny_cfg, tiny_split, tmp_path):
    from bcnb.model import transfer

    cfg = tiny_cfg.replace(run_dir=str(tmp_path))
    keras.utils.set_random_seed(0)
    model = transfer.build_model(cfg.img_size, None, cfg.dropout)
    _, features_data, val = fit.training_inputs(cfg, model, tiny_split)
    _, images, _ = fit.training_inputs(cfg.replace(feature_cache=False), model, tiny_split)
    assert fit.steps_per_call(features_data) == fit.HEAD_STEPS_PER_CALL and fit.steps_per_call(images) == 1
    n_val = int((tiny_split["split"] == "val").sum())
    assert sum(len(y) for _, y in val) == n_val  # every validation image, once
