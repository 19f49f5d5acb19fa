"""Real clients against a real server on 127.0.0.1: the anthropic Python SDK
(messages.create, messages.stream, count_tokens, its error classes), the
@anthropic-ai/sdk under Node (tests/node/anthropic_sdk_check.mjs; needs
``npm ci --prefix tests/node``), and the CPU engine with the bundled SmolLM2,
where count_tokens is exact.

The stand-in runtime plays the model: the user's message scripts the call
(``[[reply=<tool_call>...]]``), and the tool's result scripts the final
answer, a later directive that wins over the first.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import anthropic
import pytest
from aiohttp.test_utils import TestServer
from anthropic import AsyncAnthropic
from anthropic.types import ToolParam

from rkstream.config import LimitSettings, ServerSettings, Settings
from rkstream.models.table import top_level_name
from rkstream.server.app import make_app

from anthropic_support import QWEN2, QWEN3, WEATHER
from fakes import FakeEngine
from helpers import MS, call, fake_settings, reply, run_node_check, served

ServerFactory = Callable[..., Awaitable[TestServer]]
TOOLS = [cast(ToolParam, WEATHER)]
ASK = "What is the weather in Zürich? " + reply(call("get_weather", '{"city": "Zürich"}'))
THINK_ASK = "What is the weather in Zürich? " + reply(
    "<think>\nThe user wants the weather.\n</think>\n\n" + call("get_weather",
                                                                 '{"city": "Zürich"}'))


def hello(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def fake_url(aiohttp_server: ServerFactory) -> Callable[..., Awaitable[str]]:
    """Start a server on the fake engine, its model served as ``m``; its base URL
    (the SDK adds /v1/messages)."""
    async def make(delay_ms: float = 1, server: dict[str, Any] | None = None,
                   **limits: Any) -> str:
        settings = fake_settings(limits=replace(LimitSettings(), **limits),
                                 server=replace(ServerSettings(), **(server or {})))
        app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS))
        return str((await aiohttp_server(app)).make_url(""))
    return make


@pytest.fixture
def standin_url(named_standin_url: Any) -> Any:
    """Start a server on a stand-in model file called ``name``; its base URL. The
    model is served under the file's stem (``served(name)``)."""
    return named_standin_url


def weather(city: str) -> str:
    """The tool: its result also scripts the model's next answer."""
    return f"sunny in {city} " + reply(f"It is sunny in {city}.")


# -- the anthropic Python SDK ---------------------------------------------------------

async def test_create_and_stream_text(fake_url: Any) -> None:
    async with AsyncAnthropic(base_url=await fake_url(), api_key="x", max_retries=0) as client:
        message = await client.messages.create(model="m", max_tokens=64,
                                               messages=hello("one two three"))
        assert message.content[0].type == "text"
        assert message.content[0].text == "one two three "
        assert (message.stop_reason, message.model) == ("end_turn", "m")
        assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 3)
        async with client.messages.stream(model="m", max_tokens=2,
                                          messages=hello("a b c d")) as stream:
            pieces = [piece async for piece in stream.text_stream]
            final = await stream.get_final_message()
        assert pieces == ["a ", "b "] and final.stop_reason == "max_tokens"
        assert final.usage.input_tokens == 4 and final.usage.output_tokens == 2
        raw = await client.messages.create(model="m", max_tokens=9, stream=True,
                                           messages=hello("x y"))
        assert [event.type async for event in raw] == [
            "message_start", "content_block_start", "content_block_delta",
            "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
        count = await client.messages.count_tokens(model="m", messages=hello("a b c"))
        assert count.input_tokens > 0


async def test_tool_round_trip_whole(standin_url: Any) -> None:
    async with AsyncAnthropic(base_url=await standin_url(), api_key="x",
                              max_retries=0) as client:
        messages: list[Any] = hello(ASK)
        first = await client.messages.create(model=served(QWEN2), max_tokens=256,
                                             tools=TOOLS, messages=messages)
        assert first.stop_reason == "tool_use"
        (tool,) = first.content
        assert tool.type == "tool_use" and tool.id.startswith("toolu_")
        assert (tool.name, tool.input) == ("get_weather", {"city": "Zürich"})
        messages.append(first.to_param())  # as the SDK's examples send it back
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool.id, "content": weather("Zürich")}]})
        second = await client.messages.create(model=served(QWEN2), max_tokens=256,
                                              tools=TOOLS, messages=messages)
    assert second.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in second.content] == [
        ("text", "It is sunny in Zürich.")]
    assert (second.usage.cache_read_input_tokens or 0) > 0  # turn 1 was kept


async def test_tool_round_trip_streamed_with_thinking(standin_url: Any) -> None:
    async with AsyncAnthropic(base_url=await standin_url(QWEN3, token_bytes=1),
                              api_key="x", max_retries=0) as client:
        messages: list[Any] = hello(THINK_ASK)
        async with client.messages.stream(model=served(QWEN3), max_tokens=256, tools=TOOLS,
                                          messages=messages) as stream:
            seen = [event async for event in stream]
            first = await stream.get_final_message()
        types = [e.type for e in seen]
        assert "thinking" in types and "signature" in types and "input_json" in types
        # The SDK reports the tool's input as it grows, each snapshot valid.
        snapshots = [e.snapshot for e in seen if e.type == "input_json"]
        assert snapshots[-1] == {"city": "Zürich"} and len(snapshots) > 5
        thinking, tool = first.content
        assert thinking.type == "thinking"
        assert thinking.thinking == "The user wants the weather."
        assert thinking.signature == "rkstream-unsigned"
        assert tool.type == "tool_use" and tool.input == {"city": "Zürich"}
        assert first.stop_reason == "tool_use"
        assert first.usage.output_tokens_details is not None
        assert first.usage.output_tokens_details.thinking_tokens > 0
        messages.append(first.to_param())  # the thinking block goes back too
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool.id, "content": weather("Zürich")}]})
        async with client.messages.stream(model=served(QWEN3), max_tokens=256, tools=TOOLS,
                                          messages=messages) as stream:
            text = await stream.get_final_text()
    assert text == "It is sunny in Zürich."


async def test_errors_are_the_sdk_classes(fake_url: Any) -> None:
    async with AsyncAnthropic(base_url=await fake_url(), api_key="x", max_retries=0) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="m", max_tokens=0, messages=hello("x"))
        assert bad.value.status_code == 400
        assert bad.value.body == {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "max_tokens = 0 is out of range [1, inf]"}}
        with pytest.raises(anthropic.NotFoundError):
            await client.post("/v1/messages/batches", cast_to=object, body={})
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.count_tokens(model="m", messages=[])
        assert "at least one message" in str(bad.value)


async def test_queue_full_is_overloaded_and_retried(fake_url: Any) -> None:
    base_url = await fake_url(delay_ms=100, max_queue=0)
    async with AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as client:
        busy = await client.messages.create(model="m", max_tokens=9, stream=True,
                                            messages=hello("w " * 5))
        await busy.__anext__()  # message_start: the one instance is taken
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(model="m", max_tokens=9, messages=hello("x"))
        assert caught.value.status_code == 529
        assert caught.value.response.headers["retry-after"] == "1"
        # A client that retries waits Retry-After and gets in once the busy one is done.
        started = time.monotonic()
        retried = await client.with_options(max_retries=3).messages.create(
            model="m", max_tokens=9, messages=hello("later"))
        assert retried.content[0].type == "text" and retried.content[0].text == "later "
        assert time.monotonic() - started >= 0.9
        await busy.close()


async def test_keys_and_failures_mid_stream(fake_url: Any, standin_url: Any) -> None:
    base_url = await fake_url(server={"api_keys": "k1"})
    async with AsyncAnthropic(base_url=base_url, api_key="nope", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="m", max_tokens=9, messages=hello("x"))
    # The SDK sends the key as a Bearer token; Claude Code's ANTHROPIC_API_KEY as x-api-key.
    for options in ({"api_key": "k1"}, {"api_key": None, "default_headers": {"x-api-key": "k1"}}):
        async with AsyncAnthropic(base_url=base_url, max_retries=0, **options) as client:
            message = await client.messages.create(model="m", max_tokens=9,
                                                   messages=hello("in"))
            assert message.content[0].type == "text" and message.content[0].text == "in "
    async with AsyncAnthropic(base_url=await standin_url(), api_key="x",
                              max_retries=0) as client:
        stream = await client.messages.create(
            model=served(QWEN2), max_tokens=64, stream=True,
            messages=hello("tell me a story [[error_after=2]]"))
        with pytest.raises(anthropic.APIStatusError) as caught:
            async for _ in stream:
                pass
        body = caught.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "api_error" and body["error"]["message"]


# -- @anthropic-ai/sdk (Node) -----------------------------------------------------------

@pytest.mark.parametrize(("mode", "name", "prompt"), [
    ("create", QWEN2, ASK),
    ("stream", QWEN2, ASK),
    ("stream", QWEN3, THINK_ASK),
])
async def test_node_sdk_tool_loop(standin_url: Any, mode: str, name: str, prompt: str) -> None:
    code, summary = await run_node_check("anthropic_sdk_check.mjs",
                                         await standin_url(name, token_bytes=1), served(name),
                                         prompt, mode)
    assert code == 0 and summary["errors"] == [], summary
    assert summary["executed"] == ["Zürich"] and summary["text"] == "It is sunny in Zürich."
    first, second = summary["steps"]
    assert first["stopReason"] == "tool_use" and second["stopReason"] == "end_turn"
    (tool,) = first["toolUses"]
    assert tool["name"] == "get_weather" and tool["input"] == {"city": "Zürich"}
    assert tool["id"].startswith("toolu_")
    if name == QWEN3:
        assert first["blocks"] == ["thinking", "tool_use"]
        assert first["thinking"] == [{"thinking": "The user wants the weather.",
                                      "signature": "rkstream-unsigned"}]
    if mode == "stream":
        assert {"message_start", "content_block_delta", "message_delta",
                "message_stop"} <= set(first["events"])
    assert summary["badRequest"] == {
        "isBadRequest": True, "status": 400, "type": "invalid_request_error",
        "message": "max_tokens = 0 is out of range [1, inf]"}


# -- the CPU engine: a real model, an exact count ------------------------------------------

async def test_real_model_answers_and_counts_exactly(aiohttp_server: ServerFactory) -> None:
    settings = replace(Settings(), engine="llamacpp")  # the bundled SmolLM2
    base_url = str((await aiohttp_server(make_app(settings))).make_url(""))
    body: dict[str, Any] = {"model": top_level_name(settings), "system": "Answer in one sentence.",
                            "messages": hello("What is the capital of France?")}
    async with AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0) as client:
        raw = await client.messages.with_raw_response.count_tokens(**body)
        count = await raw.parse()
        async with client.messages.stream(max_tokens=40, **body) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text.strip() and final.stop_reason in ("end_turn", "max_tokens")
    assert raw.headers["x-rkstream-token-count"] == "exact"
    usage = final.usage
    # The count is the prompt the run prefilled (plus what its KV cache held).
    assert count.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
