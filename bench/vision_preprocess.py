"""Time image bytes -> encoder tensor (decode, pad to square, resize, to numpy).

A 1920x1080 JPEG (quality 90; smooth gradients, soft shapes and sensor-like
noise, so it is about as big as a photo) goes through prepare_image_sync for
each encoder size, with and without JPEG draft (DCT-scaled) decoding. One
thread, as the server runs it in an executor.

    python bench/vision_preprocess.py
    python bench/vision_preprocess.py --runs 200 --warmup 10
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time

import numpy as np
import PIL
from PIL import Image, features

from rkstream.vision.decode import decode_image
from rkstream.vision.preprocess import background_from, prepare_image_sync

WIDTH, HEIGHT = 1920, 1080
SIZES = (392, 448)
MAX_PIXELS = 16_777_216


def photo_jpeg(seed: int = 0) -> bytes:
    """A photo-like 1920x1080 JPEG, the same bytes on every run."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    img = np.stack([x / WIDTH * 200 + 30, y / HEIGHT * 180 + 40,
                    (x + y) / (WIDTH + HEIGHT) * 120 + 60], axis=-1)
    for _ in range(12):  # soft blobs, like out-of-focus objects
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        radius = rng.uniform(60, 300)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        img += blob[..., None] * rng.uniform(-90, 90, 3).astype(np.float32)
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def time_ms(data: bytes, size: int, draft: bool, runs: int, warmup: int) -> list[float]:
    background = background_from(127.5)

    def once() -> np.ndarray:
        return prepare_image_sync(data, size=(size, size), background=background,
                                  max_pixels=MAX_PIXELS, draft=draft)

    for _ in range(warmup):
        once()
    out: list[float] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        tensor = once()
        out.append((time.perf_counter_ns() - start) / 1e6)
    assert tensor.shape == (1, size, size, 3) and tensor.dtype == np.uint8
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    data = photo_jpeg()
    print(f"input: {WIDTH}x{HEIGHT} JPEG q90, {len(data) / 1024:.0f} KiB; "
          f"{args.runs} runs after {args.warmup} warm-up, one thread")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; Python "
          f"{platform.python_version()}, Pillow {PIL.__version__} "
          f"(libjpeg-turbo {features.version('libjpeg_turbo')}), numpy {np.__version__}")
    print()
    print("| encoder size | draft | decoded at | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---:|---:|---:|")
    for size in SIZES:
        for draft in (True, False):
            decoded = decode_image(data, max_pixels=MAX_PIXELS, target=(size, size),
                                   draft=draft).size
            ms = time_ms(data, size, draft, args.runs, args.warmup)
            print(f"| {size}x{size} | {'on' if draft else 'off'} | "
                  f"{decoded[0]}x{decoded[1]} | {statistics.median(ms):.2f} | "
                  f"{percentile(ms, 0.99):.2f} | {statistics.fmean(ms):.2f} |")
    print()
    print(f"command: {' '.join(['python', 'bench/vision_preprocess.py', *sys.argv[1:]])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
