"""Did a camera frame change? A 32x32 grey thumbnail and a mean absolute difference.

The thumbnail is decoded in JPEG draft mode at 1/8 scale (a 1080p frame is
decoded as 240x135), so a check costs a few milliseconds of a decode thread,
against 0.7-3.3 s of NPU for an encode on the board. Averaging ~2000 pixels
into each thumbnail pixel also averages sensor noise and JPEG artefacts away,
so a static scene's frames differ by well under one grey level.

A frame is compared with the last *encoded* frame of its stream, never with
the previous frame, so a slow drift adds up until it counts as a change.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from rkstream.vision.decode import decode_image

THUMB_SIDE = 32

Thumb = npt.NDArray[np.uint8]


def thumbnail_sync(data: bytes, *, format: str | None, width: int | None, height: int | None,
                   max_pixels: int) -> Thumb:
    """The frame as a ``(32, 32)`` uint8 grey image; blocks, so run it in the decode pool.

    Raises:
        VisionError: the bytes are not a usable image (as for an encode).
    """
    img = decode_image(data, format=format, width=width, height=height, max_pixels=max_pixels,
                       target=(THUMB_SIDE, THUMB_SIDE), draft=True)
    grey = img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX,
                                   reducing_gap=2.0)
    return np.asarray(grey, dtype=np.uint8)


def difference(a: Thumb, b: Thumb) -> float:
    """Mean absolute difference of two thumbnails, 0 (same) to 255."""
    if a.shape != b.shape:
        return 255.0
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def compare_sync(data: bytes, against: Thumb | None, *, format: str | None,
                 width: int | None, height: int | None, max_pixels: int
                 ) -> tuple[Thumb, float | None]:
    """The frame's thumbnail and its difference from ``against`` (None without one)."""
    thumb = thumbnail_sync(data, format=format, width=width, height=height,
                           max_pixels=max_pixels)
    return thumb, None if against is None else difference(thumb, against)
