"""Reading image files of any common kind into the arrays the model takes.

PNG, JPEG, TIFF and BMP; grayscale, palette, RGBA and 16-bit images all become 8-bit RGB.
Each image is then fitted to img_size x img_size, either squashed (the whole field of view,
as the paper's Keras generators most likely did) or centre-cropped (keeping the aspect
ratio), or cut into tiles that keep their image's patient.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from bcnb.config import RESIZE_MODES
from bcnb.data.stain import StainNormalizer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image as an (height, width, 3) uint8 array.

    16-bit and 32-bit grayscale are scaled down (not clipped), transparency is laid over
    white (empty slide background), everything else goes through Pillow's conversion.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode one file fully into 8-bit RGB (raises on unreadable or truncated files)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb8(image)


def fit_to_square(pixels: np.ndarray, img_size: int, resize: str = "squash") -> np.ndarray:
    """Resize to img_size x img_size: squash the whole view, or crop the centre square first."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    image = Image.fromarray(pixels)
    if resize == "center_crop":
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    # Pillow's bilinear filter widens its support when shrinking, so it does not alias.
    return np.asarray(image.resize((img_size, img_size), Image.Resampling.BILINEAR))


def tile_origins(width: int, height: int, img_size: int, tiles: int) -> list[tuple[int, int]]:
    """Top-left corners of ``tiles`` img_size squares spread evenly over the image.

    The squares sit on a grid of as many columns and rows as the image's shape suggests;
    they overlap only when more tiles are asked for than fit side by side.
    """
    columns = max(1, round(math.sqrt(tiles * width / height)))
    rows = math.ceil(tiles / columns)
    xs = np.linspace(0, width - img_size, columns).round().astype(int)
    ys = np.linspace(0, height - img_size, rows).round().astype(int)
    return [(int(x), int(y)) for y in ys for x in xs][:tiles]


def cut_tile(pixels: np.ndarray, img_size: int, tiles: int, tile: int) -> np.ndarray:
    """Tile number ``tile`` of ``tiles``, at full resolution; small images are enlarged first."""
    height, width = pixels.shape[:2]
    if min(height, width) < img_size:
        scale = img_size / min(height, width)
        size = (max(img_size, round(width * scale)), max(img_size, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        height, width = pixels.shape[:2]
    x, y = tile_origins(width, height, img_size, tiles)[tile]
    return pixels[y : y + img_size, x : x + img_size]


def load_for_model(
    path: str | Path,
    img_size: int,
    resize: str,
    tiles: int = 0,
    tile: int = 0,
    stain: StainNormalizer | None = None,
) -> np.ndarray:
    """One model input: uint8 (img_size, img_size, 3) pixels.

    The model converts them to float and scales them itself, so the pipeline moves a quarter
    of the bytes a float32 copy would: less memory in prefetch buffers, and on a GPU less to
    copy to the device, where the cast is nearly free. ``stain`` maps its colours onto the
    run's stain target (an image it cannot fit is left as it is).
    """
    pixels = read_rgb(path)
    square = cut_tile(pixels, img_size, tiles, tile) if tiles else fit_to_square(pixels, img_size, resize)
    if stain is not None:
        square = stain(square)
    return np.ascontiguousarray(square, dtype=np.uint8)
