"""``POST /api/embed`` and the legacy ``/api/embeddings``: llama.cpp with the bundled
SmolLM2 (one server for the module), the ``ollama`` client, and refusals on the
fake engine (which cannot embed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import ollama
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from rkstream.config import LlamaCppSettings, Settings
from rkstream.models.table import top_level_name
from rkstream.server.app import make_app

CPU = pytest.mark.asyncio(loop_scope="module")


SETTINGS = replace(Settings(), engine="llamacpp", llamacpp=replace(LlamaCppSettings(), n_ctx=512))
SMOL = top_level_name(SETTINGS)  # the name the bundled model is served under


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base() -> AsyncIterator[str]:
    """The base URL of one server on llama.cpp (context 512) for the module."""
    server = TestServer(make_app(SETTINGS), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def _post(base: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with ClientSession() as session, session.post(f"{base}{path}",
                                                        json=body) as response:
        return response.status, await response.json()


@CPU
async def test_embed_shape_norm_and_order(base: str) -> None:
    texts = ["the sky is blue", "bond yields rose", "the sky is blue"]
    status, body = await _post(base, "/api/embed", {"model": SMOL, "input": texts,
                                                    "truncate": True, "keep_alive": "5m"})
    assert status == 200, body
    assert body["model"] == SMOL and len(body["embeddings"]) == 3
    vectors = np.asarray(body["embeddings"])
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert body["prompt_eval_count"] > 6 and body["total_duration"] > 0
    assert body["load_duration"] == 0
    _, single = await _post(base, "/api/embed", {"model": SMOL, "input": texts[1]})
    assert np.allclose(single["embeddings"][0], vectors[1], atol=1e-5)


@CPU
async def test_legacy_embeddings(base: str) -> None:
    status, body = await _post(base, "/api/embeddings", {"model": SMOL, "prompt": "hi"})
    assert status == 200 and len(body["embedding"]) == 576
    assert abs(float(np.linalg.norm(body["embedding"])) - 1) < 1e-5
    _, empty = await _post(base, "/api/embeddings", {"model": SMOL, "prompt": ""})
    assert empty == {"embedding": []}


@CPU
async def test_empty_input_loads_only(base: str) -> None:
    for body in ({"model": SMOL}, {"model": SMOL, "input": ""},
                 {"model": SMOL, "input": []}):
        status, answer = await _post(base, "/api/embed", body)
        assert status == 200 and answer == {"model": SMOL, "embeddings": []}


@CPU
@pytest.mark.parametrize("body", [{"input": ["ok", ""]}, {"input": 3}, {"input": [[1, 2]]},
                                  {"input": "word " * 600}])
async def test_refusals(base: str, body: dict[str, Any]) -> None:
    status, answer = await _post(base, "/api/embed", {"model": SMOL, **body})
    assert status == 400 and set(answer) == {"error"} and answer["error"]


@CPU
async def test_ollama_client(base: str) -> None:
    client = ollama.AsyncClient(host=base)
    try:
        reply = await client.embed(model=SMOL, input=["one", "two words"])
        assert len(reply.embeddings) == 2 and len(reply.embeddings[0]) == 576
        assert reply.prompt_eval_count and reply.prompt_eval_count > 0
        legacy = await client.embeddings(model=SMOL, prompt="one")
        assert np.allclose(legacy.embedding, reply.embeddings[0], atol=1e-5)
        with pytest.raises(ollama.ResponseError) as caught:
            await client.embed(model=SMOL, input=["x", ""])
        assert caught.value.status_code == 400
    finally:
        await client.close()  # type: ignore[no-untyped-call]  # untyped in ollama 0.6


async def test_a_model_that_cannot_embed(fake: Any) -> None:
    client = await fake()
    for path, body in (("/api/embed", {"model": "m", "input": "hi"}),
                       ("/api/embeddings", {"model": "m", "prompt": "hi"})):
        response = await client.post(path, json=body)
        assert response.status == 400
        assert "embeddings" in (await response.json())["error"]
