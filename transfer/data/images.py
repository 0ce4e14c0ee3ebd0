"""Decoding: the one way from a stored image (a file path, or encoded bytes as parquet and the Hub
hold them) to RGB pixels, as `datasets`' own `Image` feature decodes, and the check that a run
does before training.

- EXIF orientation is applied (phones store photos sideways with a tag saying so).
- High-bit-depth greyscale (16-bit PNG/TIFF from X-ray, microscopy, satellites: modes I;16, I, F)
  is scaled to 8 bits from the image's own minimum..maximum, instead of being clipped to white
  by Pillow's RGB conversion. A constant image becomes black.
- Any other mode (grey, RGBA, palette, CMYK) becomes RGB.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
# What Pillow raises for a file it cannot decode; a decompression bomb (more pixels than
# Image.MAX_IMAGE_PIXELS allows) is no OSError but is just as unusable.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _source(image):
    """A path, or a `datasets` image {"bytes", "path"} (bytes win: the path may be a name only)."""
    if isinstance(image, dict):
        return io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"]
    return image


def header_size(image) -> tuple[int, int]:
    """(width, height) from the header alone, nothing decoded (rotation by EXIF swaps them,
    which leaves the pixel count alone)."""
    with Image.open(_source(image)) as img:
        return img.size


def describe(image) -> str:
    return image.get("path") or "<bytes>" if isinstance(image, dict) else str(image)


def to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_BIT_DEPTH:
        a = np.asarray(img, dtype=np.float64)
        low, high = float(a.min()), float(a.max())
        scaled = (a - low) * (255.0 / (high - low)) if high > low else np.zeros_like(a)
        img = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    return img.convert("RGB")


def open_rgb(image, name: str | None = None) -> Image.Image:
    """Decode a path or {"bytes", "path"} to RGB (see above); a bad image is a DataError naming
    `name` (e.g. `train[17]`) or the file."""
    try:
        with Image.open(_source(image)) as img:
            img.load()
            return to_rgb(img)
    except DECODE_ERRORS as e:
        raise DataError(f"cannot read image {name or describe(image)} ({e}); delete or replace it") from None


def image_error(image) -> str | None:
    """Why the image does not decode, or None. JPEGs are decoded at 1/8 scale: all the data is
    still read (so truncation shows) at a fraction of the cost."""
    try:
        with Image.open(_source(image)) as img:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        return None
    except DECODE_ERRORS as e:
        return str(e) or type(e).__name__
