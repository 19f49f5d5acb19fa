"""Encoded images as the engines take them, the tags a runtime wraps around them,
and the normalisation of text embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageEmbedding:
    """One encoded image, in the order its placeholder appears in the messages.

    ``embedding`` is float32, C-contiguous, ``(n_tokens, width)``; ``size``
    is the encoder's input (height, width), which runtimes use for M-RoPE.
    ``key`` identifies the image's content, so a KV cache that holds it can
    tell it from another image at the same place in a conversation.
    """

    embedding: Any
    size: tuple[int, int]
    key: str = ""


@dataclass(frozen=True)
class ImageTags:
    """The strings a runtime wraps around image embeddings (per model family)."""

    start: str
    end: str
    content: str


def l2_normalised(vector: Any) -> list[float]:
    """``vector`` scaled to length 1, as the OpenAI and Ollama clients expect of an
    embedding (a zero vector stays as it is)."""
    values = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(values))
    result: list[float] = (values / norm if norm > 0 else values).tolist()
    return result
