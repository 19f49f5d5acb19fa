"""Tool round trips with real clients against a real server on 127.0.0.1: the
openai Python SDK, and the Vercel AI SDK's tool loop under Node
(tests/node/ai_sdk_tools_check.mjs; needs ``npm install --prefix tests/node``).

The stand-in runtime plays the model: the user's message scripts the call
(``[[reply=<tool_call>...]]``), and the tool's result scripts the final answer,
a later directive that wins over the first (tool_support.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from helpers import call, reply, served
from openai_support import WEATHER, run_tools_check

ServerFactory = Callable[..., Awaitable[TestServer]]
ZURICH = '{"city": "Zürich"}'
ASK = "What is the weather in Zürich? " + reply(call("get_weather", ZURICH))
THINK_ASK = "What is the weather in Zürich? " + reply(
    "<think>\nThe user wants the weather.\n</think>\n\n" + call("get_weather", ZURICH))


QWEN2, QWEN3 = "qwen2.5-test.rkllm", "qwen3-test.rkllm"  # served as their stems


@pytest.fixture
def base_url(named_standin_url: Any) -> Callable[..., Awaitable[str]]:
    """Start a server on a stand-in model file called ``name``; its /v1 URL."""
    async def make(name: str = QWEN2, **keys: Any) -> str:
        return str(await named_standin_url(name, **keys)) + "/v1"
    return make


def weather(city: str) -> str:
    """The tool: its result also scripts the model's next answer."""
    return f"sunny in {city} " + reply(f"It is sunny in {city}.")


# -- the openai Python SDK ------------------------------------------------------------

async def test_openai_sdk_round_trip_whole(base_url: Any) -> None:
    async with AsyncOpenAI(base_url=await base_url(), api_key="x", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": ASK}]
        first = await client.chat.completions.create(
            model=served(QWEN2), messages=messages, tools=[WEATHER])  # type: ignore[list-item]
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None and choice.message.tool_calls
        (tool_call,) = choice.message.tool_calls
        assert tool_call.type == "function" and tool_call.id.startswith("call_")
        assert tool_call.function.name == "get_weather"
        arguments = json.loads(tool_call.function.arguments)
        assert arguments == {"city": "Zürich"}
        # As the SDK's examples do: the message object itself goes back.
        messages.append(choice.message)
        messages.append({"role": "tool", "tool_call_id": tool_call.id,
                         "content": weather(arguments["city"])})
        second = await client.chat.completions.create(
            model=served(QWEN2), messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It is sunny in Zürich."
    assert not second.choices[0].message.tool_calls
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) > 0  # turn 1 was kept


async def test_openai_sdk_round_trip_streamed(base_url: Any) -> None:
    async with AsyncOpenAI(base_url=await base_url(token_bytes=1), api_key="x",
                           max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": ASK}]
        # The SDK's stream helper rebuilds the calls from the deltas and reports
        # each call's arguments as they grow.
        async with client.chat.completions.stream(
                model=served(QWEN2), messages=messages, tools=[WEATHER]) as stream:  # type: ignore
            kinds = [event.type async for event in stream]
            final = await stream.get_final_completion()
        # One event for the call's first delta (arguments ""), then one per character:
        # "ü" came in two tokens and went out whole.
        assert kinds.count("tool_calls.function.arguments.delta") == len(ZURICH) + 1
        assert kinds.count("tool_calls.function.arguments.done") == 1
        choice = final.choices[0]
        assert not choice.message.content  # only the opening chunk's ""
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        (tool_call,) = choice.message.tool_calls
        assert tool_call.function.name == "get_weather"
        assert tool_call.function.arguments == ZURICH
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": tool_call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": tool_call.function.arguments}}]})
        messages.append({"role": "tool", "tool_call_id": tool_call.id,
                         "content": weather("Zürich")})
        chunks = [c async for c in await client.chat.completions.create(
            model=served(QWEN2), messages=messages, tools=[WEATHER], stream=True)]  # type: ignore
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "It is sunny in Zürich."
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_openai_sdk_sees_reasoning_and_sends_it_back(base_url: Any) -> None:
    async with AsyncOpenAI(base_url=await base_url(QWEN3, token_bytes=2),
                           api_key="x", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": THINK_ASK}]
        chunks = [c async for c in await client.chat.completions.create(
            model=served(QWEN3), messages=messages, tools=[WEATHER], stream=True,  # type: ignore
            stream_options={"include_usage": True})]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        # Fields the SDK does not declare stay on the object as extras.
        reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        assert reasoning == "The user wants the weather."
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens_details is not None
        assert (usage.completion_tokens_details.reasoning_tokens or 0) > 0
        whole = await client.chat.completions.create(
            model=served(QWEN3), messages=messages, tools=[WEATHER])  # type: ignore[list-item]
        message = whole.choices[0].message
        assert getattr(message, "reasoning_content", None) == "The user wants the weather."
        assert message.tool_calls and whole.choices[0].finish_reason == "tool_calls"
        messages.append(message.model_dump(exclude_none=True))  # reasoning_content included
        messages.append({"role": "tool", "tool_call_id": message.tool_calls[0].id,
                         "content": weather("Zürich")})
        final = await client.chat.completions.create(
            model=served(QWEN3), messages=messages, tools=[WEATHER])  # type: ignore[list-item]
    assert final.choices[0].message.content == "It is sunny in Zürich."


# -- the Vercel AI SDK (Node) ---------------------------------------------------------

@pytest.mark.parametrize(("mode", "name", "prompt"), [
    ("generate", QWEN2, ASK),
    ("stream", QWEN2, ASK),
    ("stream", QWEN3, THINK_ASK),
])
async def test_ai_sdk_tool_loop(base_url: Any, mode: str, name: str, prompt: str) -> None:
    code, summary = await run_tools_check(await base_url(name, token_bytes=1), served(name),
                                          prompt, mode)
    assert code == 0 and summary["errors"] == [], summary
    assert summary["executed"] == ["Zürich"]
    assert summary["text"] == "It is sunny in Zürich."
    first, second = summary["steps"]  # stepCountIs(3) was not needed: two steps
    assert first["finishReason"] == "tool-calls" and first["text"] == ""
    (tool_call,) = first["toolCalls"]
    assert tool_call["name"] == "get_weather" and tool_call["input"] == {"city": "Zürich"}
    assert first["toolResults"][0]["id"] == tool_call["id"]
    assert second["finishReason"] == "stop" and second["toolCalls"] == []
