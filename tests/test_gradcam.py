import keras
import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_model

from bcnb.evaluate import gradcam
from bcnb.model import transfer

IMG = 32


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    return build_tiny_model(IMG)  # a base with 4-D maps is all Grad-CAM needs


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (3, IMG, IMG, 3)).astype("float32")


def _class_activation_map(model, images, sign):
    """CAM by hand (Zhou et al.): with pooling + one Dense unit, Grad-CAM must equal it."""
    maps = transfer.base_of(model)(model.get_layer("preprocess")(images), training=False).numpy()
    weights = model.get_layer("classifier").kernel.numpy()[:, 0]
    cam = np.maximum(sign * np.tensordot(maps, weights, axes=([3], [0])), 0)[..., None]
    import tensorflow as tf

    cam = tf.image.resize(cam, (IMG, IMG), method="bilinear").numpy()[..., 0]
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


@pytest.mark.parametrize("malignant", [True, False])
def test_gradcam_equals_the_class_activation_map(model, images, malignant):
    heat, probability = gradcam.gradcam(model, images, called_malignant=[malignant] * 3)
    assert heat.shape == (3, IMG, IMG) and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(probability, model.predict(images, verbose=0).reshape(-1), rtol=1e-4)
    expected = _class_activation_map(model, images, 1 if malignant else -1)
    np.testing.assert_allclose(heat, expected, atol=1e-4)


@pytest.mark.parametrize("bias", [30.0, -30.0])
def test_a_saturated_probability_still_gives_a_heatmap(images, bias):
    """A logit of +-30 saturates the float32 sigmoid (1.0, or 1e-13, far below any clipping);
    the heatmap comes from the logit itself, so it still shows where the evidence is."""
    keras.utils.set_random_seed(3)
    saturated = build_tiny_model(IMG)
    classifier = saturated.get_layer("classifier")
    # Every feature (a ReLU output, never negative) speaks for the predicted class.
    classifier.kernel.assign(np.sign(bias) * np.abs(classifier.kernel.numpy()))
    classifier.bias.assign([bias])
    probability = saturated.predict(images, verbose=0).ravel()
    assert (probability == 1.0).all() if bias > 0 else (probability < 1e-7).all()
    heat, probability = gradcam.gradcam(saturated, images)  # explains the class it predicts
    assert (heat.max(axis=(1, 2)) == 1).all()  # every map non-zero, scaled to its peak
    expected = _class_activation_map(saturated, images, 1 if bias > 0 else -1)
    np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_the_two_classes_light_up_different_places(model, images):
    """Evidence for malignant and for benign come from opposite signs of the same sum."""
    malignant, _ = gradcam.gradcam(model, images, called_malignant=[True] * 3)
    benign, _ = gradcam.gradcam(model, images, called_malignant=[False] * 3)
    assert not np.allclose(malignant, benign)


def test_overlay_blends_the_heatmap_over_the_image():
    image = np.full((4, 4, 3), 100, dtype="uint8")
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = gradcam.overlay(image, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    np.testing.assert_array_equal(gradcam.overlay(image, heat, alpha=0.0), image)
    assert out[0, 0, 0] > out[3, 3, 0]  # "jet" is red where the heat is highest


def test_pick_examples_covers_right_and_wrong_of_each_class():
    predictions = pd.DataFrame({
        "label": ["benign"] * 4 + ["malignant"] * 4,
        "predicted": ["benign"] * 3 + ["malignant"] * 3 + ["benign"] * 2,
    })  # fmt: skip
    picked = gradcam.pick_examples(predictions, per_group=2, seed=0)
    counts = picked.groupby(["label", "outcome"]).size().to_dict()
    expected = {("benign", "right"): 2, ("benign", "wrong"): 1, ("malignant", "right"): 2}
    assert counts == {**expected, ("malignant", "wrong"): 2}


def test_confident_errors_come_surest_first_and_only_wrong_ones():
    decided = pd.DataFrame(
        {
            "label": ["benign", "benign", "malignant", "malignant", "benign"],
            "predicted": ["malignant", "malignant", "benign", "malignant", "benign"],
            "calibrated_probability": [0.62, 0.97, 0.10, 0.99, 0.01],
        }
    )
    errors = gradcam.confident_errors(decided, count=2)
    # 0.97 called malignant (confidence 0.97), then 0.10 called benign (0.90); 0.62 is cut
    assert errors["calibrated_probability"].tolist() == [0.97, 0.10]
    assert errors["confidence"].round(2).tolist() == [0.97, 0.90] and set(errors["outcome"]) == {"wrong"}
    assert gradcam.confident_errors(decided.iloc[3:]).empty
