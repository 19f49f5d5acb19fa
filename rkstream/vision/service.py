"""The resident vision encoder with its embedding cache.

Decoding runs in a small thread pool (Pillow releases the GIL), pinned to
``vision.decode_cpus`` so it stays off the LLM's cores; encoding runs on one
owner thread, because the encoder (an NPU core, or ONNX Runtime) takes one
image at a time. Embeddings are cached by a hash of the image bytes and how
to read them, bounded in bytes, so a chat that resends the same photo every
turn encodes it once. Frame thumbnails (did the scene change?) are made in
the same pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from rkstream.core.embeddings import ImageEmbedding
from rkstream.core.owner import OwnerThread
from rkstream.errors import VisionError
from rkstream.log import engine_log
from rkstream.vision.change import Thumb, compare_sync
from rkstream.vision.cpus import pin_thread
from rkstream.vision.encoder import VisionEncoder
from rkstream.vision.preprocess import background_from, prepare_image_sync
from rkstream.vision.presets import VisionPreset

T = TypeVar("T")


class VisionObserver(Protocol):
    """Told what the encoder and the decode pool spent (the metrics)."""

    def vision_encoded(self, seconds: float, encoder_s: float, ahead: bool) -> None:
        """One encode: decode to embedding, of which ``encoder_s`` on the encoder."""

    def vision_decoded(self, seconds: float, step: str) -> None:
        """One decode in the pool: ``prepare`` (the encoder's input) or ``thumbnail``."""

    def frame_unchanged(self) -> None:
        """A frame reused the embedding of the last encoded frame of its stream."""


@dataclass
class Encoded:
    embedding: ImageEmbedding
    key: str
    encode_ms: float
    cached: bool


class EmbeddingCache:
    """Least recently used embeddings, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int) -> None:
        self._items: collections.OrderedDict[str, ImageEmbedding] = collections.OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> ImageEmbedding | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, key: str, item: ImageEmbedding) -> None:
        size = int(item.embedding.nbytes)
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = item
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= int(old.embedding.nbytes)


INLINE_HASH_BYTES = 256 * 1024


def content_key(data: bytes, format: str | None, width: int | None, height: int | None) -> str:
    digest = hashlib.blake2b(data, digest_size=16)
    digest.update(f"|{format}|{width}|{height}".encode())
    return digest.hexdigest()


class VisionService:
    """Bytes in, embeddings out; one per encoder file."""

    def __init__(self, encoder: VisionEncoder, preset: VisionPreset, *, cache_bytes: int,
                 max_image_pixels: int, decode_cpus: frozenset[int] = frozenset(),
                 observer: VisionObserver | None = None) -> None:
        self._observer = observer
        self.encoder = encoder
        self.preset = preset
        self.tags = preset.tags
        self.max_image_pixels = max_image_pixels
        self.decode_cpus = decode_cpus
        self.cache = EmbeddingCache(cache_bytes)
        self._background = background_from(preset.background)
        self._decoders = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="vision-decode", initializer=pin_thread,
            initargs=(decode_cpus,))
        if decode_cpus:
            engine_log.info("vision decode threads run on CPUs %s (vision.decode_cpus)",
                            ",".join(map(str, sorted(decode_cpus))))
        self._owner = OwnerThread("vision-encoder")
        self._owner.start()
        self._pending: dict[str, asyncio.Future[Encoded]] = {}
        self.closed = False  # unloaded: an encode-ahead still holding it must stop
        self.encodes = 0
        self.ahead_encodes = 0
        self.unchanged = 0
        self.encoder_busy_s = 0.0

    def _encode_sync(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        embedding = self.encoder.encode_sync(tensor)
        return embedding, time.perf_counter() - started

    def _check_open(self) -> None:
        # After close() the owner thread is gone: a call would wait forever.
        if self.closed:
            raise VisionError("encoder_error", "the vision encoder was unloaded")

    async def _in_pool(self, step: str, fn: Callable[[], T]) -> T:
        """Run a decode in the pool and report how long it took there."""
        self._check_open()

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - started

        out, seconds = await asyncio.get_running_loop().run_in_executor(self._decoders, timed)
        if self._observer is not None:
            self._observer.vision_decoded(seconds, step)
        return out

    async def key(self, data: bytes, format: str | None = None, width: int | None = None,
                  height: int | None = None) -> str:
        """The cache key of an image (hashed in the pool when it is large)."""
        self._check_open()
        if len(data) > INLINE_HASH_BYTES:  # hashing megabytes would stall the loop
            return await asyncio.get_running_loop().run_in_executor(
                self._decoders, content_key, data, format, width, height)
        return content_key(data, format, width, height)

    async def encode(self, data: bytes, *, format: str | None = None, width: int | None = None,
                     height: int | None = None, key: str | None = None,
                     ahead: bool = False) -> Encoded:
        """Decode, preprocess and encode ``data``, or take it from the cache.

        Two requests for the same bytes at once share one encode. Cancelling
        the caller does not cancel a shared encode.

        Args:
            key: the bytes' :meth:`key`, when the caller has it already.
            ahead: an encode-ahead, not one a request waits for (counted apart).

        Raises:
            VisionError: the bytes are not a usable image, or the encoder failed.
        """
        if key is None:
            key = await self.key(data, format, width, height)
        cached = self.cache.get(key)
        if cached is not None:
            return Encoded(cached, key, 0.0, True)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(
                self._encode_new(key, data, format, width, height, ahead))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _encode_new(self, key: str, data: bytes, format: str | None,
                          width: int | None, height: int | None, ahead: bool) -> Encoded:
        started = time.perf_counter()
        tensor = await self._in_pool("prepare", lambda: prepare_image_sync(
            data, format=format, width=width, height=height,
            size=self.encoder.input_size, background=self._background,
            max_pixels=self.max_image_pixels))
        self._check_open()  # closed during the decode
        embedding, encoder_s = await self._owner.call(lambda: self._encode_sync(tensor))
        item = ImageEmbedding(embedding=embedding, size=self.encoder.input_size, key=key)
        self.cache.put(key, item)
        self.encodes += 1
        self.ahead_encodes += ahead
        self.encoder_busy_s += encoder_s
        seconds = time.perf_counter() - started
        if self._observer is not None:
            self._observer.vision_encoded(seconds, encoder_s, ahead)
        return Encoded(item, key, seconds * 1000.0, False)

    async def compare(self, data: bytes, against: Thumb | None, *, format: str | None = None,
                      width: int | None = None, height: int | None = None
                      ) -> tuple[Thumb, float | None]:
        """A frame's thumbnail and its difference from ``against``, made in the pool.

        Raises:
            VisionError: the bytes are not a usable image.
        """
        return await self._in_pool("thumbnail", lambda: compare_sync(
            data, against, format=format, width=width, height=height,
            max_pixels=self.max_image_pixels))

    def note_unchanged(self) -> None:
        """A frame reused an earlier frame's embedding (it was judged unchanged)."""
        self.unchanged += 1
        if self._observer is not None:
            self._observer.frame_unchanged()

    async def close(self) -> None:
        self.closed = True
        await self._owner.stop(self.encoder.close)
        self._decoders.shutdown(wait=False, cancel_futures=True)
        engine_log.info("vision encoder closed")
