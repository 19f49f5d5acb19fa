"""Embeddings on RKLLM: RKLLM_INFER_GET_LAST_HIDDEN_LAYER through the stand-in.

The stand-in's hidden states follow a formula (lib/README.md), written out
again here, so pooling and normalisation are checked exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkstream.config import RKLLMSettings, Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.errors import RequestError

from conftest import ModelFactory, Records
from helpers import Sink

MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def value(seed: int, col: int) -> float:
    x = (seed + (col + 1) * 0x9E3779B97F4A7C15) & MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    return (x >> 40) / 16777216.0 * 2.0 - 1.0


def hidden(text: str, width: int) -> np.ndarray:
    """The stand-in's hidden states of ``text``: one row per word."""
    words = text.split()
    rows = [[value(fnv1a64((" ".join(words[:i + 1]) + " ").encode()), c)
             for c in range(width)] for i in range(len(words))]
    return np.array(rows, dtype=np.float32).astype(np.float64)


def normalised(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = v / np.linalg.norm(v)
    return out


@pytest.fixture
async def make_engine(standin_libs: dict[str, Path], standin_model: ModelFactory,
                      records: Records) -> AsyncIterator[Any]:
    engines: list[RKLLMEngine] = []

    async def make(isolation: str = "process", line: str = "1.3", pooling: str = "last",
                   **keys: Any) -> RKLLMEngine:
        keys.setdefault("reply", "one two three")
        keys.setdefault("hidden_size", 16)
        model = standin_model(record=records.path, **keys)
        engine = RKLLMEngine(replace(Settings(), rkllm=replace(
            RKLLMSettings(), library=str(standin_libs[line]), model=str(model), runtime=line,
            isolation=isolation, embedding_pooling=pooling, max_context_len=64)))
        engines.append(engine)
        await engine.load()
        return engine

    yield make
    for engine in engines:
        await engine.close()


def job(prompt: str) -> Job:
    return Job(request_id="r", messages=(Message("user", (TextPart(prompt),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=50, temperature=0.5, top_p=0.7, top_k=3,
                                         repeat_penalty=1.2, frequency_penalty=0.1,
                                         presence_penalty=0.2))


@pytest.mark.parametrize("isolation", ["process", "thread"])
@pytest.mark.parametrize("line", ["1.3", "1.2"])
async def test_last_pooling(make_engine: Any, records: Records, line: str,
                            isolation: str) -> None:
    engine = await make_engine(isolation, line)
    assert engine.can_embed
    out = await engine.embed(["the quick fox", "the quick fox", "a slow dog jumps"])
    assert out.tokens == 3 + 3 + 4
    first, again, other = (np.array(v) for v in out.vectors)
    assert first.shape == (16,)
    assert np.linalg.norm(first) == pytest.approx(1.0)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)
    assert np.allclose(first, normalised(hidden("the quick fox", 16)[-1]), atol=1e-6)
    ends = [r for r in records.all("run_end") if "hidden_tokens" in r]
    assert [r["hidden_tokens"] for r in ends] == [3, 3, 4]
    assert all(r["hidden_callback_ret"] == (2 if line == "1.3" else 0) for r in ends)
    assert all(r["hidden_released"] is (line == "1.3") for r in ends)
    runs = [r for r in records.all("run") if r["infer"] and r["infer"]["mode"] == 1]
    assert len(runs) == 3


@pytest.mark.parametrize("line", ["1.3", "1.2"])
async def test_mean_pooling(make_engine: Any, line: str) -> None:
    engine = await make_engine("process", line, pooling="mean")
    out = await engine.embed(["the quick fox"])
    vector = np.array(out.vectors[0])
    assert np.allclose(vector, normalised(hidden("the quick fox", 16).mean(axis=0)), atol=1e-6)
    assert not np.allclose(vector, normalised(hidden("the quick fox", 16)[-1]))


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_refusals(make_engine: Any, isolation: str) -> None:
    engine = await make_engine(isolation)
    with pytest.raises(RequestError) as empty:
        await engine.embed(["fine", "   "])
    assert empty.value.code == "invalid_field"
    with pytest.raises(RequestError) as long:
        await engine.embed(["word " * 100])
    assert long.value.code == "context_overflow"


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_generation_after_an_embedding(make_engine: Any, records: Records,
                                             isolation: str) -> None:
    engine = await make_engine(isolation)
    instance = engine.instances[0]
    sink = Sink()
    outcome = await instance.start(job("hello there"), sink).wait()
    assert outcome.error_code is None and sink.text == "one two three"
    await engine.embed(["some other text"])
    assert instance.kv.held is None  # the cache holds the embedded text now
    sink = Sink()
    outcome = await instance.start(job("hello again"), sink).wait()
    assert outcome.error_code is None and sink.text == "one two three"
    last = records.all("run")[-1]
    assert last["infer"]["mode"] == 0
    assert "some other text" not in last["kv_text_new"]
    # nothing of the embedded text is reused: at most the runtime's template prefix
    assert last["kv_reused"] <= len("<|im_start|>user\n")
