import keras
import numpy as np
import pytest

from bcnb.config import BACKBONE_NAMES, Config
from bcnb.model import transfer
from bcnb.model.backbones import BACKBONES, get_backbone

IMG = 32
# keras.applications' own preprocess_input for each base: what the model's layer must equal.
KERAS_PREPROCESS = {
    "resnet50v2": keras.applications.resnet_v2.preprocess_input,
    "vgg19": keras.applications.vgg19.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
}


def test_the_config_knows_every_backbone():
    assert tuple(BACKBONES) == BACKBONE_NAMES == tuple(KERAS_PREPROCESS)
    with pytest.raises(ValueError, match="backbone: expected one of resnet50v2"):
        Config(backbone="resnet18")
    with pytest.raises(ValueError, match="compare_backbones"):
        Config(compare_backbones="vgg19,alexnet")


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_preprocessing_layer_equals_keras_preprocess_input(name):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    layer = get_backbone(name).preprocessing()
    expected = KERAS_PREPROCESS[name](pixels.copy())
    np.testing.assert_allclose(np.asarray(layer(pixels)), expected, rtol=1e-5, atol=1e-4)


# That build_model builds each base's model with the paper's head, frozen, and that it saves and
# loads in safe mode: tests/test_lessons_in_process.py, where notebook 02 writes each one out.


def test_weights_file_names_are_keras_cache_names():
    assert get_backbone("vgg19").weights_file(224) == "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert get_backbone("efficientnetb0").weights_file(224) == "efficientnetb0_notop.h5"
    mobilenet = get_backbone("mobilenetv2")
    assert mobilenet.weights_file(160).endswith("_1.0_160_no_top.h5")
    assert mobilenet.weights_file(50).endswith("_1.0_224_no_top.h5")  # Keras falls back to 224's


def test_missing_imagenet_file_is_named_per_backbone(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(transfer.WeightsUnavailableError, match="densenet121_weights_tf_dim"):
        transfer.resolve_weights("imagenet", False, backbone="densenet121")
