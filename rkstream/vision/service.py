"""The resident vision encoder with its embedding cache.

Decoding runs in a small thread pool (Pillow releases the GIL); encoding runs
on one owner thread, because the encoder (an NPU core, or ONNX Runtime) takes
one image at a time. Embeddings are cached by a hash of the image bytes and
how to read them, bounded in bytes, so a chat that resends the same photo
every turn encodes it once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rkstream.core.embeddings import ImageEmbedding
from rkstream.core.owner import OwnerThread
from rkstream.log import engine_log
from rkstream.vision.encoder import VisionEncoder
from rkstream.vision.preprocess import background_from, prepare_image_sync
from rkstream.vision.presets import VisionPreset


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
    """Bytes in, embeddings out; one per server."""

    def __init__(self, encoder: VisionEncoder, preset: VisionPreset, *, cache_bytes: int,
                 max_image_pixels: int, encode_ahead: bool,
                 on_encode: Callable[[float], None] | None = None) -> None:
        self._on_encode = on_encode
        self.encoder = encoder
        self.preset = preset
        self.tags = preset.tags
        self.max_image_pixels = max_image_pixels
        self.encode_ahead = encode_ahead
        self.cache = EmbeddingCache(cache_bytes)
        self._background = background_from(preset.background)
        self._decoders = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="vision-decode")
        self._owner = OwnerThread("vision-encoder")
        self._owner.start()
        self._pending: dict[str, asyncio.Future[Encoded]] = {}
        self.encodes = 0

    def _encode_sync(self, tensor: np.ndarray) -> np.ndarray:
        return self.encoder.encode_sync(tensor)

    async def encode(self, data: bytes, *, format: str | None = None, width: int | None = None,
                     height: int | None = None) -> Encoded:
        """Decode, preprocess and encode ``data``, or take it from the cache.

        Two requests for the same bytes at once share one encode. Cancelling
        the caller does not cancel a shared encode.

        Raises:
            VisionError: the bytes are not a usable image, or the encoder failed.
        """
        if len(data) > INLINE_HASH_BYTES:  # hashing megabytes would stall the loop
            key = await asyncio.get_running_loop().run_in_executor(
                self._decoders, content_key, data, format, width, height)
        else:
            key = content_key(data, format, width, height)
        cached = self.cache.get(key)
        if cached is not None:
            return Encoded(cached, key, 0.0, True)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._encode_new(key, data, format, width, height))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _encode_new(self, key: str, data: bytes, format: str | None,
                          width: int | None, height: int | None) -> Encoded:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tensor = await loop.run_in_executor(
            self._decoders, lambda: prepare_image_sync(
                data, format=format, width=width, height=height,
                size=self.encoder.input_size, background=self._background,
                max_pixels=self.max_image_pixels))
        embedding = await self._owner.call(lambda: self._encode_sync(tensor))
        item = ImageEmbedding(embedding=embedding, size=self.encoder.input_size, key=key)
        self.cache.put(key, item)
        self.encodes += 1
        seconds = time.perf_counter() - started
        if self._on_encode is not None:
            self._on_encode(seconds)
        return Encoded(item, key, seconds * 1000.0, False)

    async def close(self) -> None:
        await self._owner.stop(self.encoder.close)
        self._decoders.shutdown(wait=False, cancel_futures=True)
        engine_log.info("vision encoder closed")
