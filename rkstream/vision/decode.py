"""Turn the bytes of an image part into an RGB Pillow image, refusing bad input.

Only what protocol v1 allows is decoded: JPEG, PNG and WebP (told apart by
their magic bytes, whatever Pillow could open besides), and raw 8-bit
``rgb``/``bgr`` pixels with a width and height. Every refusal is a
:class:`~rkstream.errors.VisionError` whose message says what to send instead.

Sizes are checked from the header before any pixel is decoded, so a small
file that claims a huge canvas costs nothing.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from rkstream.errors import VisionError

__all__ = ["DEFAULT_BACKGROUND", "ENCODED_FORMATS", "RAW_FORMATS", "decode_image", "sniff_format"]

ENCODED_FORMATS = ("jpeg", "png", "webp")
RAW_FORMATS = ("rgb", "bgr")
#: 127.5 stored as 8 bits, the official demo's padding colour.
DEFAULT_BACKGROUND = (128, 128, 128)

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_LIMIT_KEY = "limits.max_image_pixels"
_SUPPORTED = "send JPEG, PNG or WebP, or raw rgb/bgr with width and height"
# Formats people send by mistake, named so the error can say what was received.
_OTHER_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def sniff_format(data: bytes) -> str | None:
    """Name the image format from its magic bytes.

    Args:
        data: the start of the file (12 bytes are enough).

    Returns:
        "jpeg", "png" or "webp", or None for anything else.
    """
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _describe(data: bytes) -> str:
    """Say in words what some bytes look like, for error messages."""
    sniffed = sniff_format(data)
    if sniffed is not None:
        return {"jpeg": "JPEG", "png": "PNG", "webp": "WebP"}[sniffed]
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return f"{name}, which is not supported"
    if data[4:8] == b"ftyp":
        return "HEIC/AVIF, which is not supported"
    return f"no known image format (it starts with {data[:8].hex(' ')})"


def decode_image(
    data: bytes,
    *,
    format: str | None = None,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int,
    target: tuple[int, int] | None = None,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    draft: bool = True,
) -> Image.Image:
    """Decode image bytes into an RGB image, upright as its EXIF says.

    Args:
        data: the encoded file, or raw pixels for "rgb"/"bgr".
        format: "jpeg", "png", "webp", "rgb" or "bgr"; None sniffs the bytes.
            A named encoded format must match the bytes.
        width: pixels per row; required for raw formats, ignored otherwise.
        height: number of rows; required for raw formats, ignored otherwise.
        max_pixels: the most width*height allowed, checked before decoding.
        target: the encoder's (height, width). A JPEG far larger than it is
            decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling), keeping its
            longer side at least max(target) so the later resize still shrinks.
        background: colour that transparent pixels are composited onto, so
            they look like the square padding.
        draft: False decodes JPEGs at full size even when target is given.

    Returns:
        An RGB image. With draft scaling it is smaller than the file's size.

    Raises:
        VisionError: invalid_image, unsupported_image_format,
            image_size_mismatch or image_too_large.
    """
    name = format.lower() if format is not None else None
    if name is not None and name in RAW_FORMATS:
        return _decode_raw(data, name, width, height, max_pixels)
    if name is not None and name not in ENCODED_FORMATS:
        raise VisionError(
            "unsupported_image_format",
            f"format {format!r} is not known; use jpeg, png, webp, rgb or bgr",
            param="format",
        )
    if not data:
        raise VisionError("invalid_image", "the image data is empty; send the image bytes",
                          param="data")
    sniffed = sniff_format(data)
    if name is not None and name != sniffed:
        raise VisionError(
            "invalid_image",
            f"format is {name!r} but the data looks like {_describe(data)}; send {name} bytes"
            " or set format to what the data is",
            param="data",
        )
    if sniffed is None:
        raise VisionError(
            "unsupported_image_format",
            f"the data looks like {_describe(data)}; {_SUPPORTED}",
            param="data",
        )
    with _pillow_errors(max_pixels):
        img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[sniffed]])
        # Image.open has read only the header: refuse before any pixel is decoded.
        _check_pixels(img.size, max_pixels)
        if draft and target is not None and sniffed == "jpeg":
            request = _draft_request(img.size, target)
            if request is not None:
                img.draft("RGB", request)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img, background)


def _decode_raw(
    data: bytes, name: str, width: int | None, height: int | None, max_pixels: int
) -> Image.Image:
    """Wrap raw 8-bit pixels, checking the declared size against the bytes."""
    if width is None or height is None:
        field = "width" if width is None else "height"
        raise VisionError(
            "invalid_image", f"raw {name} pixels need width and height; {field} is missing",
            param=field,
        )
    for field, value in (("width", width), ("height", height)):
        if value <= 0:
            raise VisionError("invalid_image",
                              f"{field} must be a positive number of pixels, not {value}",
                              param=field)
    _check_pixels((width, height), max_pixels)
    expected = width * height * 3
    if len(data) != expected:
        raise VisionError(
            "image_size_mismatch",
            f"raw {name} data has {len(data)} bytes but width*height*3 = "
            f"{width}*{height}*3 = {expected}; send exactly that many bytes or fix"
            " width and height",
            param="data",
        )
    # The "BGR" raw mode swaps channels while copying, so bgr costs nothing extra.
    return Image.frombytes("RGB", (width, height), data, "raw", name.upper())


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise VisionError(
            "image_too_large",
            f"the image has {pixels} pixels ({size[0]}x{size[1]}); the most allowed is"
            f" {max_pixels} ({_LIMIT_KEY}); send a smaller image",
        )


@contextmanager
def _pillow_errors(max_pixels: int) -> Iterator[None]:
    """Map Pillow's exceptions, and its decompression-bomb warning, to VisionError.

    catch_warnings swaps the process-wide filter list, so threads can race on
    it; the filter only names DecompressionBombWarning and _check_pixels runs
    regardless, so a lost race changes nothing that matters.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except VisionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise VisionError(
            "image_too_large",
            f"the image is too large to decode safely ({exc}); the most allowed is"
            f" {max_pixels} pixels ({_LIMIT_KEY}); send a smaller image",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # UnidentifiedImageError is an OSError; truncated files raise OSError
        # because Pillow's LOAD_TRUNCATED_IMAGES stays False.
        raise VisionError(
            "invalid_image",
            f"the image cannot be decoded: {exc}; send a complete, valid file",
            param="data",
        ) from exc


def _draft_request(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest size to ask libjpeg for, or None when scaling would not pay.

    Padding makes a square from the longer side, so only that side has to stay
    >= the target; the request keeps the aspect ratio so Pillow's per-axis
    scale choice cannot shrink the longer side below it.
    """
    need = max(target)
    longest = max(size)
    if need <= 0 or longest < 2 * need:
        return None
    ratio = need / longest
    return max(1, math.ceil(size[0] * ratio)), max(1, math.ceil(size[1] * ratio))


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any decoded mode to RGB; alpha is composited over background."""
    if img.mode in _SIXTEEN_BIT:
        # Pillow's own I;16 -> L conversion clips at 255; keep the high byte instead.
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, (0, 0), rgba)
        return out
    return img if img.mode == "RGB" else img.convert("RGB")
