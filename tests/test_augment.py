"""Augmentation changes what it should, keeps what it should, and repeats exactly by seed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from bcnb.data import augment
from bcnb.data.augment import Augmentation, apply_augmentation, random_augment

STRONG = Augmentation(brightness=0.3, contrast=0.3, stain=0.2)
NOTHING = Augmentation(flip=False, rotate=False, brightness=0, contrast=0, stain=0)


def _tile(size=16, seed=0, low=0, high=256):
    """A random float32 RGB tile in 0-255 whose pixels are all distinct positions."""
    pixels = np.random.default_rng(seed).integers(low, high, (size, size, 3))
    return pixels.astype(np.float32)


# --------------------------------------------------------------------------- stains
def test_stain_round_trip_is_within_one_grey_level():
    every_level = np.arange(256, dtype=np.float32)
    pixels = np.stack(np.meshgrid(every_level, every_level[::-1], every_level[::5], indexing="ij"), -1)
    back = augment.stain_concentrations_to_rgb(augment.rgb_to_stain_concentrations(pixels))
    assert np.abs(back.numpy() - pixels).max() <= 1.0


def test_stain_matrix_rows_are_unit_vectors_and_inverted():
    np.testing.assert_allclose(np.linalg.norm(augment.RGB_FROM_STAINS, axis=1), 1.0)
    np.testing.assert_allclose(augment.RGB_FROM_STAINS @ augment.STAINS_FROM_RGB, np.eye(3), atol=1e-12)


def test_white_background_holds_no_stain():
    white = np.full((2, 2, 3), 255.0, np.float32)
    np.testing.assert_allclose(augment.rgb_to_stain_concentrations(white).numpy(), 0.0, atol=1e-6)


def test_haematoxylin_jitter_darkens_only_haematoxylin():
    # A pixel of pure haematoxylin and one of pure eosin, made by the forward model.
    pure = augment.stain_concentrations_to_rgb([[[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]]]).numpy()
    jittered = apply_augmentation(pure, stain_alpha=(1.5, 1.0, 1.0)).numpy()
    purple_change, pink_change = (jittered - pure)[0]
    assert (purple_change < -5).all()  # more haematoxylin absorbs more of every channel
    assert np.abs(pink_change).max() <= 1.0


def test_haematoxylin_jitter_moves_purple_more_than_pink():
    purple_and_pink = np.array([[[110, 60, 150], [230, 150, 190]]], np.float32)
    jittered = apply_augmentation(purple_and_pink, stain_alpha=(1.5, 1.0, 1.0)).numpy()
    purple_change, pink_change = np.abs(jittered - purple_and_pink).sum(axis=-1)[0]
    assert purple_change > 5 * pink_change
    assert (jittered[0, 0] < purple_and_pink[0, 0]).all()  # darker in every channel


def test_eosin_shift_reddens_white_background():
    white = np.full((1, 1, 3), 255.0, np.float32)
    stained = apply_augmentation(white, stain_beta=(0.0, 0.2, 0.0)).numpy()[0, 0]
    red, green, blue = stained
    assert green < blue < red < 255  # eosin absorbs green most: pink


# --------------------------------------------------------------------------- geometry
def test_half_turn_equals_flipping_both_ways():
    image = _tile()
    turned = apply_augmentation(image, quarter_turns=2).numpy()
    flipped = apply_augmentation(image, flip_left_right=True, flip_up_down=True).numpy()
    np.testing.assert_array_equal(turned, flipped)
    np.testing.assert_array_equal(turned, image[::-1, ::-1])


def test_flips_and_turns_are_the_expected_permutations():
    image = _tile()
    np.testing.assert_array_equal(apply_augmentation(image, flip_left_right=True).numpy(), image[:, ::-1])
    np.testing.assert_array_equal(apply_augmentation(image, flip_up_down=True).numpy(), image[::-1])
    np.testing.assert_array_equal(apply_augmentation(image, quarter_turns=1).numpy(), np.rot90(image))
    np.testing.assert_array_equal(apply_augmentation(image, quarter_turns=4).numpy(), image)


def test_random_geometry_only_moves_pixels():
    image = _tile()
    geometry = Augmentation(brightness=0, contrast=0, stain=0)
    outputs = [random_augment(image, tf.constant([3, i]), geometry).numpy() for i in range(8)]
    for output in outputs:
        np.testing.assert_array_equal(np.sort(output, axis=None), np.sort(image, axis=None))
    assert len({output.tobytes() for output in outputs}) > 2  # several orientations drawn


def test_non_square_images_keep_their_shape():
    image = _tile(16)[:, :10]
    outputs = [random_augment(image, tf.constant([1, i]), STRONG) for i in range(8)]
    assert all(tuple(output.shape) == (16, 10, 3) for output in outputs)


# --------------------------------------------------------------------------- light
def test_brightness_shifts_the_mean():
    image = _tile(low=60, high=190)
    brighter = apply_augmentation(image, brightness_delta=0.1).numpy()
    np.testing.assert_allclose(brighter - image, 25.5, atol=1e-4)


def test_contrast_scales_the_spread_about_the_mean():
    image = _tile(low=60, high=190)
    flatter = apply_augmentation(image, contrast_factor=0.5).numpy()
    np.testing.assert_allclose(flatter.mean(axis=(0, 1)), image.mean(axis=(0, 1)), atol=1e-3)
    np.testing.assert_allclose(flatter.std(axis=(0, 1)), 0.5 * image.std(axis=(0, 1)), rtol=1e-4)


def test_output_is_clipped_float32_of_the_same_shape():
    image = _tile().astype(np.uint8)
    extreme = apply_augmentation(image, brightness_delta=0.5, contrast_factor=2.0, stain_beta=(-1, 1, 0))
    assert extreme.dtype == tf.float32 and extreme.shape == image.shape
    assert extreme.numpy().min() >= 0 and extreme.numpy().max() <= 255
    for i in range(5):
        output = random_augment(_tile(), tf.constant([i, 0]), Augmentation(brightness=1, contrast=1, stain=1))
        assert output.dtype == tf.float32 and output.shape == (16, 16, 3)
        assert 0 <= output.numpy().min() and output.numpy().max() <= 255


# --------------------------------------------------------------------------- seeds
def test_identity_augmentation_returns_the_input():
    image = _tile()
    np.testing.assert_array_equal(random_augment(image, tf.constant([0, 0]), NOTHING).numpy(), image)
    np.testing.assert_array_equal(apply_augmentation(image).numpy(), image)
    assert NOTHING.is_identity and not Augmentation().is_identity


def test_same_seed_same_image_other_seed_other_image():
    image = _tile()
    first, again = (random_augment(image, tf.constant([7, 1], dt), STRONG) for dt in (tf.int32, tf.int64))
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    other = random_augment(image, tf.constant([7, 2]), STRONG)
    assert not np.array_equal(first.numpy(), other.numpy())


def test_augmentation_examples_are_uint8_and_distinct():
    examples = augment.augmentation_examples(_tile().astype(np.uint8), STRONG, n=3, seed=2)
    assert len(examples) == 3 and all(e.dtype == np.uint8 and e.shape == (16, 16, 3) for e in examples)
    assert len({e.tobytes() for e in examples}) == 3
    again = augment.augmentation_examples(_tile().astype(np.uint8), STRONG, n=3, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(examples, again))


# --------------------------------------------------------------------------- settings
def test_from_config_reads_the_strengths():
    cfg = SimpleNamespace(augment_brightness=0.2, augment_contrast=0.0, augment_stain=0.03)
    assert Augmentation.from_config(cfg) == Augmentation(True, True, 0.2, 0.0, 0.03)


@pytest.mark.parametrize("field,value", [("brightness", -0.1), ("contrast", 1.5), ("stain", "0.1")])
def test_bad_strengths_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Augmentation(**{field: value})


def test_bad_switch_is_refused():
    with pytest.raises(ValueError, match="flip"):
        Augmentation(flip=1)
