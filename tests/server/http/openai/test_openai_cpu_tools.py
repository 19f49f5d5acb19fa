"""Tool round trips on the CPU engine's path: llama.cpp with the bundled SmolLM2.

SmolLM2-135M does not call tools by itself, but it speaks ChatML, so with the
Qwen2 family's template and markup (``[chat] template`` and ``family``) the
tools reach its prompt, and ``tool_choice`` required or a named tool makes
llama.cpp sample the call under a grammar built from the tool's schema. The
rest is the same path as on the NPU: the parser, the dialect, the clients.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from rkstream.chat.presets import FAMILIES
from rkstream.config import Settings
from rkstream.models.table import top_level_name
from rkstream.server.app import make_app

from conftest import REPO
from openai_support import run_tools_check

ServerFactory = Callable[..., Awaitable[TestServer]]
TEMPLATE = REPO / "rkstream" / "chat" / "templates" / "qwen2.jinja"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = "What is the weather in Paris?"
SETTINGS = replace(Settings(), engine="llamacpp",
                   chat=replace(Settings().chat, family="qwen2", template=str(TEMPLATE)))
SMOL = top_level_name(SETTINGS)  # the name the bundled model is served under


@pytest.fixture
async def cpu_url(aiohttp_server: ServerFactory) -> str:
    assert FAMILIES["qwen2"].markup.call is not None
    server = await aiohttp_server(make_app(SETTINGS))
    return str(server.make_url("/v1"))


async def test_openai_sdk_round_trip(cpu_url: str) -> None:
    async with AsyncOpenAI(base_url=cpu_url, api_key="unused", max_retries=0) as client:
        await round_trip(client)


async def round_trip(client: AsyncOpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    first = await client.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], tool_choice="required",
        temperature=0, max_tokens=60)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)  # the schema
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"}]
    second = await client.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], temperature=0, max_tokens=30)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content


async def test_a_named_tool_streams_its_call(cpu_url: str) -> None:
    async with AsyncOpenAI(base_url=cpu_url, api_key="unused", max_retries=0) as client:
        await named_call(client)


async def named_call(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": ASK}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0, max_tokens=60, stream=True)
    pieces, names, finish = [], [], None
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            if delta.function and delta.function.arguments:
                pieces.append(delta.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    assert len(pieces) > 1  # the arguments came in pieces, as they were sampled
    assert "city" in json.loads("".join(pieces))


async def test_ai_sdk_tool_loop(cpu_url: str) -> None:
    code, summary = await run_tools_check(cpu_url, SMOL, ASK, "generate", "required-first")
    assert code == 0 and summary["errors"] == [], summary
    assert len(summary["executed"]) == 1  # the SDK ran the tool with the model's input
    first, second = summary["steps"]
    assert first["finishReason"] == "tool-calls"
    assert second["finishReason"] in ("stop", "length") and second["text"]
