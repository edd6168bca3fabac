import keras
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TOP_CONV, build_tiny_model

from bcnb.data import pipeline
from bcnb.model import transfer
from bcnb.run import artifacts
from bcnb.train import fit
from bcnb.train.features import read_features


def _fresh_model(cfg, seed=0):
    """The bcnb model on the tests' tiny base (ResNet50V2's kinds of layer, a few of each)."""
    keras.utils.set_random_seed(seed)
    return build_tiny_model(cfg.img_size, dropout=cfg.dropout)


@pytest.fixture(scope="module")
def trained(tiny_cfg, tiny_split, tmp_path_factory):
    """A tiny model trained on cached features, and its run folder."""
    cfg = tiny_cfg.replace(run_dir=str(tmp_path_factory.mktemp("run")))
    model = _fresh_model(cfg)
    history = fit.train_model(cfg, model, tiny_split)
    return cfg, model, history


def test_cached_feature_training_gives_the_full_model(trained, tiny_split):
    """After head training on cached features, the saved full model on images equals the
    head applied to those features."""
    cfg, model, _ = trained
    path = transfer.save_model(model, f"{cfg.run_dir}/model.keras")
    loaded = transfer.load_model(path)
    cached = read_features(f"{cfg.run_dir}/features/all.npy")  # every image, in split-table order
    for name in ("train", "val"):
        rows = (tiny_split["split"] == name).to_numpy()
        from_head = transfer.classifier_head(model).predict(cached[rows], verbose=0)
        from_images = loaded.predict(
            pipeline.make_dataset(tiny_split[rows], pipeline.Preparation(cfg.img_size), cfg.batch_size),
            verbose=0,
        )
        np.testing.assert_allclose(from_images, from_head, atol=1e-5)
    # and the head really learnt something: its weights moved from the seed's start
    start = _fresh_model(cfg).get_layer("classifier").kernel.numpy()
    assert not np.allclose(start, model.get_layer("classifier").kernel.numpy())


def test_history_and_training_summary_are_saved(trained):
    cfg, _, history = trained
    assert list(history.columns[:1]) == ["epoch"] and len(history) == cfg.epochs
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)  # the paper's metric
    pd.testing.assert_frame_equal(artifacts.load_history(cfg.run_dir), history, check_dtype=False)
    summary = artifacts.load_training_summary(cfg.run_dir)
    assert summary["epochs_run"] == len(history) and summary["feature_cache"] is True
    assert summary["best_epoch"] == history.loc[history["val_loss"].idxmin(), "epoch"]


def test_best_epoch_is_lowest_validation_loss():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [0.9, 0.4, 0.5, 0.6]})
    assert fit.best_epoch(history) == 2


def test_early_stopping_keeps_the_best_weights(tiny_cfg, tiny_split, tmp_path):
    """Training stops after `patience` epochs without improvement and restores the best."""
    cfg = tiny_cfg.replace(run_dir=str(tmp_path), epochs=60, patience=2, learning_rate=0.5)
    model = _fresh_model(cfg)
    history = fit.train_model(cfg, model, tiny_split)
    assert len(history) < 60  # a huge learning rate makes validation loss stall quickly
    best = fit.best_epoch(history)
    assert len(history) == best + cfg.patience
    val = tiny_split[tiny_split["split"] == "val"]
    model.compile(loss="binary_crossentropy")
    results = model.evaluate(
        pipeline.make_dataset(val, pipeline.Preparation(cfg.img_size), cfg.batch_size),
        return_dict=True,
        verbose=0,
    )
    assert results["loss"] == pytest.approx(history["val_loss"].min(), rel=1e-4)


def test_end_to_end_training_runs_through_the_frozen_base(tiny_cfg, tiny_split, tmp_path):
    cfg = tiny_cfg.replace(run_dir=str(tmp_path), feature_cache=False, epochs=2)
    model = _fresh_model(cfg)
    base_before = [w.numpy().copy() for w in transfer.base_of(model).weights]
    history = fit.train_model(cfg, model, tiny_split)
    assert len(history) == 2 and not (tmp_path / "features").exists()
    for before, after in zip(base_before, transfer.base_of(model).weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_same_seed_same_trained_model(tiny_cfg, tiny_split, tmp_path):
    """Seeding first, then loading the saved model (as notebook 03 does), makes training
    repeatable: a loaded Dropout layer draws its random state when it is created."""
    from bcnb.run.seeds import seed_everything

    start = transfer.save_model(_fresh_model(tiny_cfg), tmp_path / "initial.keras")
    kernels = []
    for attempt in range(2):
        cfg = tiny_cfg.replace(run_dir=str(tmp_path / f"run{attempt}"))
        seed_everything(cfg.seed)
        model = transfer.load_model(start)
        fit.train_model(cfg, model, tiny_split)
        kernels.append(model.get_layer("classifier").kernel.numpy())
    np.testing.assert_array_equal(kernels[0], kernels[1])


def test_balanced_class_weight_makes_classes_count_equally():
    weights = fit.balanced_class_weight(np.array([0, 1, 1, 1]))
    assert weights == {0: 2.0, 1: pytest.approx(2 / 3)}
    assert weights[0] * 1 == pytest.approx(weights[1] * 3)  # total weight per class is equal


def test_class_weight_changes_training(tiny_cfg, tiny_split, tmp_path):
    losses = {}
    for choice in ("none", "balanced"):
        cfg = tiny_cfg.replace(run_dir=str(tmp_path / choice), class_weight=choice, epochs=2)
        losses[choice] = fit.train_model(cfg, _fresh_model(cfg), tiny_split)["loss"].tolist()
        assert artifacts.load_training_summary(cfg.run_dir)["class_weight"] == choice
    assert losses["none"] != losses["balanced"]


def _moving_statistics(model):
    return [w.numpy().copy() for w in model.weights if "moving_" in w.path]


def test_fine_tuning_follows_the_head_and_keeps_batchnorm_fixed(tiny_cfg, tiny_split, tmp_path):
    cfg = tiny_cfg.replace(
        run_dir=str(tmp_path),
        fine_tune_layers=3,  # the tiny base's top convolution and its BatchNormalization
        fine_tune_epochs=3,
        fine_tune_learning_rate=1e-3,
        augment=True,
    )
    model = _fresh_model(cfg)
    base = transfer.base_of(model)
    statistics, top = _moving_statistics(model), base.get_layer(TINY_TOP_CONV).kernel
    top_before = top.numpy().copy()
    history = fit.train_model(cfg, model, tiny_split)
    assert history["phase"].tolist() == ["head"] * cfg.epochs + ["fine_tune"] * 3
    summary = artifacts.load_training_summary(cfg.run_dir)
    assert TINY_TOP_CONV in summary["fine_tuned_layers"] and summary["fine_tune_epochs_run"] == 3
    for before, after in zip(statistics, _moving_statistics(model)):
        np.testing.assert_array_equal(before, after)
    # The weights kept are the best epoch's: fine-tuned ones only if fine-tuning won.
    fine_tuning_won = history.loc[history["val_loss"].idxmin(), "phase"] == "fine_tune"
    assert np.array_equal(top_before, top.numpy()) != fine_tuning_won


def test_each_epoch_has_its_own_order_and_neighbouring_seeds_share_none():
    """Seeded by the pair (seed, epoch): seed 42's epoch 1 is not seed 43's epoch 0."""
    orders = {
        (seed, epoch): fit.epoch_order(50, seed, epoch).tolist() for seed in (42, 43) for epoch in range(4)
    }
    assert len({tuple(order) for order in orders.values()}) == len(orders)
    assert orders[(42, 2)] == fit.epoch_order(50, 42, 2).tolist()  # the pair alone decides
    assert fit.epoch_order(50, 42, 2, stream=1).tolist() != orders[(42, 2)]  # fine-tuning's own


def test_feature_and_image_batches_come_in_the_same_order(tiny_cfg, tiny_split, tmp_path):
    """Both ways of training see the same images in the same order, epoch by epoch."""
    cfg = tiny_cfg.replace(run_dir=str(tmp_path))
    model = _fresh_model(cfg)
    trainee, features, _ = fit.training_inputs(cfg, model, tiny_split)
    _, images, _ = fit.training_inputs(cfg.replace(feature_cache=False), model, tiny_split)
    for epoch in (0, 3):
        features.epoch = images.epoch = epoch
        batches = [(x.numpy(), y.numpy()) for x, y in features]  # the epoch's order, drawn as it starts
        assert len(batches) == len(images)
        for index, (x_features, y_features) in enumerate(batches):
            x_images, y_images = images[index]
            np.testing.assert_array_equal(y_features, y_images)
            np.testing.assert_allclose(
                x_features, transfer.feature_extractor(model).predict(x_images, verbose=0), atol=1e-4
            )
    assert trainee is not model and features.epoch == 3


def test_augmented_batches_are_reproducible_and_change_with_the_epoch(tiny_cfg, tiny_split):
    train_rows = tiny_split[tiny_split["split"] == "train"]
    batches, _ = fit.image_inputs(tiny_cfg, train_rows, train_rows, augment=True)
    first = batches[0][0]
    np.testing.assert_array_equal(batches[0][0], first)  # the same epoch: the same images
    batches.epoch = 1
    assert not np.array_equal(batches[0][0], first)
    plain, _ = fit.image_inputs(tiny_cfg, train_rows, train_rows)
    assert not np.array_equal(plain[0][0], first)


def test_end_to_end_and_cached_training_give_the_same_model(tiny_cfg, tiny_split, tmp_path):
    """Same seed, same data order, same dropout masks: the two ways of training the head are
    the same computation, up to float rounding of the features."""
    kernels = []
    for cache in (True, False):
        cfg = tiny_cfg.replace(run_dir=str(tmp_path / str(cache)), feature_cache=cache, epochs=3)
        model = _fresh_model(cfg)
        history = fit.train_model(cfg, model, tiny_split)
        kernels.append((model.get_layer("classifier").kernel.numpy(), history["val_loss"].to_numpy()))
    np.testing.assert_allclose(kernels[0][0], kernels[1][0], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(kernels[0][1], kernels[1][1], rtol=1e-3)


def _logged_scalars(folder) -> dict[str, list[float]]:
    """Every scalar of the TensorBoard event files in ``folder``, by tag, in step order."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return {tag: [number for _, number in sorted(pairs)] for tag, pairs in found.items()}


def test_tensorboard_logs_hold_each_epoch_of_the_history(tiny_cfg, tiny_split, tmp_path):
    cfg = tiny_cfg.replace(run_dir=str(tmp_path), epochs=2, tensorboard=True)
    history = fit.train_model(cfg, _fresh_model(cfg), tiny_split)
    logs = tmp_path / artifacts.LOGS_DIR / "head"
    training, validation = _logged_scalars(logs / "train"), _logged_scalars(logs / "validation")
    np.testing.assert_allclose(training["epoch_loss"], history["loss"], rtol=1e-5)
    np.testing.assert_allclose(validation["epoch_loss"], history["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(validation["epoch_accuracy"], history["val_accuracy"], rtol=1e-5)
    # and nothing is written where it was not asked for
    plain = tiny_cfg.replace(run_dir=str(tmp_path / "plain"), epochs=1)
    fit.train_model(plain, _fresh_model(plain), tiny_split)
    assert not (tmp_path / "plain" / artifacts.LOGS_DIR).exists()
