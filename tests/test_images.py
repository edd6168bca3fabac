"""Every common image format and mode becomes 8-bit RGB of the right size."""

import numpy as np
import pytest
from PIL import Image

from bcnb.data import images


def _gradient(height=60, width=90):
    """A colour image with distinct rows, columns and channels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 128)], -1).astype(
        np.uint8
    )


@pytest.mark.parametrize("suffix,exact", [(".png", True), (".bmp", True), (".tif", True), (".jpg", False)])
def test_every_format_reads_as_the_same_rgb(tmp_path, suffix, exact):
    pixels = _gradient()
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).save(path)
    read = images.read_rgb(path)
    assert read.shape == pixels.shape and read.dtype == np.uint8
    tolerance = 0 if exact else 12  # JPEG is lossy
    assert np.abs(read.astype(int) - pixels).max() <= tolerance


def _save(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _gradient()[..., 0]
    read = images.read_rgb(_save(tmp_path, Image.fromarray(gray, "L"), "g.png"))
    assert read.shape == (60, 90, 3) and (read == gray[..., None]).all()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, suffix):
    values = np.linspace(0, 65535, 60 * 90).reshape(60, 90).astype(np.uint16)
    read = images.read_rgb(_save(tmp_path, Image.fromarray(values), f"g16{suffix}"))
    assert read.dtype == np.uint8 and read.max() == 255 and read.min() == 0
    np.testing.assert_allclose(read[..., 1].astype(float), values / 257.0, atol=1)


def test_16_bit_rgb_png_is_scaled(tmp_path):
    import tensorflow as tf

    pixels16 = _gradient().astype(np.uint16) * 257
    path = tmp_path / "rgb16.png"
    path.write_bytes(tf.io.encode_png(tf.constant(pixels16)).numpy())
    np.testing.assert_array_equal(images.read_rgb(path), _gradient())


def test_transparency_is_laid_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red, right half transparent
    read = images.read_rgb(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert tuple(read[0, 0]) == (200, 0, 0) and tuple(read[0, 9]) == (255, 255, 255)


def test_palette_and_cmyk_images(tmp_path):
    pixels = _gradient()
    palette = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    assert np.abs(images.read_rgb(_save(tmp_path, palette, "p.png")).astype(int) - pixels).mean() < 8
    cmyk = Image.fromarray(pixels).convert("CMYK")
    assert images.read_rgb(_save(tmp_path, cmyk, "c.jpg")).shape == (60, 90, 3)


def test_squash_keeps_the_whole_field_of_view():
    pixels = _gradient(60, 120)
    square = images.fit_to_square(pixels, 32, "squash")
    assert square.shape == (32, 32, 3)
    assert square[:, 0, 0].max() < 20 and square[:, -1, 0].min() > 235  # both side edges kept


def test_center_crop_keeps_the_aspect_ratio():
    pixels = _gradient(60, 120)
    square = images.fit_to_square(pixels, 60, "center_crop")
    np.testing.assert_array_equal(square, pixels[:, 30:90])


def test_tiles_cover_the_image_without_overlap_when_they_fit():
    origins = images.tile_origins(width=700, height=460, img_size=224, tiles=6)
    assert origins == [(0, 0), (238, 0), (476, 0), (0, 236), (238, 236), (476, 236)]


def test_a_tile_is_a_full_resolution_crop():
    pixels = _gradient(460, 700)
    tile = images.cut_tile(pixels, 224, tiles=6, tile=4)
    np.testing.assert_array_equal(tile, pixels[236:460, 238:462])


def test_small_images_are_enlarged_before_tiling():
    tile = images.cut_tile(_gradient(50, 50), 64, tiles=2, tile=1)
    assert tile.shape == (64, 64, 3)


def test_model_input_is_uint8_pixels(tmp_path):
    pixels = _gradient(48, 48)
    path = _save(tmp_path, Image.fromarray(pixels), "x.png")
    loaded = images.load_for_model(path, pixels.shape[0], "squash")
    # Same size: nothing to resize, so the file's own pixels come back, as uint8.
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, pixels)


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="resize: expected one of squash, center_crop"):
        images.fit_to_square(_gradient(), 32, "stretch")
