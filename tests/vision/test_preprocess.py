"""preprocess against an independent numpy reference, plus the helpers around it.

The reference does in numpy what Pillow's BILINEAR is specified to do: a
separable triangle filter whose half-width is max(scale, 1) source pixels (so
shrinking also antialiases), sample centres at (j + 0.5) * scale on a grid
whose pixel i covers [i, i + 1), weights renormalised where the window leaves
the image, then stored as 22-bit fixed point as Pillow does for 8-bit images;
one pass per axis, each rounded half up to 8 bits. Which axis goes first is
Pillow's choice (Pillow 13 may start with the vertical one,
python-pillow/Pillow#9549), so both orders are computed and the closer one
is compared.

Tolerance: max abs diff <= 1 on at most 0.1% of the values. With the
fixed-point weights the reference matches Pillow exactly in nearly every
case; the allowance is for double rounding of sample positions and for big
squares whose box cannot be aligned, where preprocess's banded resize samples
at float32 box edges (seen: 0.006% of values off by 1). A plain float
reference would need more: upscaling 64 -> 392 (ratio 8/49) puts ~2% of the
sums exactly on .5, and 22-bit weights break those ties either way.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rkstream.vision.decode import decode_image
from rkstream.vision.preprocess import background_from, prepare_image_sync, preprocess, to_square

BG = (128, 128, 128)
LIMIT = 16_777_216
PRECISION = 22  # fractional bits of Pillow's 8-bit resampling weights


# --- the reference --------------------------------------------------------------

def ref_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) triangle-filter weights in fixed point (rows sum to ~2**22)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    taps = np.arange(in_size) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / support)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.floor(weights * 2.0**PRECISION + 0.5)


def ref_resize(src: np.ndarray, width: int, height: int, *, vertical_first: bool = False
               ) -> np.ndarray:
    out = src.astype(np.float64)
    for axis in ((0, 1) if vertical_first else (1, 0)):
        want = height if axis == 0 else width
        if out.shape[axis] == want:
            continue  # Pillow skips a pass that keeps the size
        moved = np.moveaxis(out, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        # Integer-valued float64: products and sums stay exact (far below 2**53).
        sums = (ref_weights(moved.shape[0], want) @ flat).reshape(want, *moved.shape[1:])
        rounded = np.floor((sums + 2.0 ** (PRECISION - 1)) / 2.0**PRECISION)
        out = np.clip(np.moveaxis(rounded, 0, axis), 0, 255)
    return out.astype(np.uint8)


def ref_square(src: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    height, width = src.shape[:2]
    side = max(width, height)
    out = np.empty((side, side, 3), np.uint8)
    out[...] = background
    top, left = (side - height) // 2, (side - width) // 2
    out[top:top + height, left:left + width] = src
    return out


def ref_preprocess(src: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """Both pass orders' results for size (H, W), each shaped (1, H, W, 3)."""
    square = ref_square(src, BG)
    return [ref_resize(square, size[1], size[0], vertical_first=v)[None] for v in (False, True)]


def assert_close(got: np.ndarray, wants: list[np.ndarray]) -> None:
    assert all(got.shape == want.shape for want in wants) and got.dtype == np.uint8
    diffs = [np.abs(got.astype(np.int64) - want) for want in wants]
    diff = min(diffs, key=lambda d: int((d > 0).sum()))
    assert diff.max() <= 1, f"max abs diff {diff.max()}"
    assert (diff > 0).mean() <= 0.001, f"{(diff > 0).mean():.3%} of values differ"


def noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def prepare(data: bytes, size: tuple[int, int] = (448, 448), **kw: Any) -> np.ndarray:
    return prepare_image_sync(data, size=size, background=BG, max_pixels=LIMIT, **kw)


# --- the reference checks itself ------------------------------------------------------

def test_reference_by_hand() -> None:
    row = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    # 2 -> 4: centres 0.25, 0.75, 1.25, 1.75 against pixel centres 0.5, 1.5
    assert ref_resize(row, 4, 1)[0, :, 0].tolist() == [0, 64, 191, 255]
    # 6 -> 2: half-width 3. Output 0 (centre 1.5) weighs pixels 0-3 by 2:3:2:1,
    # (0*2 + 30*3 + 60*2 + 90*1) / 8 = 37.5; output 1 weighs pixels 2-5 by
    # 1:2:3:2, giving 112.5. Halves round up.
    row6 = np.array([0, 30, 60, 90, 120, 150], np.uint8).repeat(3).reshape(1, 6, 3)
    assert ref_resize(row6, 2, 1)[0, :, 0].tolist() == [38, 113]
    flat = np.full((9, 13, 3), 77, np.uint8)
    assert (ref_resize(flat, 5, 4) == 77).all()
    src = noise(11, 7)
    assert np.array_equal(ref_resize(src, 11, 7), src)
    assert np.array_equal(ref_resize(src, 11, 7, vertical_first=True), src)


# --- preprocess vs the reference -----------------------------------------------------

SHAPES = [(37, 23), (23, 37), (64, 64), (640, 480), (480, 640), (5, 2), (1, 300), (1100, 300)]
SIZES = [(448, 448), (392, 392), (24, 32), (32, 24)]  # (height, width)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{w}x{h}" for w, h in SHAPES])
@pytest.mark.parametrize("size", SIZES, ids=[f"to{w}x{h}" for h, w in SIZES])
def test_matches_reference(shape: tuple[int, int], size: tuple[int, int]) -> None:
    src = noise(*shape)
    got = preprocess(Image.fromarray(src), size, BG)
    assert_close(got, ref_preprocess(src, size))


def test_matches_reference_full_hd() -> None:
    src = noise(1080, 1920)
    assert_close(preprocess(Image.fromarray(src), (448, 448), BG), ref_preprocess(src, (448, 448)))


def test_output_layout() -> None:
    out = preprocess(Image.fromarray(noise(50, 30)), (48, 64), BG)  # (height, width)
    assert out.shape == (1, 48, 64, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("shape, size", [((1920, 1080), (448, 448)), ((480, 270), (448, 448)),
                                         ((1080, 1920), (392, 392)), ((504, 378), (448, 448))])
def test_banded_resize_equals_padding_first(shape: tuple[int, int],
                                            size: tuple[int, int]) -> None:
    # preprocess never builds the full square; where its box is aligned the
    # result must be what padding first and resizing gives, bit for bit.
    img = Image.fromarray(noise(*shape))
    naive = np.asarray(to_square(img, BG).resize(size[::-1], Image.Resampling.BILINEAR))
    assert np.array_equal(preprocess(img, size, BG)[0], naive)


# --- modes, end to end from bytes ------------------------------------------------------

def flat_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return np.floor((rgb * a + np.array(BG) * (255 - a)) / 255 + 0.5).astype(np.uint8)


def grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def test_grey() -> None:
    grey = noise(37, 23, channels=1)
    assert_close(prepare(encode(Image.fromarray(grey), "PNG")), ref_preprocess(grey3(grey),
                                                                               (448, 448)))


def test_rgba_transparent_regions_become_background() -> None:
    src = noise(23, 37, channels=4, seed=1)
    src[:, :8, 3] = 0
    out = prepare(encode(Image.fromarray(src), "PNG"), (392, 392))
    assert_close(out, ref_preprocess(flat_alpha(src[..., :3], src[..., 3]), (392, 392)))
    assert (out[0, :, :60] == BG).all()  # padding plus the transparent strip


def test_palette_with_transparency() -> None:
    palette = noise(16, 1, seed=2)[0]
    index = noise(40, 30, channels=1, seed=3) % 16
    img = Image.frombytes("P", (40, 30), index.tobytes())
    img.putpalette(palette.flatten().tolist())
    want = palette[index]
    want[index == 5] = BG
    assert_close(prepare(encode(img, "PNG", transparency=5)), ref_preprocess(want, (448, 448)))


def test_sixteen_bit_grey() -> None:
    wide = noise(30, 20, channels=1).astype(np.uint16) * 257 + 100
    data = encode(Image.fromarray(wide), "PNG")
    assert_close(prepare(data), ref_preprocess(grey3((wide >> 8).astype(np.uint8)), (448, 448)))


def test_cmyk_jpeg() -> None:
    cmyk = noise(33, 21, channels=4, seed=4)
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64)  # lossy: compare
    keep = (255 - decoded[..., 3:]) / 255                                   # decoded CMYK
    want = np.floor((255 - decoded[..., :3]) * keep + 0.5).astype(np.uint8)
    assert_close(prepare(data, (392, 392)), ref_preprocess(want, (392, 392)))


# --- to_square, background_from, prepare_image_sync -------------------------------------

def test_to_square_centres_with_floor_offsets() -> None:
    src = noise(6, 3)
    out = np.asarray(to_square(Image.fromarray(src), (1, 2, 3)))
    assert out.shape == (6, 6, 3)
    assert np.array_equal(out[1:4], src)  # (6 - 3) // 2 = 1 row above, 2 below
    assert (out[0] == (1, 2, 3)).all() and (out[4:] == (1, 2, 3)).all()
    tall = np.asarray(to_square(Image.fromarray(noise(3, 6)), BG))
    assert (tall[:, 0] == BG).all() and (tall[:, 4:] == BG).all()
    square = Image.fromarray(noise(5, 5))
    assert to_square(square, BG) is square
    assert to_square(Image.fromarray(noise(4, 2, channels=1)), BG).mode == "RGB"


def test_background_from() -> None:
    assert background_from(127.5) == (128, 128, 128)
    assert background_from(0) == (0, 0, 0)
    assert background_from(255) == (255, 255, 255)
    assert background_from((0.4, 127.5, 254.5)) == (0, 128, 255)
    with pytest.raises(ValueError):
        background_from(256)
    with pytest.raises(ValueError):
        background_from((1.0, 2.0))  # type: ignore[arg-type]


def test_prepare_raw_pixels() -> None:
    src = noise(40, 20)
    out = prepare(src[..., ::-1].tobytes(), (64, 64), format="bgr", width=40, height=20)
    assert_close(out, ref_preprocess(src, (64, 64)))


# --- draft mode ----------------------------------------------------------------------------

def photo(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255)
                                  .astype(np.uint8)), "JPEG", quality=90)


@pytest.mark.parametrize("shape", [(1920, 1080), (1080, 1920), (4000, 500)])
def test_draft_matches_full_decode(shape: tuple[int, int]) -> None:
    data = photo(*shape)
    decoded = decode_image(data, max_pixels=LIMIT, target=(448, 448))
    assert decoded.width * decoded.height < shape[0] * shape[1]
    fast = prepare(data).astype(np.int64)
    full = prepare(data, draft=False)
    assert np.abs(fast - full).mean() < 3
