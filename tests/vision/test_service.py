"""The vision service's pieces that need no encoder: presets from config, the cache."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rkstream.config import VisionSettings
from rkstream.core.embeddings import ImageEmbedding
from rkstream.errors import ConfigError
from rkstream.vision.service import EmbeddingCache, content_key, preset_from


def test_preset_overrides_from_config() -> None:
    preset = preset_from(replace(VisionSettings(), preset="internvl3", image_start="<i>",
                                 background=0, mean="1,2,3", std="4,5,6", size=224))
    assert preset.image_start == "<i>" and preset.image_end == "</img>"
    assert preset.background == 0 and preset.size == 224
    assert preset.mean == (1.0, 2.0, 3.0) and preset.std == (4.0, 5.0, 6.0)
    with pytest.raises(ConfigError, match="vision.mean"):
        preset_from(replace(VisionSettings(), mean="1,x,3"))
    with pytest.raises(ConfigError):
        preset_from(replace(VisionSettings(), std="1,2"))


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
