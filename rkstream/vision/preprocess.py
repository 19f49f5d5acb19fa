"""Make the encoder's input tensor from a decoded image.

Same steps as the official RKLLM multimodal demo: pad to a square with a grey
background (``expand2square``), resize bilinearly to the encoder's fixed size,
and hand over uint8 NHWC. Mean/std are baked into the .rknn model, so no
normalisation happens here.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from rkstream.vision.decode import decode_image

__all__ = ["background_from", "prepare_image_sync", "preprocess", "to_square"]

# Widest alignment _resize_padded accepts to keep its band exact (output rows).
_MAX_ALIGN_STEP = 64
# Squares up to this side are cheap enough to build when the band would be inexact.
_SMALL_SQUARE = 1024


def background_from(value: float | tuple[float, float, float]) -> tuple[int, int, int]:
    """Turn a configured padding colour into 8-bit RGB.

    Halves round up, so the demo's 127.5 becomes 128 as it does once stored
    in an 8-bit image.

    Args:
        value: one grey level for all channels, or an (R, G, B) triple, each
            from 0 to 255.

    Returns:
        The colour as three ints.

    Raises:
        ValueError: a channel is outside 0-255 or not a number, or the triple
            does not have three values.
    """
    channels = (value, value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(channels) != 3:
        raise ValueError(f"a background colour needs 3 channels, got {len(channels)}")
    out: list[int] = []
    for channel in channels:
        if not isinstance(channel, (int, float)) or not 0 <= channel <= 255:
            raise ValueError(f"background channel {channel!r} is not a number from 0 to 255")
        out.append(math.floor(channel + 0.5))
    return out[0], out[1], out[2]


def to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side so the image becomes square, centred.

    Args:
        img: an RGB image (other modes are converted first).
        background: the padding colour.

    Returns:
        A max(w, h) square with the image pasted at ((side - w) // 2,
        (side - h) // 2); the image itself when it is already square.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    square = Image.new("RGB", (side, side), background)
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square


def preprocess(
    img: Image.Image, size: tuple[int, int], background: tuple[int, int, int]
) -> np.ndarray:
    """Pad to square, resize, and return the encoder input.

    The result is what resizing :func:`to_square`'s output would give, but the
    square is never built: a 4000x500 panorama would make a 48 MB square.

    Args:
        img: the decoded image.
        size: the encoder's (height, width), as ``VisionEncoder.input_size``.
        background: the padding colour.

    Returns:
        A C-contiguous, writable uint8 array of shape (1, height, width, 3).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    height, width = size
    if _band_pays(img.size, (width, height)):
        square = _resize_padded(img, (width, height), background)
    else:
        square = to_square(img, background)
        if square.size != (width, height):
            # Pillow's BILINEAR widens its support when shrinking, so it also antialiases.
            square = square.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.array(square, dtype=np.uint8)
    return pixels.reshape(1, height, width, 3)


def _align_step(side: int, count: int) -> int:
    """Output rows between whole-number source positions (side / count reduced)."""
    return count // math.gcd(side, count)


def _band_pays(image: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether _resize_padded should replace building the square (sizes are Pillow's (w, h)).

    Only when its result is exact (aligned box), or when the square would be
    too big to build cheaply; then a few values in 10,000 may be 1 off.
    """
    width, height = image
    side = max(width, height)
    if width == height or (side, side) == size:
        return False
    count = size[1] if width > height else size[0]
    return _align_step(side, count) <= _MAX_ALIGN_STEP or side > _SMALL_SQUARE


def _resize_padded(
    img: Image.Image, size: tuple[int, int], background: tuple[int, int, int]
) -> Image.Image:
    """Resize the padded square of a non-square image to size (w, h) without making it.

    Output rows (or columns, for a portrait image) whose filter window misses
    the image are plain background. The others are resampled from a band that
    holds the image plus every background pixel their windows reach, using
    Pillow's box argument so the sample positions are those of the full square.
    """
    width, height = img.size
    side = max(width, height)
    landscape = width > height  # padding goes above and below
    count = size[1] if landscape else size[0]
    length = height if landscape else width
    offset = (side - length) // 2
    # Pillow's window for output j: centre (j + 0.5) * scale, half-width
    # max(scale, 1) for the triangle filter, clipped to the square.
    scale = side / count
    centres = (np.arange(count) + 0.5) * scale
    support = max(scale, 1.0)
    lows = np.maximum(np.floor(centres - support + 0.5), 0).astype(np.int64)
    highs = np.minimum(np.floor(centres + support + 0.5), side).astype(np.int64)
    touched = np.flatnonzero((highs > offset) & (lows < offset + length))
    first, last = int(touched[0]), int(touched[-1]) + 1
    # Pillow takes the box as float32: unless its edges are whole numbers the
    # sample positions drift and values near a .5 round the other way. Edges
    # at multiples of `step` are whole; align to them when that costs few rows.
    step = _align_step(side, count)
    box_lo: float
    box_hi: float
    if step <= _MAX_ALIGN_STEP:
        first -= first % step
        last = min(count, -(-last // step) * step)
    start = min(int(lows[first]), offset)
    stop = max(int(highs[last - 1]), offset + length)
    if step <= _MAX_ALIGN_STEP:
        box_lo, box_hi = first * side // count - start, last * side // count - start
    else:
        box_lo, box_hi = first * scale - start, last * scale - start
    if landscape:
        band = Image.new("RGB", (side, stop - start), background)
        band.paste(img, (0, offset - start))
        part = band.resize((size[0], last - first), Image.Resampling.BILINEAR,
                           box=(0, box_lo, side, box_hi))
        where = (0, first)
    else:
        band = Image.new("RGB", (stop - start, side), background)
        band.paste(img, (offset - start, 0))
        part = band.resize((last - first, size[1]), Image.Resampling.BILINEAR,
                           box=(box_lo, 0, box_hi, side))
        where = (first, 0)
    out = Image.new("RGB", size, background)
    out.paste(part, where)
    return out


def prepare_image_sync(
    data: bytes,
    *,
    format: str | None = None,
    width: int | None = None,
    height: int | None = None,
    size: tuple[int, int],
    background: tuple[int, int, int],
    max_pixels: int,
    draft: bool = True,
) -> np.ndarray:
    """Decode image bytes and make the encoder input; blocks, so run it in an executor.

    Args:
        data: the encoded file, or raw pixels for "rgb"/"bgr".
        format: "jpeg", "png", "webp", "rgb" or "bgr"; None sniffs the bytes.
        width: pixels per row, for raw formats.
        height: number of rows, for raw formats.
        size: the encoder's (height, width), as ``VisionEncoder.input_size``.
        background: the padding colour, also used under transparent pixels.
        max_pixels: the most width*height a client image may have.
        draft: allow reduced-size JPEG decoding when the image is much larger
            than size.

    Returns:
        A uint8 array of shape (1, height, width, 3), as :func:`preprocess`.

    Raises:
        VisionError: the bytes cannot be used (see :func:`decode_image`).
    """
    img = decode_image(
        data,
        format=format,
        width=width,
        height=height,
        max_pixels=max_pixels,
        target=size,
        background=background,
        draft=draft,
    )
    return preprocess(img, size, background)
