"""Reading the input image: every way a user's file can be wrong becomes one UsageError naming it."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from vidpipe.errors import UsageError
from vidpipe.media.atomic import os_error_reason

#: The smallest side an input image may have: the pipelines' antialiased resize pads by reflection, which needs a
#: few pixels (a 1 x 1 image crashed a rank).
MIN_SIDE = 8


def load_image(path: Path) -> Image.Image:
    """Read the image at `path`, fully decoded, upright (EXIF orientation applied) and in RGB.

    Raises `UsageError` naming `path` when it is missing, a folder, unreadable, empty, not an image, truncated
    or corrupt, or bigger than Pillow's `Image.MAX_IMAGE_PIXELS`.
    """
    path = Path(path)
    with _open_image_file(path) as file:
        image = _decode(path, file)
    if min(image.size) < MIN_SIDE:
        raise UsageError(f"input image {path} is {image.width} x {image.height} pixels: too small to resize "
                         f"from; give one at least {MIN_SIDE} x {MIN_SIDE}")
    return image


def _open_image_file(path: Path) -> BinaryIO:
    if not path.exists():
        raise UsageError(f"input image {path} does not exist: check the path")
    if path.is_dir():
        raise UsageError(f"input image {path} is a folder, not a file: pass an image file")
    if not path.is_file():  # a FIFO or a device: opening it could block or never end
        raise UsageError(f"input image {path} is not a regular file: pass an image file")
    try:
        file = open(path, "rb")  # load_image closes it
    except OSError as exc:
        raise UsageError(
            f"cannot read input image {path} ({os_error_reason(exc)}): fix its permissions or copy it"
        ) from None
    if os.fstat(file.fileno()).st_size == 0:
        file.close()
        raise UsageError(f"input image {path} is empty (0 bytes): re-export or re-download it")
    return file


def _decode(path: Path, file: BinaryIO) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; refuse both, before decoding anything.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                image.load()  # decode all of it now, so a truncated file fails here and not mid-run
                return ImageOps.exif_transpose(image).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UsageError(_too_many_pixels_message(path, exc)) from None
    except UnidentifiedImageError:
        raise UsageError(
            f"input image {path} is not an image Pillow can read: pass a PNG, JPEG or WebP file"
        ) from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ... on bad data
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(
            f"input image {path} is truncated or corrupt ({detail}): re-export or re-download it"
        ) from None


def _too_many_pixels_message(path: Path, exc: Exception) -> str:
    # Pillow's message holds the pixel count ("Image size (N pixels) exceeds ..."); the limit we enforce is
    # its warning threshold, whichever of its two checks fired.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"input image {path} has {pixels}, over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit "
        "(a possible decompression bomb): downscale it first"
    )


def test_card(width: int, height: int) -> Image.Image:
    """A fixed synthetic input (colour gradients and a disc) for benchmarks run without an image of their own."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(width, height) / 4) ** 2
    blue = np.where(disc, 230.0, 40.0)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8), "RGB")
