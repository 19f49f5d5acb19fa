"""decode_image and sniff_format: formats, modes, EXIF, raw pixels, refusals."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from rkstream.errors import VisionError
from rkstream.vision.decode import decode_image, sniff_format

LIMIT = 16_777_216
BG = (128, 128, 128)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes, **kw: Any) -> Image.Image:
    kw.setdefault("max_pixels", LIMIT)
    return decode_image(data, **kw)


def refused(code: str, data: bytes, **kw: Any) -> VisionError:
    with pytest.raises(VisionError) as info:
        decode(data, **kw)
    assert info.value.code == code, info.value.message
    return info.value


def noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def png_file(width: int, height: int, *, depth: int = 1, colour: int = 0,
             rows: bytes | None = None, stored_rows: int | None = None) -> bytes:
    """A PNG written by hand: all-zero rows unless ``rows`` is given.

    ``stored_rows`` below ``height`` makes a file whose header claims more
    than its data holds (only useful when the header alone must be refused).
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    packer = zlib.compressobj(9)
    if rows is None:
        channels = {0: 1, 2: 3}[colour]
        row = bytes(1 + (width * channels * depth + 7) // 8)
        todo = height if stored_rows is None else stored_rows
        parts = [packer.compress(row * min(1000, todo - done)) for done in range(0, todo, 1000)]
        idat = b"".join(parts) + packer.flush()
    else:
        idat = packer.compress(rows) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# --- sniffing and formats ---------------------------------------------------

def test_sniff_format() -> None:
    img = Image.fromarray(noise(8, 8))
    assert sniff_format(encode(img, "JPEG")) == "jpeg"
    assert sniff_format(encode(img, "PNG")) == "png"
    assert sniff_format(encode(img, "WEBP")) == "webp"
    assert sniff_format(encode(img, "GIF")) is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_format(b"") is None


@pytest.mark.parametrize("fmt, params", [("PNG", {}), ("WEBP", {"lossless": True})])
def test_lossless_formats_decode_exactly(fmt: str, params: dict[str, Any]) -> None:
    src = noise(37, 23)
    out = decode(encode(Image.fromarray(src), fmt, **params))
    assert out.mode == "RGB"
    assert np.array_equal(pixels(out), src)


def test_jpeg_decodes_close_to_source() -> None:
    y, x = np.mgrid[0:60, 0:80]
    src = np.stack([x * 3, y * 4, x + y], axis=-1).astype(np.uint8)
    out = decode(encode(Image.fromarray(src), "JPEG", quality=95), format="JPEG")
    assert out.size == (80, 60)
    assert np.abs(pixels(out).astype(int) - src).mean() < 2


# --- modes --------------------------------------------------------------------

def composite(fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return np.floor((fg * a + np.array(BG) * (255 - a)) / 255 + 0.5).astype(np.uint8)


def test_grey_and_bilevel_become_rgb() -> None:
    grey = noise(21, 13, channels=1)
    out = decode(encode(Image.fromarray(grey), "PNG"))
    assert np.array_equal(pixels(out), np.repeat(grey[..., None], 3, axis=2))
    bits = grey > 127
    out = decode(encode(Image.fromarray(bits), "PNG"))
    assert np.array_equal(pixels(out)[..., 0], bits.astype(np.uint8) * 255)


def test_alpha_is_composited_over_background() -> None:
    src = noise(30, 20, channels=4)
    src[:5, :, 3] = 0  # fully transparent band
    src[5:10, :, 3] = 255  # fully opaque band
    out = pixels(decode(encode(Image.fromarray(src), "PNG"), background=BG))
    assert np.array_equal(out, composite(src[..., :3], src[..., 3]))
    assert (out[:5] == BG).all()
    assert np.array_equal(out[5:10], src[5:10, :, :3])


def test_grey_alpha_is_composited() -> None:
    src = noise(16, 9, channels=2)
    out = pixels(decode(encode(Image.fromarray(src), "PNG")))
    grey = np.repeat(src[..., :1], 3, axis=2)
    assert np.array_equal(out, composite(grey, src[..., 1]))


def test_palette_with_transparency() -> None:
    palette = noise(16, 1)[0]
    index = noise(12, 10, channels=1) % 16
    img = Image.frombytes("P", (12, 10), index.tobytes())
    img.putpalette(palette.flatten().tolist())
    out = pixels(decode(encode(img, "PNG", transparency=3)))
    expected = palette[index]
    expected[index == 3] = BG
    assert np.array_equal(out, expected)


def test_sixteen_bit_grey_keeps_the_high_byte() -> None:
    wide = (np.arange(64 * 32, dtype=np.uint32) * 32).reshape(32, 64).astype(np.uint16)
    data = encode(Image.fromarray(wide), "PNG")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = pixels(decode(data))
    assert np.array_equal(out[..., 0], (wide >> 8).astype(np.uint8))
    assert out.max() == 255 and out.min() == 0  # scaled, not clipped to 255


def test_sixteen_bit_rgb_keeps_the_high_byte() -> None:
    rng = np.random.default_rng(3)
    wide = rng.integers(0, 65536, (7, 5, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + wide[r].astype(">u2").tobytes() for r in range(7))
    out = pixels(decode(png_file(5, 7, depth=16, colour=2, rows=rows)))
    assert np.array_equal(out, (wide >> 8).astype(np.uint8))


def test_cmyk_jpeg_becomes_rgb() -> None:
    y, x = np.mgrid[0:48, 0:64]
    cmyk = np.stack([x * 4, y * 5, np.full_like(x, 40), (x + y) // 2], -1).astype(np.uint8)
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = pixels(decode(data)).astype(int)
    keep = (255 - cmyk[..., 3:].astype(int)) / 255
    expected = np.floor((255 - cmyk[..., :3].astype(int)) * keep + 0.5)
    assert np.abs(out - expected).mean() < 3  # JPEG is lossy


# --- EXIF orientation ----------------------------------------------------------

def marked_jpeg(orientation: int, size: tuple[int, int] = (40, 20)) -> bytes:
    """A blue image with a red top-left block, tagged with an EXIF orientation."""
    width, height = size
    src = np.zeros((height, width, 3), np.uint8)
    src[..., 2] = 255
    src[: height // 2, : width // 4] = (255, 0, 0)
    img = Image.fromarray(src)
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation, size, red_at", [
    (1, (40, 20), (2, 2)),      # as stored: red top-left
    (3, (40, 20), (37, 17)),    # rotated 180: red bottom-right
    (6, (20, 40), (17, 2)),     # rotated 90 clockwise: red top-right
    (8, (20, 40), (2, 37)),     # rotated 90 anticlockwise: red bottom-left
])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int],
                                     red_at: tuple[int, int]) -> None:
    out = decode(marked_jpeg(orientation))
    assert out.size == size
    red = out.getpixel(red_at)
    assert isinstance(red, tuple) and red[0] > 200 and red[2] < 60


def test_exif_orientation_with_draft() -> None:
    out = decode(marked_jpeg(6, (1920, 1080)), target=(448, 448))
    assert out.size == (270, 480)


# --- raw pixels ------------------------------------------------------------------

def test_raw_rgb_and_bgr() -> None:
    src = noise(7, 5)
    out = decode(src.tobytes(), format="rgb", width=7, height=5)
    assert out.mode == "RGB" and out.size == (7, 5)
    assert np.array_equal(pixels(out), src)
    out = decode(src.tobytes(), format="bgr", width=7, height=5)
    assert np.array_equal(pixels(out), src[..., ::-1])


def test_raw_size_mismatch_names_both_numbers() -> None:
    err = refused("image_size_mismatch", bytes(100), format="rgb", width=7, height=5)
    assert "100" in err.message and "105" in err.message


@pytest.mark.parametrize("missing", ["width", "height"])
def test_raw_needs_width_and_height(missing: str) -> None:
    kw: dict[str, Any] = {"width": 7, "height": 5}
    del kw[missing]
    err = refused("invalid_image", bytes(105), format="bgr", **kw)
    assert missing in err.message and err.param == missing
    refused("invalid_image", bytes(105), format="rgb", width=0, height=5)


def test_raw_too_large() -> None:
    err = refused("image_too_large", bytes(12), format="rgb", width=2, height=2, max_pixels=3)
    assert "4 pixels" in err.message and "limits.max_image_pixels" in err.message


# --- refusals ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    err = refused("invalid_image", data[: len(data) // 2])
    assert "send a complete" in err.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unknown_bytes_are_unsupported() -> None:
    err = refused("unsupported_image_format", np.random.default_rng(1).bytes(500))
    assert "JPEG, PNG or WebP" in err.message


@pytest.mark.parametrize("fmt, name", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_pillow_formats_are_unsupported(fmt: str, name: str) -> None:
    err = refused("unsupported_image_format", encode(Image.fromarray(noise(8, 8)), fmt))
    assert name in err.message


def test_declared_format_must_match() -> None:
    jpeg = encode(Image.fromarray(noise(8, 8)), "JPEG")
    err = refused("invalid_image", jpeg, format="png")
    assert "JPEG" in err.message
    assert decode(jpeg, format="jpeg").size == (8, 8)


def test_unknown_format_name_and_empty_data() -> None:
    refused("unsupported_image_format", b"GIF89a", format="gif")
    refused("invalid_image", b"")


def test_header_size_is_refused_before_decoding() -> None:
    small = png_file(64, 64)
    assert decode(small).size == (64, 64)  # the generator makes valid files
    bomb = png_file(5000, 5000)  # 25 Mpx, about 3 KB on disk
    assert len(bomb) < 10_000
    start = time.perf_counter()
    err = refused("image_too_large", bomb, max_pixels=LIMIT)
    assert time.perf_counter() - start < 0.5
    assert "25000000" in err.message and str(LIMIT) in err.message


def test_pillow_bomb_error_maps_to_too_large() -> None:
    # 900 Mpx: Pillow refuses inside Image.open, whatever max_pixels says.
    bomb = png_file(30000, 30000, stored_rows=10)
    start = time.perf_counter()
    refused("image_too_large", bomb, max_pixels=10**12)
    assert time.perf_counter() - start < 0.5


def test_pillow_bomb_warning_maps_to_too_large() -> None:
    bomb = png_file(10000, 10000)  # 100 Mpx: between Pillow's warning and error limits
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decode must not depend on the caller's filters
        refused("image_too_large", bomb, max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == limit


# --- draft mode ---------------------------------------------------------------------

def photo(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255)
                                  .astype(np.uint8)), "JPEG", quality=90)


def test_draft_decodes_large_jpeg_smaller() -> None:
    data = photo(1920, 1080)
    assert decode(data, target=(448, 448)).size == (480, 270)  # 1/4, still >= 448 wide
    assert decode(data, target=(448, 448), draft=False).size == (1920, 1080)
    assert decode(data).size == (1920, 1080)
    assert decode(data, target=(1000, 1000)).size == (1920, 1080)  # < 2x the target


def test_draft_keeps_the_longer_side_of_panoramas() -> None:
    out = decode(photo(4000, 500), target=(448, 448))
    assert out.size == (500, 63)  # 1/8 scale; the padded square stays >= 448
