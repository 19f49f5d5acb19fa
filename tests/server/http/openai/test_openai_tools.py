"""Tool calls and reasoning on /v1/chat/completions, through the real app, the
RKLLM binding and the stand-in runtime.

The model file's name picks the chat family (``qwen2.5-test.rkllm``: Hermes
``<tool_call>`` markup; ``qwen3-test.rkllm``: the same plus ``<think>``), and
``[[reply=...]]`` in the prompt scripts what the "model" writes. With
``token_bytes=1`` the reply comes one byte per token, so tags and UTF-8
characters arrive split.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from conftest import Records
from helpers import call, reply, served
from openai_support import (
    TIME,
    WEATHER,
    content_of,
    deltas,
    finish_reason,
    reasoning_of,
    sse_events,
)

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
CHAT = "/v1/chat/completions"
QWEN2 = "qwen2.5-test.rkllm"
QWEN3 = "qwen3-test.rkllm"


@pytest.fixture
def server(named_standin: Any) -> Any:
    """A client of a server on a stand-in model file called ``name``."""
    return named_standin


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "tools": [WEATHER], **extra}


async def streamed(client: Client, body: dict[str, Any]) -> list[Any]:
    response = await client.post(CHAT, json={**body, "stream": True})
    assert response.status == 200, await response.text()
    return sse_events(await response.text())


async def whole(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(CHAT, json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def last_prompt(records: Records) -> str:
    prompt: str = records.all("run")[-1]["prompt"]
    return prompt


# -- tool calls -----------------------------------------------------------------------

ZURICH = '{"city": "Zürich 🌧"}'


async def test_call_streams_in_pieces_split_inside_tags_and_characters(server: Any) -> None:
    client = await server(token_bytes=1)
    events = await streamed(client, ask(
        "weather? " + reply("Let me check.\n" + call("get_weather", ZURICH))))
    ds = deltas(events)
    assert finish_reason(events) == "tool_calls"
    # The text before the call is content; no byte of the tag leaks into it.
    assert content_of(ds) == "Let me check.\n"
    calls = [d for d in ds if "tool_calls" in d]
    assert all(set(d) == {"tool_calls"} and len(d["tool_calls"]) == 1 for d in calls)
    first, rest = calls[0]["tool_calls"][0], [d["tool_calls"][0] for d in calls[1:]]
    assert first["id"].startswith("call_")
    assert first == {"index": 0, "id": first["id"], "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(piece) == {"index", "function"} and piece["index"] == 0
               and set(piece["function"]) == {"arguments"} for piece in rest)
    # The arguments come as they are written, one token at a time, every
    # character whole: the 2- and 4-byte ones were split across tokens.
    pieces = [p["function"]["arguments"] for p in rest]
    assert len(pieces) > 10 and "".join(pieces) == ZURICH
    assert "ü" in pieces and "🌧" in pieces and not any("\ufffd" in p for p in pieces)
    assert json.loads("".join(pieces)) == {"city": "Zürich 🌧"}


async def test_whole_answer_with_a_call(server: Any) -> None:
    client = await server()
    body = await whole(client, ask("weather? " + reply(call("get_weather", ZURICH))))
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (tool_call,) = choice["message"]["tool_calls"]
    assert choice["message"] == {"role": "assistant", "content": None,
                                 "tool_calls": [{"id": tool_call["id"], "type": "function",
                                                 "function": {"name": "get_weather",
                                                              "arguments": ZURICH}}]}
    assert tool_call["id"].startswith("call_")
    assert "completion_tokens_details" not in body["usage"]  # no reasoning happened


async def test_text_before_a_call_stays_content(server: Any) -> None:
    client = await server()
    body = await whole(client, ask("x " + reply("Checking.\n" + call("get_weather", ZURICH))))
    message = body["choices"][0]["message"]
    assert message["content"] == "Checking.\n" and len(message["tool_calls"]) == 1


async def test_two_calls_have_their_own_index_and_id(server: Any) -> None:
    client = await server(token_bytes=3)
    two = reply(call("get_weather", '{"city": "Oslo"}') + "\n"
                + call("get_time", "{}"))
    body = ask("both " + two, tools=[WEATHER, TIME])
    events = await streamed(client, body)
    assert finish_reason(events) == "tool_calls"
    pieces = [d["tool_calls"][0] for d in deltas(events) if "tool_calls" in d]
    starts = [p for p in pieces if "id" in p]
    assert [(s["index"], s["function"]["name"]) for s in starts] == [(0, "get_weather"),
                                                                     (1, "get_time")]
    assert starts[0]["id"] != starts[1]["id"]
    args = {i: "".join(p["function"]["arguments"] for p in pieces if p["index"] == i)
            for i in (0, 1)}
    assert args == {0: '{"city": "Oslo"}', 1: "{}"}
    assert content_of(deltas(events)) == ""
    message = (await whole(client, body))["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"])
            for c in message["tool_calls"]] == [("get_weather", '{"city": "Oslo"}'),
                                                ("get_time", "{}")]
    assert len({c["id"] for c in message["tool_calls"]}) == 2


async def test_parallel_tool_calls_false_keeps_the_first_call(server: Any) -> None:
    client = await server()
    two = reply(call("get_weather", '{"city": "Oslo"}') + "\n"
                + call("get_weather", '{"city": "Bergen"}'))
    body = await whole(client, ask("x " + two, parallel_tool_calls=False))
    (only,) = body["choices"][0]["message"]["tool_calls"]
    assert only["function"]["arguments"] == '{"city": "Oslo"}'
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("written", "name", "arguments"), [
    (call("get_weather", '{"city": Oslo}'), "get_weather", '{"city": Oslo}'),  # broken JSON
    (call("wizard", '{"spell": "x"}'), "wizard", '{"spell": "x"}'),  # not declared
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}\n</tool_call>',
     "get_weather", '{"city": "Oslo"}'),  # the object around the arguments is not closed
])
async def test_a_call_with_a_problem_is_returned_as_written(
        server: Any, written: str, name: str, arguments: str) -> None:
    client = await server(token_bytes=2)
    body = ask("x " + reply(written))
    message = (await whole(client, body))["choices"][0]["message"]
    (got,) = message["tool_calls"]
    assert (got["function"]["name"], got["function"]["arguments"]) == (name, arguments)
    events = await streamed(client, body)
    assert finish_reason(events) == "tool_calls"
    pieces = [d["tool_calls"][0] for d in deltas(events) if "tool_calls" in d]
    assert pieces[0]["function"]["name"] == name
    assert "".join(p["function"]["arguments"] for p in pieces) == arguments


async def test_a_call_cut_by_max_tokens_ends_with_length(server: Any) -> None:
    client = await server()  # word tokens: the call is cut after its name
    body = ask("x " + reply(call("get_weather", '{"city": "Oslo", "days": 3}')), max_tokens=4)
    answer = await whole(client, body)
    assert answer["choices"][0]["finish_reason"] == "length"
    (got,) = answer["choices"][0]["message"]["tool_calls"]
    assert got["function"]["name"] == "get_weather"
    events = await streamed(client, body)
    assert finish_reason(events) == "length"


async def test_no_tools_no_parsing(server: Any) -> None:
    client = await server()
    written = call("get_weather", ZURICH)
    body = await whole(client, {"messages": [{"role": "user", "content": "x " + reply(written)}]})
    assert body["choices"][0]["message"] == {"role": "assistant", "content": written}
    assert body["choices"][0]["finish_reason"] == "stop"


# -- tool_choice ----------------------------------------------------------------------

async def test_tool_choice_none_declares_nothing_and_leaves_markup_as_text(
        server: Any, records: Records) -> None:
    client = await server(token_bytes=1)
    written = call("get_weather", ZURICH)
    body = ask("x " + reply(written), tool_choice="none")
    message = (await whole(client, body))["choices"][0]["message"]
    assert message == {"role": "assistant", "content": written}
    assert "# Tools" not in last_prompt(records) and "<tools>" not in last_prompt(records)
    events = await streamed(client, body)
    assert content_of(deltas(events)) == written and finish_reason(events) == "stop"


async def test_tool_choice_auto_is_the_default(server: Any, records: Records) -> None:
    client = await server()
    await whole(client, ask("hello " + reply("Hi.")))
    prompt = last_prompt(records)
    assert "# Tools" in prompt and '"name": "get_weather"' in prompt
    assert "Answer by calling" not in prompt


async def test_tool_choice_required_is_asked_for_in_the_prompt(server: Any,
                                                              records: Records) -> None:
    client = await server()
    await whole(client, ask("hello " + reply("Hi."), tools=[WEATHER, TIME],
                            tool_choice="required"))
    prompt = last_prompt(records)
    assert "Answer by calling one or more of the tools." in prompt
    assert '"name": "get_weather"' in prompt and '"name": "get_time"' in prompt


async def test_a_named_tool_is_the_only_one_declared(server: Any, records: Records) -> None:
    client = await server()
    answer = await whole(client, ask(
        "time? " + reply(call("get_time", "{}")), tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    prompt = last_prompt(records)
    assert "Answer by calling the tool get_time." in prompt
    assert '"name": "get_time"' in prompt and "get_weather" not in prompt


async def test_allowed_tools_narrow_the_declared_ones(server: Any, records: Records) -> None:
    client = await server()
    await whole(client, ask("x " + reply("Hi."), tools=[WEATHER, TIME], tool_choice={
        "type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "get_weather"}}]}}))
    prompt = last_prompt(records)
    assert '"name": "get_weather"' in prompt and "get_time" not in prompt
    assert "Answer by calling one or more of the tools." in prompt


# -- reasoning ------------------------------------------------------------------------

THOUGHT = "<think>\nTwo and two make four.\n</think>\n\n"


async def test_reasoning_streams_apart_from_the_answer(server: Any) -> None:
    client = await server(QWEN3, token_bytes=1)
    events = await streamed(client, {
        "messages": [{"role": "user", "content": "2+2? " + reply(THOUGHT + "It is 4.")}],
        "stream_options": {"include_usage": True}})
    ds = deltas(events)
    assert reasoning_of(ds) == "Two and two make four."
    assert content_of(ds) == "It is 4."
    thinking = [d for d in ds if "reasoning_content" in d]
    assert all(d == {"reasoning_content": d["reasoning"], "reasoning": d["reasoning"]}
               for d in thinking)
    # Reasoning comes first, then the answer, never mixed in one delta.
    last_thought = max(i for i, d in enumerate(ds) if "reasoning_content" in d)
    assert all("reasoning_content" not in d for d in ds[last_thought + 1:])
    assert not any("content" in d for d in ds[1:last_thought + 1])
    usage = events[-2]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] >= len(thinking) > 0
    assert finish_reason(events) == "stop"


async def test_whole_answer_with_reasoning(server: Any) -> None:
    client = await server(QWEN3)
    body = await whole(client, {"messages": [
        {"role": "user", "content": "2+2? " + reply(THOUGHT + "It is 4.")}]})
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": "It is 4.",
        "reasoning_content": "Two and two make four.", "reasoning": "Two and two make four."}
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_reasoning_then_a_call(server: Any) -> None:
    client = await server(QWEN3, token_bytes=4)
    body = ask("x " + reply("<think>\nI need the weather.\n</think>\n\n"
                            + call("get_weather", ZURICH)))
    message = (await whole(client, body))["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "I need the weather."
    assert message["tool_calls"][0]["function"]["arguments"] == ZURICH
    events = await streamed(client, body)
    ds = deltas(events)
    assert reasoning_of(ds) == "I need the weather." and content_of(ds) == ""
    assert finish_reason(events) == "tool_calls"


@pytest.mark.parametrize(("extra", "off"), [
    ({}, False),
    ({"chat_template_kwargs": {"enable_thinking": False}}, True),
    ({"enable_thinking": False}, True),
    ({"chat_template_kwargs": {"enable_thinking": True}, "enable_thinking": False}, False),
    ({"chat_template_kwargs": {"other": 1}, "enable_thinking": False}, True),
])
async def test_enable_thinking_reaches_the_template(server: Any, records: Records,
                                                    extra: dict[str, Any], off: bool) -> None:
    client = await server(QWEN3)
    body = await whole(client, {"messages": [{"role": "user", "content": "hi " + reply("Hi.")}],
                                **extra})
    assert body["choices"][0]["message"]["content"] == "Hi."
    assert last_prompt(records).endswith("<think>\n\n</think>\n\n") is off


# -- the conversation sent back --------------------------------------------------------

async def test_earlier_calls_and_results_reach_the_prompt(server: Any,
                                                          records: Records) -> None:
    client = await server(QWEN3)
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "reasoning_content": "I need the weather.",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1",
         "content": [{"type": "text", "text": "sunny " + reply("It is sunny.")}]},
    ]
    body = await whole(client, {"messages": messages, "tools": [WEATHER]})
    assert body["choices"][0]["message"]["content"] == "It is sunny."
    prompt = last_prompt(records)
    # This turn of the tool loop keeps its reasoning (Qwen3's rule), sent back as
    # reasoning_content; the call is written as the model writes calls.
    assert ('<|im_start|>assistant\n<think>\nI need the weather.\n</think>\n\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
            ) in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny " in prompt


# -- refusals -------------------------------------------------------------------------

def tools(*declared: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "x"}], "tools": list(declared), **extra}


def fn(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": function}


NAMED = {"type": "function", "function": {"name": "get_time"}}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("tools not a list", tools(tools=WEATHER), "invalid_field", "tools"),
    ("tool not an object", tools("get_weather"), "invalid_field", "tools[0]"),
    ("web search tool", tools({"type": "web_search"}), "invalid_field", "tools[0].type"),
    ("type a number", tools({"type": 1, "function": {"name": "f"}}), "invalid_field",
     "tools[0].type"),
    ("no function", tools({"type": "function"}), "missing_field", "tools[0].function"),
    ("function a string", tools({"type": "function", "function": "f"}), "invalid_field",
     "tools[0].function"),
    ("no name", tools(fn(description="d")), "missing_field", "tools[0].function.name"),
    ("empty name", tools(fn(name="")), "invalid_field", "tools[0].function.name"),
    ("name with a space", tools(fn(name="get weather")), "invalid_field",
     "tools[0].function.name"),
    ("name with a slash", tools(fn(name="a/b")), "invalid_field", "tools[0].function.name"),
    ("tool without a type", tools({"function": {"name": "f"}}), "missing_field",
     "tools[0].type"),
    ("name too long", tools(fn(name="f" * 65)), "invalid_field", "tools[0].function.name"),
    ("description a number", tools(fn(name="f", description=3)), "invalid_field",
     "tools[0].function.description"),
    ("parameters a string", tools(fn(name="f", parameters="{}")), "invalid_field",
     "tools[0].function.parameters"),
    ("same name twice", tools(WEATHER, WEATHER), "invalid_field", "tools[1].function.name"),
    ("tool_choice unknown", tools(WEATHER, tool_choice="sometimes"), "invalid_field",
     "tool_choice"),
    ("tool_choice a number", tools(WEATHER, tool_choice=1), "invalid_field", "tool_choice"),
    ("tool_choice type unknown", tools(WEATHER, tool_choice={"type": "magic"}),
     "invalid_field", "tool_choice.type"),
    ("tool_choice without type", tools(WEATHER, tool_choice={"function": {"name": "x"}}),
     "missing_field", "tool_choice.type"),
    ("tool_choice names no declared tool", tools(WEATHER, tool_choice=NAMED),
     "invalid_field", "tool_choice"),
    ("tool_choice without a name", tools(WEATHER, tool_choice={"type": "function",
                                                               "function": {}}),
     "missing_field", "tool_choice.function.name"),
    ("named without tools", tools(tool_choice=NAMED), "invalid_field", "tool_choice"),
    ("allowed_tools required, none listed", tools(WEATHER, tool_choice={
        "type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}),
     "invalid_field", "tool_choice.allowed_tools.mode"),
    ("required without tools", tools(tool_choice="required"), "invalid_field",
     "tool_choice"),
    ("allowed_tools names an undeclared tool", tools(WEATHER, tool_choice={
        "type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [NAMED]}}),
     "invalid_field", "tool_choice.allowed_tools.tools[0].function.name"),
    ("allowed_tools mode unknown", tools(WEATHER, tool_choice={
        "type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": []}}),
     "invalid_field", "tool_choice.allowed_tools.mode"),
    ("parallel_tool_calls a string", tools(WEATHER, parallel_tool_calls="no"),
     "invalid_field", "parallel_tool_calls"),
    ("enable_thinking a string", tools(enable_thinking="no"), "invalid_field",
     "enable_thinking"),
    ("chat_template_kwargs a list", tools(chat_template_kwargs=[]), "invalid_field",
     "chat_template_kwargs"),
    ("inner enable_thinking a number", tools(chat_template_kwargs={"enable_thinking": 0}),
     "invalid_field", "chat_template_kwargs.enable_thinking"),
    ("tool result without an id", {"messages": [
        CALLED, {"role": "tool", "content": "x"}]}, "missing_field", "messages[1].tool_call_id"),
    ("tool result id a number", {"messages": [
        CALLED, {"role": "tool", "tool_call_id": 1, "content": "x"}]}, "invalid_field",
     "messages[1].tool_call_id"),
    ("tool result without content", {"messages": [
        CALLED, {"role": "tool", "tool_call_id": "c1"}]}, "missing_field",
     "messages[1].content"),
    ("earlier call of another type", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "code", "function": {"name": "f"}}]}]}, "invalid_field",
     "messages[0].tool_calls[0].type"),
    ("earlier call without a name", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]},
     "missing_field", "messages[0].tool_calls[0].function.name"),
    ("earlier call arguments a number", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": 5}}]}]},
     "invalid_field", "messages[0].tool_calls[0].function.arguments"),
    ("earlier call id a number", {"messages": [{"role": "assistant", "tool_calls": [
        {"id": 7, "type": "function", "function": {"name": "f"}}]}]}, "invalid_field",
     "messages[0].tool_calls[0].id"),
    ("earlier reasoning a number", {"messages": [{"role": "assistant", "content": "x",
                                                  "reasoning_content": 1}]},
     "invalid_field", "messages[0].reasoning_content"),
    ("image in a tool result", {"messages": [CALLED, {
        "role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,iVBORw0KGgo="}}]}]}, "invalid_field",
     "messages[1].content[0].type"),
]


@pytest.mark.parametrize(("name", "body", "code", "param"), BAD, ids=[b[0] for b in BAD])
async def test_bad_tool_inputs_are_refused(server: Any, name: str, body: dict[str, Any],
                                           code: str, param: str) -> None:
    client = await server()
    for stream in (False, True):
        response = await client.post(CHAT, json={**body, "stream": stream})
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
        assert (error["code"], error["param"]) == (code, param), error
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith(param) or param in error["message"], error


async def test_what_clients_send_back_is_taken(server: Any) -> None:
    """Forms real clients send: a call without a type or id, arguments as an
    object, an empty name echoed from a broken call, text-part tool results,
    the deprecated function_call, ``strict`` in a tool."""
    client = await server()
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"id": "c2", "type": "function", "function": {"name": "", "arguments": "{oops"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "?"}]},
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "tool", "tool_call_id": "legacy", "name": "get_weather",
         "content": "ok " + reply("Fine.")},
    ]
    body = await whole(client, {"messages": messages, "tools": [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": "auto", "parallel_tool_calls": True})
    assert body["choices"][0]["message"]["content"] == "Fine."


async def test_unknown_keys_inside_tools_and_calls_are_ignored(server: Any) -> None:
    client = await server(QWEN2, reply="It is sunny.")
    tool = {**WEATHER, "cache_control": {"type": "ephemeral"}}
    call = {"id": "call_1", "type": "function", "extra_content": {"google": {}},
            "function": {"name": "get_weather", "arguments": "{}"}}
    body = {"model": served(QWEN2), "tools": [tool], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}
    assert (await whole(client, body))["choices"][0]["message"]["content"] == "It is sunny."
