"""Real clients against a real server on 127.0.0.1: the openai Python SDK (sync
and async) and the Vercel AI SDK's OpenAI-compatible provider (Node).

The AI SDK check needs ``npm install --prefix tests/node`` once; without it
the test fails and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, OpenAI

from rkstream.config import LimitSettings, RKLLMSettings, Settings
from rkstream.models.table import top_level_name
from rkstream.server.app import make_app
from rkstream.server.http.openai.dialect import OpenAIDialect

from conftest import ModelFactory
from fakes import FakeEngine
from helpers import MS, fake_settings, run_node_check, served

ServerFactory = Callable[..., Awaitable[TestServer]]


def hello(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


class Recorder(httpx2.AsyncBaseTransport):
    """Passes requests on and keeps the response bytes as they came off the socket,
    comments included, which the SDK never shows."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.received = bytearray()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(response.status_code, headers=response.headers,
                              stream=_Tee(response.stream, self.received),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Tee(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, into: bytearray) -> None:
        self._inner = inner
        self._into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._into += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def fake_url(aiohttp_server: ServerFactory) -> Callable[..., Awaitable[str]]:
    """Start a server on the fake engine, its model served as ``m``; return its
    /v1 base URL."""
    async def make(delay_ms: float = 1, **limits: Any) -> str:
        settings = fake_settings(limits=replace(LimitSettings(), **limits))
        app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS))
        server = await aiohttp_server(app)
        return str(server.make_url("/v1"))
    return make


@pytest.fixture
def standin_url(aiohttp_server: ServerFactory, standin_libs: dict[str, Path],
                standin_model: ModelFactory) -> Callable[..., Awaitable[tuple[str, str]]]:
    """Start a server on the RKLLM binding and the stand-in runtime (line 1.3);
    return its /v1 base URL and the name its model is served under."""
    async def make(**keys: Any) -> tuple[str, str]:
        model = standin_model(**keys)
        settings = replace(Settings(), engine="rkllm", rkllm=replace(
            RKLLMSettings(), library=str(standin_libs["1.3"]), model=str(model)))
        app = make_app(settings)
        return str((await aiohttp_server(app)).make_url("/v1")), served(model)
    return make


async def test_sync_client_whole_and_streamed(fake_url: Any) -> None:
    base_url = await fake_url()

    def talk() -> tuple[Any, list[Any], Any]:
        with OpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            whole = client.chat.completions.create(model="m", messages=hello("sync one two"))
            chunks = list(client.chat.completions.create(
                model="m", messages=hello("sync one two"), stream=True))
            legacy = client.completions.create(model="m", prompt="old style")
            return whole, chunks, legacy

    whole, chunks, legacy = await asyncio.to_thread(talk)
    assert whole.choices[0].message.content == "sync one two "
    assert whole.choices[0].finish_reason == "stop" and whole.model == "m"
    assert whole.usage.completion_tokens == 3 and whole.usage.total_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "sync one two "
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "stop"]
    assert legacy.choices[0].text == "old style " and legacy.object == "text_completion"


async def test_async_client_stream_with_usage(fake_url: Any) -> None:
    async with AsyncOpenAI(base_url=await fake_url(), api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="m", messages=hello("a b c d"), stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        pieces = [c.choices[0].delta.content for c in chunks
                  if c.choices and c.choices[0].delta.content]
        assert "".join(pieces) == "a b c d "
        assert all(c.usage is None for c in chunks[:-1])
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and usage is not None
        assert usage.completion_tokens == len(pieces) and usage.prompt_tokens == 4
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        # The SDK's stream helper rebuilds the whole completion from the chunks.
        async with client.chat.completions.stream(
                model="m", messages=hello("x y"),
                stream_options={"include_usage": True}) as helper:
            final = await helper.get_final_completion()
        assert final.choices[0].message.content == "x y "
        assert final.usage is not None and final.usage.completion_tokens == 2
        whole = await client.completions.create(model="m", prompt="p q", max_tokens=1)
        assert whole.choices[0].text == "p " and whole.choices[0].finish_reason == "length"
        streamed = await client.completions.create(model="m", prompt="p q", stream=True)
        assert "".join([c.choices[0].text async for c in streamed]) == "p q "


async def test_sdk_skips_keepalive_pings(fake_url: Any, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setattr(OpenAIDialect, "keepalive_s", 20 * MS)
    recorder = Recorder()
    async with httpx2.AsyncClient(transport=recorder) as http, AsyncOpenAI(
            base_url=await fake_url(delay_ms=100), api_key="x", max_retries=0,
            http_client=http) as client:
        stream = await client.chat.completions.create(
            model="m", messages=hello("late words"), stream=True)
        chunks = [c async for c in stream]
    # The pings reached this client while it waited 100 ms for the first word...
    waited = bytes(recorder.received[:recorder.received.index(b"late")])
    assert waited.count(b": ping\n\n") >= 2
    # ...and the SDK skipped them: every chunk it gave is a real one, the text whole.
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "late words "
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_error_mid_stream_raises_api_error(standin_url: Any) -> None:
    base_url, model = await standin_url()
    async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=model, messages=hello("tell me a story [[error_after=2]]"), stream=True)
        pieces: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces) == "Echo: tell "
        assert caught.value.code == "runtime_error"


async def test_queue_full_is_a_rate_limit_error(fake_url: Any) -> None:
    base_url = await fake_url(delay_ms=100, max_queue=0)
    async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        busy = await client.chat.completions.create(
            model="m", messages=hello("w " * 5), stream=True)
        await busy.__anext__()  # the role chunk: the one instance is taken
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="m", messages=hello("x"))
        assert caught.value.status_code == 429 and caught.value.code == "queue_full"
        assert caught.value.response.headers["retry-after"] == "1"
        # A client that retries waits Retry-After and gets in once the busy one is done.
        started = time.monotonic()
        retried = await client.with_options(max_retries=3).chat.completions.create(
            model="m", messages=hello("later"))
        assert retried.choices[0].message.content == "later "
        assert time.monotonic() - started >= 0.9
        await busy.close()


async def test_models_and_bad_requests(fake_url: Any) -> None:
    async with AsyncOpenAI(base_url=await fake_url(), api_key="x", max_retries=0) as client:
        assert [m.id async for m in client.models.list()] == ["m"]
        model = await client.models.retrieve("m")
        assert model.owned_by == "rkstream"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4o")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=hello("x"), n=2)
        assert caught.value.code == "invalid_param" and "n = 2" in caught.value.message
        image = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="m", messages=image)  # type: ignore
        assert caught.value.code == "remote_image_url"


async def test_real_model_streams_an_answer(aiohttp_server: ServerFactory) -> None:
    settings = replace(Settings(), engine="llamacpp")  # the bundled SmolLM2
    base_url = str((await aiohttp_server(make_app(settings))).make_url("/v1"))
    async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=top_level_name(settings), messages=hello("What is the capital of France?"),
            stream=True, max_tokens=40, temperature=0, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 10 and usage.completion_tokens > 0


async def run_node(base_url: str, model: str, prompt: str) -> tuple[int, dict[str, Any]]:
    return await run_node_check("ai_sdk_check.mjs", base_url, model, prompt)


async def test_ai_sdk_streams_without_errors(fake_url: Any) -> None:
    code, summary = await run_node(await fake_url(), "m", "hello from node")
    assert code == 0, summary
    assert summary["text"] == "hello from node " and summary["errors"] == []
    assert summary["finishReason"] == "stop"
    assert summary["usage"]["inputTokens"] == 3 and summary["usage"]["outputTokens"] == 3


async def test_ai_sdk_reads_a_mid_stream_error(standin_url: Any) -> None:
    base_url, model = await standin_url()
    code, summary = await run_node(base_url, model, "story [[error_after=1]]")
    assert code == 1
    (error,) = summary["errors"]
    assert "runtime_error" in error  # our error object, not a schema failure
