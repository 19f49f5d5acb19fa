"""Camera-like frames and an encoder with a set delay: the frame-budget tests and
bench/camera_budget.py use them.

A *scene* is a few large coloured blocks (what a camera sees); each *shot* of
it adds fresh sensor noise, so two shots of one scene have other bytes but
nearly the same thumbnail, and two scenes differ a lot.
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import numpy.typing as npt
from PIL import Image

from rkstream.vision.encoder import VisionEncoder
from rkstream.vision.presets import PRESETS
from rkstream.vision.service import VisionObserver, VisionService


def scene(seed: int, shot: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A JPEG of scene ``seed`` (4x3 coloured blocks), shot ``shot`` (its noise)."""
    blocks = np.random.default_rng(seed).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST),
                      dtype=np.float32)
    noise = np.random.default_rng(10_000 + shot).normal(0, 4, base.shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


class DelayEncoder(VisionEncoder):
    """Sleeps ``delay_s`` per image (a busy NPU core) and returns the image's mean
    pixel in every float, so a test can tell which image an embedding came from."""

    def __init__(self, delay_s: float) -> None:
        self.input_size = (32, 32)
        self.n_tokens, self.width, self.n_outputs = 4, 8, 1
        self.preset = PRESETS["qwen2-vl"]
        self.name = "onnx"
        self.delay_s = delay_s
        self.threads: set[str] = set()

    def encode_sync(self, tensor: np.ndarray) -> npt.NDArray[np.float32]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return np.full((4, 8), float(tensor.mean()), dtype=np.float32)

    def close(self) -> None:
        pass


def service(delay_s: float = 0.0, *, decode_cpus: frozenset[int] = frozenset(),
            observer: VisionObserver | None = None) -> VisionService:
    """A vision service on a :class:`DelayEncoder`."""
    return VisionService(DelayEncoder(delay_s), PRESETS["qwen2-vl"], cache_bytes=1 << 22,
                         max_image_pixels=1 << 24, decode_cpus=decode_cpus, observer=observer)
