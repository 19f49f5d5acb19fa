"""The vision service's pieces that need no encoder: the embedding cache and its keys."""

from __future__ import annotations

import numpy as np

from rkstream.core.embeddings import ImageEmbedding
from rkstream.vision.service import EmbeddingCache, content_key


def item(rows: int) -> ImageEmbedding:
    return ImageEmbedding(embedding=np.zeros((rows, 16), np.float32), size=(32, 32))


def test_cache_is_bounded_in_bytes_and_lru() -> None:
    cache = EmbeddingCache(max_bytes=3 * 16 * 16 * 4)  # three 16-row embeddings
    for key in "abc":
        cache.put(key, item(16))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", item(16))
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    cache.put("huge", item(1000))  # larger than the whole cache: not kept
    assert cache.get("huge") is None


def test_content_key_includes_how_to_read_the_bytes() -> None:
    assert content_key(b"x", "rgb", 1, 1) != content_key(b"x", "bgr", 1, 1)
    assert content_key(b"x", None, None, None) == content_key(b"x", None, None, None)
