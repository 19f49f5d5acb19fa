"""Tool calls and reasoning on /v1/responses, through the real app, the RKLLM
binding and the stand-in runtime: output items, tool_choice and
reasoning.effort in the prompt, and the conversation sent back as input items.

The model file's name picks the chat family (``qwen2.5-test.rkllm``: Hermes
``<tool_call>`` markup; ``qwen3-test.rkllm``: the same plus ``<think>``), and
``[[reply=...]]`` in the prompt scripts what the "model" writes. With
``token_bytes=1`` the reply comes one byte per token, so tags and UTF-8
characters arrive split.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from conftest import Records
from helpers import call, reply
from openai_support import (
    TIME_TOOL,
    WEATHER_TOOL,
    check_stream,
    item_text,
    output_of,
    response_events,
    response_text,
)

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
RESPONSES = "/v1/responses"
QWEN3 = "qwen3-test.rkllm"
ZURICH = '{"city": "Zürich 🌧"}'
THOUGHT = "<think>\nThe user wants the weather.\n</think>\n\n"


@pytest.fixture
def standin(named_standin: Any) -> Any:
    """A client of a server on a stand-in model file called ``name``."""
    return named_standin


def ask(prompt: str, /, **extra: Any) -> dict[str, Any]:
    return {"input": prompt, **extra}


async def whole(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(RESPONSES, json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def streamed(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post(RESPONSES, json={**body, "stream": True})
    assert response.status == 200, await response.text()
    return response_events(await response.text())


def last_prompt(records: Records) -> str:
    prompt: str = records.all("run")[-1]["prompt"]
    return prompt


async def test_reasoning_text_and_a_call_stream_as_items(standin: Any) -> None:
    client = await standin(QWEN3, token_bytes=1)
    body = ask("weather? " + reply(THOUGHT + "Let me check.\n" + call("get_weather", ZURICH)),
               tools=[WEATHER_TOOL])
    events = await streamed(client, body)
    final = check_stream(events)
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call"]
    thought, message, fc = final["output"]
    assert thought["id"].startswith("rs_") and thought["summary"] == []
    assert thought["content"] == [{"type": "reasoning_text",
                                   "text": "The user wants the weather."}]
    assert item_text(message) == "Let me check.\n"
    assert fc["id"].startswith("fc_") and fc["call_id"].startswith("call_")
    assert (fc["name"], fc["arguments"], fc["status"]) == ("get_weather", ZURICH, "completed")
    # The arguments come as they are written, every character whole.
    pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(pieces) > 10 and "ü" in pieces and "🌧" in pieces
    usage = final["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    assert final["status"] == "completed" and final["tools"][0]["name"] == "get_weather"
    again = await whole(client, body)
    assert [(i["type"], item_text(i)) for i in again["output"]] == [
        (i["type"], item_text(i)) for i in final["output"]]


async def test_two_calls_and_parallel_tool_calls_false(standin: Any) -> None:
    client = await standin(token_bytes=3)
    two = reply(call("get_weather", '{"city": "Oslo"}') + "\n" + call("get_time", "{}"))
    body = ask("both " + two, tools=[WEATHER_TOOL, TIME_TOOL])
    final = check_stream(await streamed(client, body))
    calls = output_of(final, "function_call")
    assert [(c["name"], c["arguments"]) for c in final["output"]] == [
        ("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")]
    assert calls[0]["call_id"] != calls[1]["call_id"]
    for extra in ({"parallel_tool_calls": False}, {"max_tool_calls": 1}):
        (only,) = (await whole(client, {**body, **extra}))["output"]
        assert only["arguments"] == '{"city": "Oslo"}'


async def test_a_call_cut_by_max_output_tokens(standin: Any) -> None:
    client = await standin()  # word tokens: the call is cut after its name
    body = ask("x " + reply(call("get_weather", '{"city": "Oslo", "days": 3}')),
               tools=[WEATHER_TOOL], max_output_tokens=4)
    answer = await whole(client, body)
    assert answer["status"] == "incomplete"
    assert answer["output"][0]["type"] == "function_call"
    assert check_stream(await streamed(client, body))["status"] == "incomplete"


@pytest.mark.parametrize(("choice", "declared", "directive"), [
    ("auto", ['"name": "get_weather"', '"name": "get_time"'], None),
    ("none", [], None),
    ("required", ['"name": "get_weather"', '"name": "get_time"'],
     "Answer by calling one or more of the tools."),
    ({"type": "function", "name": "get_time"}, ['"name": "get_time"'],
     "Answer by calling the tool get_time."),
    ({"type": "allowed_tools", "mode": "required",
      "tools": [{"type": "function", "name": "get_weather"}]}, ['"name": "get_weather"'],
     "Answer by calling one or more of the tools."),
])
async def test_tool_choice_reaches_the_prompt(standin: Any, records: Records, choice: Any,
                                              declared: list[str], directive: str | None
                                              ) -> None:
    client = await standin()
    body = await whole(client, ask("hi " + reply("Hi."), tools=[WEATHER_TOOL, TIME_TOOL],
                                   tool_choice=choice))
    assert response_text(body) == "Hi." and body["tool_choice"] == choice
    prompt = last_prompt(records)
    assert [name for name in ('"name": "get_weather"', '"name": "get_time"')
            if name in prompt] == declared
    assert (directive is not None and directive in prompt) or "Answer by calling" not in prompt


@pytest.mark.parametrize(("effort", "off"), [
    (None, False), ("none", True), ("minimal", True), ("low", False), ("xhigh", False)])
async def test_reasoning_effort_switches_thinking(standin: Any, records: Records,
                                                  effort: str | None, off: bool) -> None:
    client = await standin(QWEN3)
    extra = {} if effort is None else {"reasoning": {"effort": effort, "summary": "auto"}}
    body = await whole(client, ask("hi " + reply("Hi."), **extra))
    assert response_text(body) == "Hi."
    assert body["reasoning"] == (None if effort is None
                                 else {"effort": effort, "summary": "auto"})
    assert last_prompt(records).endswith("<think>\n\n</think>\n\n") is off


async def test_the_conversation_sent_back_reaches_the_prompt(standin: Any,
                                                             records: Records) -> None:
    client = await standin(QWEN3)
    conversation = [
        {"role": "user", "content": "weather in Oslo?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [
            {"type": "reasoning_text", "text": "I need the weather."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1",
         "output": "sunny " + reply("It is sunny.")},
    ]
    body = await whole(client, {"input": conversation, "tools": [WEATHER_TOOL]})
    assert response_text(body) == "It is sunny."
    prompt = last_prompt(records)
    # This turn of the tool loop keeps its reasoning (Qwen3's rule); the call is
    # written as the model writes calls.
    assert ('<|im_start|>assistant\n<think>\nI need the weather.\n</think>\n\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
            ) in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny " in prompt
