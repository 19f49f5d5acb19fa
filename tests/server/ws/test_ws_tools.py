"""Tool calls and reasoning over /ws, end to end with the stand-in runtime.

The stand-in plays back a scripted reply, one byte per token, so every tag
and every multi-byte character is split across callbacks. The model file's
name picks the chat family (``qwen2.5`` → Hermes ``<tool_call>``, ``qwen3``
→ also ``<think>``, ``deepseek-r1`` → answers start inside thinking).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import RKLLMSettings, Settings
from rkstream.server.app import make_app

from conftest import Records
from helpers import WSClient, create

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'


def escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


@pytest.fixture
def serve(aiohttp_client: ClientFactory, standin_libs: dict[str, Path], tmp_path: Path,
          records: Records) -> Callable[..., Awaitable[WSClient]]:
    async def make(model_name: str, reply: str, **keys: Any) -> WSClient:
        model = tmp_path / model_name
        lines = ["#rkstream-standin", f"reply = {escaped(reply)}", "token_bytes = 1",
                 f"record = {records.path}"] + [f"{k} = {v}" for k, v in keys.items()]
        model.write_text("\n".join(lines) + "\n", encoding="utf-8")
        settings = replace(Settings(), rkllm=replace(
            RKLLMSettings(), library=str(standin_libs["1.3"]), model=str(model), runtime="1.3"))
        client = await aiohttp_client(make_app(settings))
        conn = WSClient(await client.ws_connect("/ws"))
        assert (await conn.recv())["type"] == "session.created"
        return conn
    return make


def events_of(conn: WSClient, rid: str) -> list[dict[str, Any]]:
    return [e for e in conn.events if e.get("request_id") == rid]


async def test_text_then_a_tool_call_in_order(serve: Any, records: Records) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", "Let me look. " + CALL)
    await conn.send(create("a", "Weather in Zürich?") | {"tools": [WEATHER]})
    done = (await conn.until_done({"a"}))["a"]
    events = events_of(conn, "a")
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.started"]
    assert kinds[-1] == "response.done"
    assert set(kinds[2:-2]) == {"response.output_text.delta"}
    assert kinds[-2] == "response.output_tool_call"
    assert conn.text("a") == "Let me look. "
    call = events[-2]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Zürich"})
    assert call["call_id"].startswith("call_") and call["index"] == 0 and "problem" not in call
    seqs = [e["seq"] for e in events if "seq" in e]
    assert seqs == list(range(len(seqs)))  # one sequence across text and calls
    assert done["status"] == "completed" and done["finish_reason"] == "tool_calls"
    prompt = records.all("run")[0]["prompt"]
    assert '"name": "get_weather"' in prompt and "<tools>" in prompt  # declared in the prompt


async def test_reasoning_then_the_answer(serve: Any) -> None:
    conn = await serve("Qwen3-0.6B.rkllm", "<think>\nSimple: say hi.\n</think>\n\nHi 👋")
    await conn.send(create("a", "hello"))
    done = (await conn.until_done({"a"}))["a"]
    kinds = [e["type"] for e in events_of(conn, "a")]
    first_text = kinds.index("response.output_text.delta")
    assert kinds[:2] == ["response.created", "response.started"]
    assert set(kinds[2:first_text]) == {"response.output_reasoning.delta"}
    reasoning = "".join(e["delta"] for e in events_of(conn, "a")
                        if e["type"] == "response.output_reasoning.delta")
    assert reasoning == "Simple: say hi." and conn.text("a") == "Hi 👋"
    assert done["finish_reason"] == "stop" and done["usage"]["reasoning_tokens"] > 0


async def test_an_answer_that_starts_inside_thinking(serve: Any) -> None:
    conn = await serve("DeepSeek-R1-Distill-Qwen-1.5B.rkllm", "Hmm, 2+2.\n</think>\n\n4")
    await conn.send(create("a", "2+2?", stream=False))
    done = (await conn.until_done({"a"}))["a"]
    assert (done["reasoning"], done["text"]) == ("Hmm, 2+2.", "4")


async def test_whole_answer_carries_the_calls(serve: Any) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", CALL + "\n" + CALL)
    await conn.send(create("a", "x", stream=False) | {"tools": [WEATHER]})
    done = (await conn.until_done({"a"}))["a"]
    assert done["finish_reason"] == "tool_calls" and done["text"] == ""
    assert [c["index"] for c in done["tool_calls"]] == [0, 1]
    assert {c["name"] for c in done["tool_calls"]} == {"get_weather"}


async def test_one_call_when_parallel_calls_are_off(serve: Any, records: Records) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", CALL + "\n" + CALL,
                       token_delay_us=1000)
    await conn.send(create("a", "x", stream=False)
                    | {"tools": [WEATHER], "parallel_tool_calls": False})
    done = (await conn.until_done({"a"}))["a"]
    assert len(done["tool_calls"]) == 1 and "problem" not in done["tool_calls"][0]
    assert records.all("run_end")[0]["finish"] in ("abort", "pause")  # stopped early


async def test_tool_choice_none_leaves_the_markup_as_text(serve: Any, records: Records) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", CALL)
    await conn.send(create("a", "x") | {"tools": [WEATHER], "tool_choice": "none"})
    done = (await conn.until_done({"a"}))["a"]
    assert conn.text("a") == CALL and done["finish_reason"] == "stop"
    assert "<tools>" not in records.all("run")[0]["prompt"]


async def test_a_broken_call_is_returned_with_its_problem(serve: Any) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm",
                       '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>')
    await conn.send(create("a", "x") | {"tools": [WEATHER]})
    done = (await conn.until_done({"a"}))["a"]
    call = [e for e in events_of(conn, "a") if e["type"] == "response.output_tool_call"][0]
    assert call["problem"] == "its JSON is broken"
    assert call["arguments"].strip() == '{"city":'  # as written, as streamed
    assert done["status"] == "completed"


async def test_history_with_calls_and_results_renders(serve: Any, records: Records) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", "It is sunny.")
    history = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"},
    ]
    await conn.send({"type": "response.create", "request_id": "a", "input": history,
                     "tools": [WEATHER]})
    done = (await conn.until_done({"a"}))["a"]
    assert done["finish_reason"] == "stop" and conn.text("a") == "It is sunny."
    prompt = records.all("run")[0]["prompt"]
    assert "<tool_response>\nsunny, 21 °C\n</tool_response>" in prompt


async def test_thinking_switched_off_per_request(serve: Any, records: Records) -> None:
    conn = await serve("Qwen3-0.6B.rkllm", "Hi")
    await conn.send(create("a", "hello") | {"enable_thinking": False})
    await conn.until_done({"a"})
    assert records.all("run")[0]["prompt"].endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"enable_thinking": "yes"}, "enable_thinking"),
])
async def test_bad_tool_fields_are_refused(serve: Any, extra: dict[str, Any],
                                           param: str) -> None:
    conn = await serve("qwen2.5-1.5b-instruct.rkllm", "x")
    await conn.send(create("a", "x") | extra)
    done = (await conn.until_done({"a"}))["a"]
    assert done["status"] == "failed" and done["error"]["code"] == "invalid_field"
    assert done["error"]["param"] == param


async def test_the_runtimes_own_template_gets_the_tools_once(serve: Any,
                                                             records: Records) -> None:
    # No family in the file name: the runtime applies the model's own template, so
    # the tools go through rkllm_set_function_tools, only when they change.
    conn = await serve("my-model.rkllm", CALL)
    other = {"type": "function", "function": {**WEATHER["function"], "name": "get_time"}}
    for rid, tools in (("a", [WEATHER]), ("b", [WEATHER]), ("c", [other])):
        await conn.send(create(rid, "x") | {"tools": tools})
        done = (await conn.until_done({rid}))[rid]
        assert done["finish_reason"] == "tool_calls"
    sets = records.all("set_function_tools")
    assert [json.loads(r["tools"])[0]["function"]["name"] for r in sets] == \
        ["get_weather", "get_time"]
    assert sets[0]["tool_response_str"] == "tool_response"
    problems = [e.get("problem") for e in conn.events if e["type"] == "response.output_tool_call"]
    assert problems[:2] == [None, None]
    assert problems[2] == "'get_weather' is not one of the declared tools"


async def test_the_runtimes_own_template_gets_the_thinking_switch(serve: Any,
                                                                  records: Records) -> None:
    conn = await serve("my-model.rkllm", "<think>\nhm\n</think>\n\nok")
    await conn.send(create("a", "x", stream=False) | {"enable_thinking": False})
    await conn.send(create("b", "x", stream=False))  # [chat] thinking: on by default
    done = await conn.until_done({"a", "b"})
    assert [r["enable_thinking"] for r in records.all("run")] == [False, True]
    assert (done["b"]["reasoning"], done["b"]["text"]) == ("hm", "ok")
