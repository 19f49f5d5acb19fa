"""``POST /v1/embeddings``: llama.cpp with the bundled SmolLM2 (one server for the
module), the openai SDK, and refusals on the fake engine (which cannot embed)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, BadRequestError

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


async def _post(base: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with ClientSession() as session, session.post(f"{base}/v1/embeddings",
                                                        json=body) as response:
        return response.status, await response.json()


@CPU
async def test_shapes_norms_order_and_usage(base: str) -> None:
    texts = ["the cat sat on the mat", "quarterly revenue grew", "the cat sat on the mat"]
    status, body = await _post(base, {"model": SMOL, "input": texts, "user": "u1"})
    assert status == 200, body
    assert body["object"] == "list" and body["model"] == SMOL
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = [np.asarray(d["embedding"]) for d in body["data"]]
    assert {v.shape for v in vectors} == {(576,)}
    for v in vectors:
        assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 6
    # batch order: each one alone gives the same vector
    status, alone = await _post(base, {"model": SMOL, "input": texts[1]})
    assert np.allclose(alone["data"][0]["embedding"], vectors[1], atol=1e-5)


@CPU
async def test_base64_decodes_to_the_floats(base: str) -> None:
    _, floats = await _post(base, {"input": "hello", "encoding_format": "float"})
    _, b64 = await _post(base, {"input": "hello", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats["data"][0]["embedding"], atol=1e-6)


@CPU
async def test_token_lists(base: str) -> None:
    status, one = await _post(base, {"input": [1, 2, 3]})
    assert status == 200 and len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == 3
    status, two = await _post(base, {"input": [[1, 2, 3], [4, 5]]})
    assert status == 200 and len(two["data"]) == 2
    assert np.allclose(two["data"][0]["embedding"], one["data"][0]["embedding"], atol=1e-5)
    status, bad = await _post(base, {"input": [10 ** 9]})
    assert status == 400 and bad["error"]["code"] == "invalid_field"


@CPU
@pytest.mark.parametrize(("body", "code", "param"), [
    ({"input": ""}, "invalid_field", "input"),
    ({"input": []}, "invalid_field", "input"),
    ({"input": ["ok", ""]}, "invalid_field", "input"),
    ({}, "missing_field", "input"),
    ({"input": 3.5}, "invalid_field", "input"),
    ({"input": "x", "dimensions": 64}, "embeddings_unsupported", "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "invalid_field", "encoding_format"),
    ({"input": "word " * 600}, "context_overflow", None),
])
async def test_refusals(base: str, body: dict[str, Any], code: str, param: str | None) -> None:
    status, answer = await _post(base, body)
    assert status == 400, answer
    assert answer["error"]["code"] == code and answer["error"]["message"]
    if param is not None:
        assert answer["error"]["param"] == param


@CPU
async def test_dimensions_equal_to_the_model_size_is_fine(base: str) -> None:
    status, body = await _post(base, {"input": "x", "dimensions": 576})
    assert status == 200 and len(body["data"][0]["embedding"]) == 576


@CPU
async def test_openai_sdk(base: str) -> None:
    async with AsyncOpenAI(base_url=f"{base}/v1", api_key="none") as client:
        reply = await client.embeddings.create(model=SMOL, input=["a", "b c"])
        assert len(reply.data) == 2 and len(reply.data[0].embedding) == 576
        assert reply.usage.prompt_tokens > 0
        # the SDK asks for base64 by default and decodes it; check an explicit float too
        plain = await client.embeddings.create(model=SMOL, input="a",
                                               encoding_format="float")
        assert np.allclose(plain.data[0].embedding, reply.data[0].embedding, atol=1e-6)
        with pytest.raises(BadRequestError) as caught:
            await client.embeddings.create(model=SMOL, input="a", dimensions=8)
        assert "dimensions" in str(caught.value)


async def test_a_model_that_cannot_embed(fake: Any) -> None:
    client = await fake()
    response = await client.post("/v1/embeddings", json={"input": "hello"})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "embeddings_unsupported" and "embeddings" in error["message"]
    response = await client.post("/v1/embeddings", json={"input": [[1, 2]]})
    assert (await response.json())["error"]["code"] == "embeddings_unsupported"


@CPU
async def test_counted_in_metrics_by_api(base: str) -> None:
    def counted(text: str, status: str) -> float:
        line = f'rkstream_requests_total{{api="openai_embeddings",status="{status}"}} '
        return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])

    async with ClientSession() as session:
        before = await (await session.get(f"{base}/metrics")).text()
        await _post(base, {"model": SMOL, "input": "count me"})
        await _post(base, {"model": SMOL, "input": ""})  # refused before the engine
        await _post(base, {"model": SMOL, "input": "word " * 2000})  # context_overflow
        after = await (await session.get(f"{base}/metrics")).text()
    assert counted(after, "completed") == counted(before, "completed") + 1
    assert counted(after, "failed") == counted(before, "failed") + 1
