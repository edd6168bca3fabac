import hashlib
from dataclasses import replace

import h5py
import keras
import numpy as np
import pytest

from bcnb.model import transfer
from bcnb.model.backbones import BACKBONES

RESNET_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"  # Keras' name for it

IMG = 32  # the smallest size ResNet50V2 accepts: fast, same layers and parameters


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return transfer.build_model(IMG, weights=None, dropout=0.2)


def test_layer_order(model):
    names = [layer.name for layer in model.layers]
    assert names == ["image", "preprocess", "resnet50v2", "pool", "dropout", "classifier"]
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalAveragePooling2D)


def test_head_is_dropout_02_then_one_sigmoid_unit(model):
    assert model.get_layer("dropout").rate == 0.2
    classifier = model.get_layer("classifier")
    assert classifier.units == 1 and classifier.activation is keras.activations.sigmoid
    assert model.output.shape[-1] == 1


def test_base_is_frozen_and_only_the_head_trains(model):
    assert model.get_layer("resnet50v2").trainable is False
    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    counts = transfer.count_parameters(model)
    assert counts["trainable"] == 2048 + 1
    assert counts["non_trainable"] == 23_564_800  # ResNet50V2 without its top


def test_preprocessing_maps_pixels_to_minus_one_one(model):
    scale = keras.Model(model.input, model.get_layer("preprocess").output)
    images = np.stack([np.full((IMG, IMG, 3), v, np.float32) for v in (0.0, 127.5, 255.0)])
    out = scale.predict(images, verbose=0)
    np.testing.assert_allclose(out[:, 0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)
    expected = keras.applications.resnet_v2.preprocess_input(images.copy())
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_uint8_pixels_give_what_float_pixels_give(model, tmp_path):
    # The pipeline hands the model uint8; the model's float32 input casts them on entry,
    # also after saving and loading.
    pixels = np.random.default_rng(3).integers(0, 256, (2, IMG, IMG, 3), dtype=np.uint8)
    loaded = transfer.load_model(transfer.save_model(model, tmp_path / "m.keras"))
    for predictor in (model, loaded, transfer.feature_extractor(model)):
        as_float = predictor.predict_on_batch(pixels.astype(np.float32))
        np.testing.assert_array_equal(predictor.predict_on_batch(pixels), as_float)


def _moving_statistics(model):
    return [w.numpy().copy() for w in model.weights if "moving_" in w.path]


def test_batchnorm_statistics_do_not_move_during_training():
    keras.utils.set_random_seed(1)
    model = transfer.build_model(IMG, weights=None)
    before_stats, before_kernel = (
        _moving_statistics(model),
        model.get_layer("classifier").kernel.numpy().copy(),
    )
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="binary_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (4, IMG, IMG, 3)).astype(np.float32)
    model.train_on_batch(images, np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32))
    assert len(before_stats) > 0
    for before, after in zip(before_stats, _moving_statistics(model)):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(before_kernel, model.get_layer("classifier").kernel.numpy())


def test_training_false_alone_does_not_protect_an_unfrozen_base():
    """Keras 3 pitfall, kept visible: fit() passes training=True down to the nested base and
    overrides the training=False it was called with (keras-team/keras#20285). Only a frozen
    BatchNormalization layer is sure to stay in inference mode, so fine-tuning must keep the
    BN layers frozen explicitly. If Keras changes this, this test tells us.
    """
    keras.utils.set_random_seed(2)
    model = transfer.build_model(IMG, weights=None)
    model.get_layer("resnet50v2").trainable = True
    before = _moving_statistics(model)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="binary_crossentropy")
    images = np.random.default_rng(1).uniform(0, 255, (4, IMG, IMG, 3)).astype(np.float32)
    model.train_on_batch(images, np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32))
    moved = [not np.array_equal(old, new) for old, new in zip(before, _moving_statistics(model))]
    assert any(moved)


def test_classifier_head_shares_the_models_layers(model):
    head = transfer.classifier_head(model)
    assert head.get_layer("classifier") is model.get_layer("classifier")
    assert head.input.shape[-1] == 2048


def test_saved_model_loads_in_safe_mode_and_predicts_the_same(model, tmp_path):
    path = transfer.save_model(model, tmp_path / "m.keras")
    loaded = transfer.load_model(path)
    images = np.random.default_rng(2).uniform(0, 255, (2, IMG, IMG, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no temporary file left


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="m.keras not found"):
        transfer.load_model(tmp_path / "m.keras")


# --------------------------------------------------------------------------- weights
def test_weights_none_is_random_and_says_so():
    keras_weights, info = transfer.resolve_weights("none", allow_random_weights=False)
    assert keras_weights is None and not info.pretrained and info.used == "random"
    assert info.source == "weights=none was requested"  # the reason every caveat gives


def _save_base_weights(path):
    keras.utils.set_random_seed(3)
    base = transfer.build_base_model(IMG, None)
    base.save_weights(path)
    return base


def test_weights_file_is_loaded(tmp_path):
    base = _save_base_weights(tmp_path / "base.weights.h5")
    keras_weights, info = transfer.resolve_weights(str(tmp_path / "base.weights.h5"), False)
    assert info.used == "file" and info.pretrained
    keras.utils.set_random_seed(4)  # a different random start, overwritten by the file
    model = transfer.build_model(IMG, keras_weights)
    for expected, got in zip(base.weights, model.get_layer("resnet50v2").weights):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="weights: file .*absent.h5 does not exist"):
        transfer.resolve_weights("/nowhere/absent.h5", True)


def _no_network(*args, **kwargs):
    raise Exception("URL fetch failure on https://example.invalid: None -- no network in this test")


def test_imagenet_unavailable_falls_back_to_random_loudly(monkeypatch):
    monkeypatch.setattr(keras.utils, "get_file", _no_network)
    keras_weights, info = transfer.resolve_weights("imagenet", allow_random_weights=True)
    assert keras_weights is None and info.used == "random" and not info.pretrained
    assert "ImageNet weights unavailable" in info.source and "no network" in info.source


def test_imagenet_unavailable_without_fallback_names_the_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setattr(keras.utils, "get_file", _no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    expected = tmp_path / "models" / RESNET_FILE
    with pytest.raises(transfer.WeightsUnavailableError, match=str(expected)) as error:
        transfer.resolve_weights("imagenet", allow_random_weights=False)
    assert RESNET_FILE in str(error.value) and "data_instructions.md" in str(error.value)


def test_imagenet_weights_from_the_keras_cache_work_offline(monkeypatch, tmp_path):
    """A weights file placed in $KERAS_HOME/models is used without any download.

    The real file cannot be fetched here, so the test writes a legacy .h5 file of the same
    kind (random weights) and makes bcnb expect its checksum.
    """
    keras.utils.set_random_seed(5)
    base = transfer.build_base_model(IMG, None)
    cached = tmp_path / "models" / RESNET_FILE
    cached.parent.mkdir()
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(cached, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, base)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    resnet = replace(BACKBONES["resnet50v2"], md5=hashlib.md5(cached.read_bytes()).hexdigest())
    monkeypatch.setitem(BACKBONES, "resnet50v2", resnet)
    keras_weights, info = transfer.resolve_weights("imagenet", allow_random_weights=False)
    assert info.used == "imagenet" and info.pretrained and keras_weights == str(cached)
    model = transfer.build_model(IMG, keras_weights)
    for expected, got in zip(base.weights, model.get_layer("resnet50v2").weights):
        np.testing.assert_array_equal(expected.numpy(), got.numpy())


def test_weights_info_round_trip(tmp_path):
    _, info = transfer.resolve_weights("none", True)
    transfer.save_weights_info(info, tmp_path)
    assert transfer.load_weights_info(tmp_path) == info


def test_mixed_bfloat16_computes_in_bf16_but_answers_in_float32():
    keras.utils.set_random_seed(6)
    model = transfer.build_model(IMG, None, precision="mixed_bfloat16")
    assert model.get_layer("resnet50v2").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("classifier").dtype_policy.name == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    images = np.random.default_rng(3).uniform(0, 255, (2, IMG, IMG, 3)).astype(np.float32)
    assert model.predict(images, verbose=0).dtype == np.float32
    float32 = transfer.build_model(IMG, None)
    float32.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(images, verbose=0), float32.predict(images, verbose=0), atol=0.05
    )


def test_fine_tuning_unfreezes_the_top_but_never_batchnorm():
    """The top layers learn, BatchNormalization stays frozen with its statistics fixed."""
    keras.utils.set_random_seed(7)
    model = transfer.build_model(IMG, weights=None)
    base = model.get_layer("resnet50v2")
    learning = transfer.unfreeze_top_layers(model, 12)
    top = base.layers[-12:]
    assert learning == [layer.name for layer in top if layer.weights and not _is_bn(layer)]
    assert "conv5_block3_3_conv" in learning and "post_bn" not in learning
    assert all(not layer.trainable for layer in base.layers[:-12])
    assert all(not layer.trainable for layer in base.layers if _is_bn(layer))
    before_stats = _moving_statistics(model)
    kernel = base.get_layer("conv5_block3_3_conv").kernel
    frozen_kernel = base.get_layer("conv1_conv").kernel
    before_kernel, before_frozen = kernel.numpy().copy(), frozen_kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    images = np.random.default_rng(2).uniform(0, 255, (4, IMG, IMG, 3)).astype(np.float32)
    model.train_on_batch(images, np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32))
    for before, after in zip(before_stats, _moving_statistics(model)):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(before_kernel, kernel.numpy())  # the unfrozen top learned
    np.testing.assert_array_equal(before_frozen, frozen_kernel.numpy())  # the rest did not


def test_unfreezing_zero_layers_leaves_only_the_head():
    keras.utils.set_random_seed(8)
    model = transfer.build_model(IMG, weights=None)
    assert transfer.unfreeze_top_layers(model, 0) == []
    assert [w.path.split("/")[0] for w in model.trainable_weights] == ["classifier", "classifier"]


def _is_bn(layer):
    return isinstance(layer, keras.layers.BatchNormalization)
