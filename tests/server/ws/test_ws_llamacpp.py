"""End to end with a real model: /ws, the CPU engine and the bundled SmolLM2."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from rkstream.config import Settings
from rkstream.server.app import make_app

from helpers import WSClient, create

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def test_real_model_answers(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app(Settings()))  # engine "auto", nothing configured
    conn = WSClient(await client.ws_connect("/ws"))
    created = await conn.recv()
    assert created["model"]["engine"] == "llamacpp"
    assert created["model"]["id"].startswith("SmolLM2-135M-Instruct")
    prompt = "What is the capital of France? Answer in one sentence."
    await conn.send(create("q", prompt, params={"max_tokens": 40, "temperature": 0}))
    done = (await conn.until_done({"q"}))["q"]
    reply = conn.text("q")
    assert done["status"] in ("completed", "incomplete")
    assert reply.strip() and prompt not in reply
    assert "Paris" in reply
    assert done["usage"]["input_tokens"] > 10 and done["usage"]["output_tokens"] > 0
    assert done["timings"]["prompt_ms"] > 0 and done["timings"]["predicted_per_second"] > 0
