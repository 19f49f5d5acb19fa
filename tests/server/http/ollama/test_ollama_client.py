"""The Ollama API against the official ``ollama`` Python client, on a real socket.

Engines: the recording fake (shapes, errors, vision with a tiny ONNX encoder),
the RKLLM binding with the stand-in runtime (split UTF-8, real timings) and
llama.cpp with the bundled SmolLM2 (a real model).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import ollama
import pytest
from aiohttp.test_utils import TestServer
from PIL import Image

from rkstream.config import LimitSettings, RKLLMSettings, Settings, VisionSettings
from rkstream.engines.base import Engine
from rkstream.models.table import top_level_name
from rkstream.server.app import make_app

from conftest import ModelFactory
from fakes import Calls, FakeEngine
from helpers import MS, fake_settings, served
from tiny_encoder import build_tiny_encoder

ServerFactory = Callable[..., Awaitable[TestServer]]
Serve = Callable[..., Awaitable[str]]
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
         "eval_count", "eval_duration")
USER = [{"role": "user", "content": "one two three"}]


@pytest.fixture
def serve(aiohttp_server: ServerFactory, calls: Calls) -> Serve:
    """Start a server on 127.0.0.1; returns its base URL. On the fake engine
    (``fake``) its model is served as ``m``."""
    async def start(settings: Settings | None = None, *, fake: bool = True,
                    delay_ms: float = 1) -> str:
        factory: Callable[[Settings], Engine] | None = None
        settings = settings or Settings()
        if fake:
            settings = fake_settings(settings)

            def factory(s: Settings) -> Engine:
                return FakeEngine(s, delay_ms * MS, calls)
        app = make_app(settings, *([factory] if factory else []))
        server = await aiohttp_server(app, host="127.0.0.1")
        return f"http://127.0.0.1:{server.port}"
    return start


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Makes ollama clients and closes them at the end (they are not context managers:
    ollama 0.6 defines __exit__/__aexit__ without __enter__/__aenter__)."""
    made = Clients()
    yield made
    # close() is untyped in ollama 0.6.
    for client in made.sync:
        client.close()  # type: ignore[no-untyped-call]
    for aclient in made.async_:
        await aclient.close()  # type: ignore[no-untyped-call]


class Clients:
    def __init__(self) -> None:
        self.sync: list[ollama.Client] = []
        self.async_: list[ollama.AsyncClient] = []

    def make(self, host: str) -> ollama.Client:
        self.sync.append(ollama.Client(host=host))
        return self.sync[-1]

    def make_async(self, host: str) -> ollama.AsyncClient:
        self.async_.append(ollama.AsyncClient(host=host))
        return self.async_[-1]


def check_stats(response: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    for name in STATS:
        assert type(response[name]) is int and response[name] >= 0, name


async def test_sync_client(clients: Clients, serve: Serve) -> None:
    client = clients.make(await serve())

    def run() -> None:
        reply = client.chat(model="m", messages=USER)
        assert reply.message.content == "one two three " and reply.done
        assert reply.done_reason == "stop" and reply.model == "m"
        check_stats(reply)
        parts = list(client.chat(model="m", messages=USER, stream=True))
        assert "".join(p.message.content or "" for p in parts) == "one two three "
        assert [p.done for p in parts] == [False, False, False, True]
        check_stats(parts[-1])
        generated = client.generate(model="m", prompt="a b c", options={"num_predict": 2})
        assert generated.response == "a b " and generated.done_reason == "length"
        assert generated.eval_count == 2
        listed = client.list()
        assert [m.model for m in listed.models] == ["m"]
        shown = client.show("m:latest")  # Ollama's tag matches too
        assert shown.capabilities == ["completion"]
        info = shown.modelinfo
        assert info is not None and info[f"{info['general.architecture']}.context_length"] == 1024
        with pytest.raises(ollama.ResponseError) as unknown:
            client.chat(model="llama3.2", messages=USER)
        assert unknown.value.status_code == 404 and "'llama3.2' not found" in unknown.value.error
        running = client.ps()
        assert running.models[0].context_length == 1024
        assert running.models[0].expires_at is not None

    await asyncio.to_thread(run)


async def test_async_client(clients: Clients, serve: Serve) -> None:
    client = clients.make_async(await serve())
    reply = await client.chat(model="m", messages=USER, stream=False,
                              options={"temperature": 0.1, "stop": ["zzz"]})
    assert reply.message.content == "one two three "
    check_stats(reply)
    text = ""
    async for part in await client.chat(model="m", messages=USER, stream=True):
        text += part.message.content or ""
        if part.done:
            assert part.done_reason == "stop"
            check_stats(part)
    assert text == "one two three "
    pieces = [p.response or "" async for p in await client.generate(
        model="m", prompt="x y", system="s", stream=True)]
    assert "".join(pieces) == "x y "
    loaded = await client.generate(model="m")
    assert loaded.done_reason == "load"


async def test_client_errors(clients: Clients, serve: Serve, calls: Calls) -> None:
    client = clients.make_async(await serve(
        replace(Settings(), limits=replace(LimitSettings(), max_queue=0)), delay_ms=30))
    with pytest.raises(ollama.ResponseError) as bad:
        await client.chat(model="m", messages=[{"role": "robot", "content": "x"}])
    assert bad.value.status_code == 400 and "role" in bad.value.error
    with pytest.raises(ollama.ResponseError) as failed:
        async for _ in await client.chat(model="m", stream=True, messages=[
                {"role": "user", "content": "a FAIL"}]):
            pass
    assert failed.value.error == "injected"  # the mid-stream {"error"} line
    busy = asyncio.create_task(client.chat(model="m", messages=[
        {"role": "user", "content": "a b c d e f"}]))
    while len(calls.jobs) < 2:  # the FAIL request, then this one
        await asyncio.sleep(5 * MS)
    with pytest.raises(ollama.ResponseError) as full:
        await client.chat(model="m", messages=USER)
    assert full.value.status_code == 429
    assert (await busy).done_reason == "stop"


def jpeg() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


async def test_images_with_a_vision_encoder(clients: Clients, serve: Serve, calls: Calls,
                                            tmp_path: Path) -> None:
    encoder = build_tiny_encoder(tmp_path / "tiny_qwen2.onnx", size=32, patch=8, width=16)
    settings = replace(Settings(), vision=replace(VisionSettings(), encoder=str(encoder)))
    client = clients.make_async(await serve(settings))
    assert (await client.show("m")).capabilities == ["completion", "vision"]
    reply = await client.chat(model="m", messages=[
        {"role": "user", "content": "what is this", "images": [jpeg()]}])
    assert reply.message.content == "what is this "
    job = calls.jobs[0]
    assert len(job.images) == 1 and job.images[0].embedding.shape == (16, 16)
    assert job.messages[0].has_media
    generated = await client.generate(model="m", prompt="and this", images=[jpeg()])
    assert generated.response == "and this " and len(calls.jobs[1].images) == 1
    with pytest.raises(ollama.ResponseError) as bad:
        await client.generate(model="m", prompt="x", images=[b"not an image at all"])
    assert bad.value.status_code == 400


async def test_standin_split_utf8_and_timings(clients: Clients, serve: Serve,
                                              standin_libs: dict[str, Path],
                                              standin_model: ModelFactory) -> None:
    model = standin_model(token_bytes=1, waiting="repeat", prefill_delay_us=3000)
    settings = replace(Settings(), engine="rkllm", rkllm=replace(
        RKLLMSettings(), library=str(standin_libs["1.3"]), model=str(model)))
    client = clients.make_async(await serve(settings, fake=False))
    reply = "你好\u2028世界\u2029🎉\x85naïve"
    parts = [p async for p in await client.chat(
        model=served(model), stream=True,
        messages=[{"role": "user", "content": f"[[reply={reply}]]"}])]
    assert "".join(p.message.content or "" for p in parts) == reply
    final = parts[-1]
    check_stats(final)
    assert final.eval_count == len(reply.encode())
    assert final.prompt_eval_duration is not None and final.prompt_eval_duration >= 3_000_000
    assert final.eval_duration is not None and final.eval_duration > 0
    tags = await client.list()
    assert tags.models[0].details is not None and tags.models[0].details.format == "rkllm"


async def test_llamacpp_answers_through_the_client(clients: Clients, serve: Serve) -> None:
    settings = replace(Settings(), engine="llamacpp")
    client = clients.make_async(await serve(settings, fake=False))
    name = top_level_name(settings)  # the bundled model's file name
    reply = await client.chat(model=name, options={"num_predict": 30, "temperature": 0},
                              messages=[{"role": "user", "content": "What is the capital "
                                         "of France? Answer in one sentence."}])
    assert (reply.message.content or "").strip()
    assert reply.done_reason in ("stop", "length")
    check_stats(reply)
    assert reply.eval_count and reply.prompt_eval_count and reply.prompt_eval_count > 10
    listed = (await client.list()).models[0]
    assert listed.details is not None and listed.details.format == "gguf"
    assert listed.details.quantization_level == "Q4_1"
    assert listed.details.parameter_size == "135M" and listed.size and listed.size > 10**6
    shown = await client.show(name)
    assert shown.modelinfo is not None and shown.modelinfo["smollm2.context_length"] > 0

