"""Tool use and thinking on /v1/messages, through the real app, the RKLLM binding
and the stand-in runtime.

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

from anthropic_support import MESSAGES, QWEN2, QWEN3, TIME, WEATHER, kinds, rebuild, sse
from conftest import Records
from helpers import call, reply, served_name

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
ZURICH = '{"city": "Zürich 🌧"}'
THOUGHT = "<think>\nThe user wants the weather.\n</think>\n\n"


@pytest.fixture
def server(named_standin: Any) -> Any:
    """A client of a server on a stand-in model file called ``name``."""
    return named_standin


def ask(text: str, **extra: Any) -> dict[str, Any]:
    """A request; :func:`streamed` and :func:`whole` name the server's model in it."""
    return {"max_tokens": 256, "tools": [WEATHER],
            "messages": [{"role": "user", "content": text}], **extra}


async def streamed(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post(MESSAGES, json={"model": served_name(client), **body,
                                                 "stream": True})
    assert response.status == 200, await response.text()
    return sse(await response.text())


async def whole(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(MESSAGES, json={"model": served_name(client), **body})
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def last_prompt(records: Records) -> str:
    prompt: str = records.all("run")[-1]["prompt"]
    return prompt


# -- the answer's blocks ---------------------------------------------------------------

async def test_thinking_text_and_tool_use_stream_as_blocks(server: Any) -> None:
    client = await server(QWEN3, token_bytes=1)
    events = await streamed(client, ask(
        "weather? " + reply(THOUGHT + "Let me check.\n" + call("get_weather", ZURICH))))
    assert kinds(events) == [
        "message_start",
        "content_block_start", "delta:thinking_delta", "delta:signature_delta",
        "content_block_stop",
        "content_block_start", "delta:text_delta", "content_block_stop",
        "content_block_start", "delta:input_json_delta", "content_block_stop",
        "message_delta", "message_stop"]
    _, blocks, delta = rebuild(events)
    thinking, text, tool = blocks
    assert thinking == {"type": "thinking", "thinking": "The user wants the weather.",
                        "signature": "rkstream-unsigned"}
    assert text == {"type": "text", "text": "Let me check.\n"}  # no byte of a tag leaks
    assert tool["id"].startswith("toolu_") and tool["name"] == "get_weather"
    # The arguments come as they are written, every character whole although the
    # 2- and 4-byte ones were split across tokens.
    assert len(tool["pieces"]) > 10 and tool["input"] == ZURICH
    assert "ü" in tool["pieces"] and "🌧" in tool["pieces"]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens_details"]["thinking_tokens"] > 0


async def test_whole_message_with_thinking_text_and_tool_use(server: Any) -> None:
    client = await server(QWEN3)
    body = await whole(client, ask(
        "weather? " + reply(THOUGHT + "Let me check.\n" + call("get_weather", ZURICH))))
    thinking, text, tool = body["content"]
    assert thinking == {"type": "thinking", "thinking": "The user wants the weather.",
                        "signature": "rkstream-unsigned"}
    assert text == {"type": "text", "text": "Let me check.\n"}
    assert tool == {"type": "tool_use", "id": tool["id"], "name": "get_weather",
                    "input": {"city": "Zürich 🌧"}}
    assert body["stop_reason"] == "tool_use"


async def test_only_a_call(server: Any) -> None:
    client = await server(token_bytes=2)
    body = ask("weather? " + reply(call("get_weather", ZURICH)))
    answer = await whole(client, body)
    assert [b["type"] for b in answer["content"]] == ["tool_use"]
    assert answer["stop_reason"] == "tool_use"
    _, blocks, _ = rebuild(await streamed(client, body))
    assert [b["type"] for b in blocks] == ["tool_use"]


async def test_two_calls_are_two_blocks(server: Any) -> None:
    client = await server(token_bytes=3)
    body = ask("both " + reply(call("get_weather", '{"city": "Oslo"}') + "\n"
                               + call("get_time", "{}")), tools=[WEATHER, TIME])
    _, blocks, delta = rebuild(await streamed(client, body))
    assert [(b["type"], b["name"], b["input"]) for b in blocks] == [
        ("tool_use", "get_weather", '{"city": "Oslo"}'), ("tool_use", "get_time", "{}")]
    assert blocks[0]["id"] != blocks[1]["id"]
    answer = await whole(client, body)
    assert [(b["name"], b["input"]) for b in answer["content"]] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {})]


async def test_disable_parallel_tool_use_keeps_the_first_call(server: Any) -> None:
    client = await server()
    two = reply(call("get_weather", '{"city": "Oslo"}') + "\n"
                + call("get_weather", '{"city": "Bergen"}'))
    body = await whole(client, ask("x " + two, tool_choice={
        "type": "auto", "disable_parallel_tool_use": True}))
    (only,) = body["content"]
    assert only["input"] == {"city": "Oslo"} and body["stop_reason"] == "tool_use"


async def test_broken_arguments_are_wrapped_as_invalid_json(server: Any,
                                                           records: Records) -> None:
    client = await server(token_bytes=2)
    body = ask("x " + reply(call("get_weather", '{"city": Oslo}')))
    answer = await whole(client, body)
    (tool,) = answer["content"]
    assert tool["input"] == {"INVALID_JSON": '{"city": Oslo}'}
    _, blocks, _ = rebuild(await streamed(client, body))
    assert blocks[0]["input"] == '{"city": Oslo}'  # streamed as written
    # Sent back, the call is written as the model wrote it.
    messages = [body["messages"][0], {"role": "assistant", "content": answer["content"]},
                {"role": "user", "content": [{"type": "tool_result",
                                              "tool_use_id": tool["id"], "is_error": True,
                                              "content": "bad JSON " + reply("Sorry.")}]}]
    final = await whole(client, {**body, "messages": messages})
    assert final["content"] == [{"type": "text", "text": "Sorry."}]
    prompt = last_prompt(records)
    assert '"arguments": "{\\"city\\": Oslo}"' in prompt or '{"city": Oslo}' in prompt
    assert "Error: bad JSON" in prompt


async def test_a_call_cut_by_max_tokens_is_max_tokens(server: Any) -> None:
    client = await server()  # word tokens: the call is cut after its name
    body = ask("x " + reply(call("get_weather", '{"city": "Oslo", "days": 3}')), max_tokens=4)
    answer = await whole(client, body)
    assert answer["stop_reason"] == "max_tokens"
    assert answer["content"][-1]["name"] == "get_weather"
    _, _, delta = rebuild(await streamed(client, body))
    assert delta["delta"]["stop_reason"] == "max_tokens"


async def test_no_tools_no_parsing(server: Any) -> None:
    client = await server()
    written = call("get_weather", ZURICH)
    body = await whole(client, {"max_tokens": 99, "messages": [
        {"role": "user", "content": "x " + reply(written)}]})
    assert body["content"] == [{"type": "text", "text": written}]
    assert body["stop_reason"] == "end_turn"


# -- tool_choice ----------------------------------------------------------------------

async def test_tool_choice_none_declares_nothing(server: Any, records: Records) -> None:
    client = await server()
    written = call("get_weather", ZURICH)
    body = await whole(client, ask("x " + reply(written), tool_choice={"type": "none"}))
    assert body["content"] == [{"type": "text", "text": written}]
    assert "<tools>" not in last_prompt(records)


async def test_tool_choice_auto_is_the_default(server: Any, records: Records) -> None:
    client = await server()
    await whole(client, ask("hello " + reply("Hi.")))
    assert '"name": "get_weather"' in last_prompt(records)
    assert "Answer by calling" not in last_prompt(records)


async def test_tool_choice_any_is_asked_for(server: Any, records: Records) -> None:
    client = await server()
    await whole(client, ask("hello " + reply("Hi."), tools=[WEATHER, TIME],
                            tool_choice={"type": "any"}))
    prompt = last_prompt(records)
    assert "Answer by calling one or more of the tools." in prompt
    assert '"name": "get_weather"' in prompt and '"name": "get_time"' in prompt


async def test_tool_choice_tool_is_the_only_one_declared(server: Any,
                                                         records: Records) -> None:
    client = await server()
    answer = await whole(client, ask("time? " + reply(call("get_time", "{}")),
                                     tools=[WEATHER, TIME],
                                     tool_choice={"type": "tool", "name": "get_time"}))
    assert answer["content"][0]["name"] == "get_time"
    prompt = last_prompt(records)
    assert "Answer by calling the tool get_time." in prompt and "get_weather" not in prompt


# -- thinking -------------------------------------------------------------------------

@pytest.mark.parametrize(("thinking", "off"), [
    (None, False),
    ({"type": "disabled"}, True),
    ({"type": "enabled", "budget_tokens": 1024}, False),
    ({"type": "adaptive"}, False),
])
async def test_thinking_reaches_the_template(server: Any, records: Records,
                                             thinking: Any, off: bool) -> None:
    client = await server(QWEN3)
    extra = {"thinking": thinking} if thinking is not None else {}
    body = await whole(client, {"max_tokens": 50, "messages": [
        {"role": "user", "content": "hi " + reply("Hi.")}], **extra})
    assert body["content"] == [{"type": "text", "text": "Hi."}]
    assert last_prompt(records).endswith("<think>\n\n</think>\n\n") is off


async def test_thinking_display_omitted(server: Any) -> None:
    client = await server(QWEN3, token_bytes=4)
    body = {"max_tokens": 99, "thinking": {"type": "enabled", "budget_tokens": 1024,
                                           "display": "omitted"},
            "messages": [{"role": "user", "content": "2+2? " + reply(THOUGHT + "4.")}]}
    answer = await whole(client, body)
    assert answer["content"] == [
        {"type": "thinking", "thinking": "", "signature": "rkstream-unsigned"},
        {"type": "text", "text": "4."}]
    events = await streamed(client, body)
    assert "delta:thinking_delta" not in kinds(events)
    assert rebuild(events)[1][0] == answer["content"][0]


# -- the conversation sent back --------------------------------------------------------

async def test_tool_use_thinking_and_results_reach_the_prompt(server: Any,
                                                              records: Records) -> None:
    client = await server(QWEN3)
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I need the weather.", "signature": "x"},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_9", "content": [
                {"type": "text", "text": "sunny, 21 C"},
                {"type": "text", "text": reply("It is sunny.")}]}]},
    ]
    body = await whole(client, {"max_tokens": 99, "system": [
        {"type": "text", "text": "You are terse."}], "tools": [WEATHER],
        "messages": messages})
    assert body["content"] == [{"type": "text", "text": "It is sunny."}]
    prompt = last_prompt(records)
    assert prompt.startswith("<|im_start|>system\nYou are terse.")
    # Qwen3 keeps the reasoning of the turns after the last user query (a tool loop).
    assert "<think>\nI need the weather.\n</think>" in prompt
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n\n[[reply=" in prompt


async def test_the_answer_sent_back_reuses_the_cache(server: Any) -> None:
    client = await server(QWEN2)
    first = ask("weather? " + reply(call("get_weather", '{"city": "Oslo"}')))
    answer = await whole(client, first)
    (tool,) = answer["content"]
    messages = [*first["messages"], {"role": "assistant", "content": answer["content"]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"],
                                              "content": "sunny " + reply("Sunny.")}]}]
    second = await whole(client, {**first, "messages": messages})
    assert second["content"] == [{"type": "text", "text": "Sunny."}]
    assert second["usage"]["cache_read_input_tokens"] > 0  # turn 1 was kept


# -- bad tool inputs ----------------------------------------------------------------------

def tools(*declared: Any, **extra: Any) -> dict[str, Any]:
    return {"max_tokens": 9, "messages": [{"role": "user", "content": "x"}],
            "tools": list(declared), **extra}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("tools not a list", tools(tool_choice=None) | {"tools": {}}, "tools must be"),
    ("tool not an object", tools("get_weather"), "tools[0] must be"),
    ("tool without a name", tools({"input_schema": {}}), "tools[0].name is required"),
    ("tool with a bad name", tools({"name": "get weather", "input_schema": {}}),
     "tools[0].name = 'get weather' is not a tool name"),
    ("tool without input_schema", tools({"name": "f"}), "tools[0].input_schema is required"),
    ("input_schema a string", tools({"name": "f", "input_schema": "{}"}),
     "tools[0].input_schema must be"),
    ("server tool", tools({"type": "web_search_20250305", "name": "web_search"}),
     "tools[0].type = 'web_search_20250305'"),
    ("tool declared twice", tools(WEATHER, WEATHER), "declared twice"),
    ("description a number", tools({"name": "f", "input_schema": {}, "description": 1}),
     "tools[0].description must be"),
    ("too many tools", tools(*({"name": f"t{i}", "input_schema": {}} for i in range(129))),
     "the most is 128"),
    ("tool_choice a string", tools(WEATHER, tool_choice="auto"), "tool_choice must be"),
    ("tool_choice without type", tools(WEATHER, tool_choice={}), "tool_choice.type is"),
    ("tool_choice unknown type", tools(WEATHER, tool_choice={"type": "required"}),
     "tool_choice.type = 'required'"),
    ("tool_choice any without tools", tools(tool_choice={"type": "any"}),
     "no tools are declared"),
    ("tool_choice tool without name", tools(WEATHER, tool_choice={"type": "tool"}),
     "tool_choice.name is required"),
    ("tool_choice names an undeclared tool", tools(WEATHER, tool_choice={
        "type": "tool", "name": "get_time"}), "not among the declared tools"),
    ("disable_parallel_tool_use a string", tools(WEATHER, tool_choice={
        "type": "auto", "disable_parallel_tool_use": "yes"}),
     "tool_choice.disable_parallel_tool_use must be"),
]


@pytest.mark.parametrize(("name", "body", "words"), BAD, ids=[b[0] for b in BAD])
async def test_bad_tool_inputs_are_refused(server: Any, name: str, body: dict[str, Any],
                                           words: str) -> None:
    client = await server()
    for stream in (False, True):
        response = await client.post(MESSAGES, json={**body, "stream": stream})
        assert response.status == 400, await response.text()
        error = await response.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert words in error["error"]["message"], error


async def test_what_clients_send_is_taken(server: Any) -> None:
    """Keys Anthropic's clients add (cache_control, strict, caller, citations), tool
    results without content, thinking blocks without a signature."""
    client = await server(QWEN3)
    tool = {**WEATHER, "type": "custom", "cache_control": {"type": "ephemeral"},
            "strict": True}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather?", "citations": None,
                                      "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": ""},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {},
             "caller": {"type": "direct"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"},
                                     {"type": "text", "text": "ok " + reply("Fine.")}]}]
    body = await whole(client, {"max_tokens": 9, "tools": [tool], "messages": messages,
                                "tool_choice": {"type": "auto"}})
    assert body["content"] == [{"type": "text", "text": "Fine."}]
    assert json.dumps(body)  # plain JSON all through
