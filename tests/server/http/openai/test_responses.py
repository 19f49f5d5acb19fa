"""OpenAI Responses (POST /v1/responses) over a real socket: the response object,
the event sequence, input items, stateless refusals, errors, limits, keys, CORS,
metrics and cancellation on disconnect.

Shapes and errors run on the recording fake engine (it echoes the words of the
last message). Stop sequences, images and the disconnect during a prefill run
on the RKLLM binding and the stand-in runtime, whose call records show when
rkllm_abort came. Tool calls and reasoning: test_responses_tools.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from rkstream.config import VisionSettings
from rkstream.core.messages import ToolCall
from rkstream.server.app import make_app
from rkstream.server.http.openai.responses import ResponsesDialect
from rkstream.server.ops.metrics import APIS
from rkstream.server.state import STATE

from conftest import Records
from fakes import Calls
from helpers import MS, aborted_in_prefill, eventually, model_file, post_and_leave, standin_settings
from openai_support import WEATHER_TOOL, check_stream, response_events, response_text
from tiny_encoder import build_tiny_encoder

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
RESPONSES = "/v1/responses"
QWEN2 = "qwen2.5-test.rkllm"


@pytest.fixture
def standin(aiohttp_client: ClientFactory, standin_libs: dict[str, Path], records: Records,
            tmp_path: Path) -> Callable[..., Awaitable[Client]]:
    """A client of a server on a stand-in model file called ``name``."""
    async def make(name: str = QWEN2, vision: bool = False, **keys: Any) -> Client:
        model = model_file(tmp_path, name, record=records.path, **keys)
        settings = standin_settings(standin_libs["1.3"], model)
        if vision:
            encoder = build_tiny_encoder(tmp_path / "tiny.onnx", width=16)
            settings = replace(settings, vision=replace(VisionSettings(), encoder=str(encoder)))
        return await aiohttp_client(make_app(settings))
    return make


def ask(prompt: str, /, **extra: Any) -> dict[str, Any]:
    return {"input": prompt, **extra}


async def whole(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(RESPONSES, json=body)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    answer: dict[str, Any] = await response.json()
    return answer


async def streamed(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post(RESPONSES, json={**body, "stream": True})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    return response_events(await response.text())


# -- shapes ---------------------------------------------------------------------------

async def test_whole_response_object(fake: Any) -> None:
    client = await fake()
    body = await whole(client, ask("one two three", model="m", instructions="Be brief.",
                                   metadata={"k": "v"}, temperature=0.5))
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert isinstance(body["created_at"], int) and isinstance(body["completed_at"], int)
    assert body["status"] == "completed" and body["model"] == "m"
    assert body["error"] is None and body["incomplete_details"] is None
    (message,) = body["output"]
    assert message["id"].startswith("msg_")
    assert message == {"id": message["id"], "type": "message", "role": "assistant",
                       "status": "completed", "content": [
                           {"type": "output_text", "text": "one two three ",
                            "annotations": [], "logprobs": []}]}
    assert body["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": 3,
                             "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": 6}
    # What the request set comes back; nothing is stored.
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"}
    assert body["temperature"] == 0.5 and isinstance(body["top_p"], float)
    assert (body["tools"], body["tool_choice"], body["parallel_tool_calls"]) == ([], "auto",
                                                                                 True)
    assert body["store"] is False and body["previous_response_id"] is None
    assert body["text"] == {"format": {"type": "text"}} and body["truncation"] == "disabled"
    default = await whole(client, ask("hi"))
    assert default["model"] == "m" and default["instructions"] is None
    unknown = await client.post(RESPONSES, json=ask("hi", model="my-model"))
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "model_not_found"


async def test_stream_event_sequence(fake: Any) -> None:
    client = await fake(delay_ms=2)
    events = await streamed(client, ask("alpha beta gamma", model="m"))
    final = check_stream(events)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert final["status"] == "completed" and response_text(final) == "alpha beta gamma "
    assert final["usage"]["output_tokens"] == 3 and final["model"] == "m"


async def test_pings_while_waiting(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ResponsesDialect, "keepalive_s", 20 * MS)
    client = await fake(delay_ms=150)
    response = await client.post(RESPONSES, json=ask("slow start", stream=True))
    body = await response.text()
    assert body.count(": ping\n\n") >= 3
    assert response_text(check_stream(response_events(body))) == "slow start "


async def test_max_output_tokens_makes_it_incomplete(fake: Any) -> None:
    client = await fake()
    body = await whole(client, ask("a b c d e", max_output_tokens=2))
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["max_output_tokens"] == 2 and body["usage"]["output_tokens"] == 2
    assert body["output"][0]["status"] == "incomplete" and response_text(body) == "a b "
    final = check_stream(await streamed(client, ask("a b c d e", max_output_tokens=2)))
    assert final["status"] == "incomplete" and final["output"][0]["status"] == "incomplete"


async def test_params_reach_the_engine(fake: Any, calls: Calls) -> None:
    client = await fake()
    await whole(client, ask("x", temperature=0.3, top_p=0.5, max_output_tokens=7, top_k=7,
                            stop=["END"], store=True, user="u", include=["x"],
                            truncation="auto", text={"format": {"type": "json_object"}},
                            stream_options={"include_obfuscation": False},
                            service_tier="auto", some_future_field={"x": 1}))
    s = calls.jobs[-1].sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.top_k, s.stop) == (0.3, 0.5, 7, 7,
                                                                       ("END",))


async def test_input_items_become_project_messages(fake: Any, calls: Calls) -> None:
    client = await fake()
    items = [
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "weather "},
            {"type": "input_text", "text": "in Oslo?"}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "weather",
         "arguments": '{"city": "Oslo"}', "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "c2", "name": "time", "arguments": {}},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "noon"}]},
    ]
    await whole(client, {"input": items, "instructions": "You are a bot."})
    job = calls.jobs[-1]
    got = job.messages
    assert [m.role for m in got] == ["system", "user", "assistant", "tool", "tool"]
    assert got[0].text == "be brief" and got[1].text == "weather in Oslo?"
    assert got[2].text == "Checking." and got[2].tool_calls == (
        ToolCall("c1", "weather", '{"city": "Oslo"}'), ToolCall("c2", "time", "{}"))
    assert (got[3].text, got[3].tool_call_id, got[3].tool_name) == ("sunny", "c1", "weather")
    assert (got[4].text, got[4].tool_name) == ("noon", "time")
    assert job.instructions == "You are a bot."


# -- stateless ------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"conversation": {"id": "conv_1"}}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
])
async def test_what_needs_stored_state_is_refused(fake: Any, extra: dict[str, Any],
                                                  param: str) -> None:
    client = await fake()
    for stream in (False, True):
        response = await client.post(RESPONSES, json=ask("x", stream=stream, **extra))
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["param"] == param and error["code"] == "invalid_field"
        assert "stateless" in error["message"] and "whole conversation" in error["message"]


async def test_store_is_accepted_and_nothing_is_kept(fake: Any) -> None:
    client = await fake()
    for store in (True, False, None):
        body = await whole(client, ask("x", store=store, background=False,
                                       previous_response_id=None))
        assert body["store"] is False
    reference = [{"type": "item_reference", "id": "msg_1"}]
    response = await client.post(RESPONSES, json={"input": reference})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "input[0].type" and "stateless" in error["message"]


async def test_stored_response_routes_say_why_they_are_404(fake: Any) -> None:
    client = await fake()
    for method, path in [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                         ("POST", "/v1/responses/resp_1/cancel"),
                         ("GET", "/v1/responses/resp_1/input_items"),
                         ("POST", "/v1/responses/input_tokens")]:
        response = await client.request(method, path)
        assert response.status == 404
        error = (await response.json())["error"]
        assert error["code"] == "not_found" and "stateless" in error["message"]
    response = await client.get(RESPONSES)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"


# -- bad input ------------------------------------------------------------------------

def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image(url: Any, **extra: Any) -> dict[str, Any]:
    return {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": url, **extra}]}]}


def items(*entries: Any, **extra: Any) -> dict[str, Any]:
    return {"input": list(entries), **extra}


def tools(*declared: Any, **extra: Any) -> dict[str, Any]:
    return {"input": "x", "tools": list(declared), **extra}


CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}

BAD_REQUESTS: list[tuple[str, Any, str, str | None]] = [
    # (name, body (bytes are sent as they are), code, param)
    ("not json", b"{nope", "invalid_encoding", None),
    ("empty body", b"", "invalid_encoding", None),
    ("not an object", [1, 2], "invalid_event", None),
    ("no input", {"model": "m"}, "missing_field", "input"),
    ("input a number", {"input": 5}, "invalid_field", "input"),
    ("input empty", {"input": []}, "invalid_field", "input"),
    ("item not an object", items("hi"), "invalid_field", "input[0]"),
    ("item without type or role", items({"content": "x"}), "missing_field", "input[0].type"),
    ("item of an unknown type", items({"type": "web_search_call"}), "invalid_field",
     "input[0].type"),
    ("unknown role", items({"role": "wizard", "content": "x"}), "invalid_field",
     "input[0].role"),
    ("tool role", items({"role": "tool", "content": "x"}), "invalid_field", "input[0].role"),
    ("no content", items({"role": "user"}), "missing_field", "input[0].content"),
    ("content a number", items({"role": "user", "content": 5}), "invalid_field",
     "input[0].content"),
    ("part not an object", items({"role": "user", "content": ["x"]}), "invalid_field",
     "input[0].content[0]"),
    ("part without type", items({"role": "user", "content": [{"text": "x"}]}),
     "missing_field", "input[0].content[0].type"),
    ("unknown part", items({"role": "user", "content": [{"type": "input_audio"}]}),
     "invalid_field", "input[0].content[0].type"),
    ("chat's text part", items({"role": "user", "content": [{"type": "text", "text": "x"}]}),
     "invalid_field", "input[0].content[0].type"),
    ("file part", items({"role": "user", "content": [{"type": "input_file",
                                                      "file_id": "f"}]}),
     "invalid_field", "input[0].content[0].type"),
    ("text part without text", items({"role": "user", "content": [{"type": "input_text"}]}),
     "missing_field", "input[0].content[0].text"),
    ("image in an assistant turn", items({"role": "assistant", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}),
     "invalid_field", "input[0].content[0].type"),
    ("call without call_id", items({**CALL, "call_id": None}), "missing_field",
     "input[0].call_id"),
    ("call without name", items({**CALL, "name": None}), "missing_field", "input[0].name"),
    ("call with an empty name", items({**CALL, "name": ""}), "invalid_field",
     "input[0].name"),
    ("call arguments a number", items({**CALL, "arguments": 5}), "invalid_field",
     "input[0].arguments"),
    ("output without call_id", items(CALL, {"type": "function_call_output", "output": "x"}),
     "missing_field", "input[1].call_id"),
    ("output without output", items(CALL, {"type": "function_call_output", "call_id": "c1"}),
     "missing_field", "input[1].output"),
    ("output a number", items(CALL, {"type": "function_call_output", "call_id": "c1",
                                     "output": 3}), "invalid_field", "input[1].output"),
    ("image in an output", items(CALL, {"type": "function_call_output", "call_id": "c1",
                                        "output": [{"type": "input_image",
                                                    "image_url": "data:,"}]}),
     "invalid_field", "input[1].output[0].type"),
    ("reasoning content not a list", items({"type": "reasoning", "content": "x"}),
     "invalid_field", "input[0].content"),
    ("reasoning text a number", items({"type": "reasoning", "summary": [{"text": 1}]}),
     "invalid_field", "input[0].summary[0].text"),
    ("instructions a list", ask("x", instructions=["a"]), "invalid_field", "instructions"),
    ("model a number", ask("x", model=5), "invalid_field", "model"),
    ("stream a string", ask("x", stream="yes"), "invalid_field", "stream"),
    ("store a string", ask("x", store="no"), "invalid_field", "store"),
    ("stream_options a number", ask("x", stream_options=1), "invalid_field",
     "stream_options"),
    ("temperature too high", ask("x", temperature=9), "invalid_param", "temperature"),
    ("top_p a string", ask("x", top_p="all"), "invalid_field", "top_p"),
    ("max_output_tokens zero", ask("x", max_output_tokens=0), "invalid_param",
     "max_output_tokens"),
    ("max_output_tokens fractional", ask("x", max_output_tokens=1.5), "invalid_field",
     "max_output_tokens"),
    ("max_output_tokens over the cap", ask("x", max_output_tokens=100000), "invalid_param",
     "max_output_tokens"),
    ("max_tool_calls zero", ask("x", max_tool_calls=0), "invalid_field", "max_tool_calls"),
    ("stop a number", ask("x", stop=5), "invalid_field", "stop"),
    ("reasoning a string", ask("x", reasoning="high"), "invalid_field", "reasoning"),
    ("effort unknown", ask("x", reasoning={"effort": "extreme"}), "invalid_field",
     "reasoning.effort"),
    ("summary unknown", ask("x", reasoning={"summary": "long"}), "invalid_field",
     "reasoning.summary"),
    ("text a string", ask("x", text="json"), "invalid_field", "text"),
    ("text format unknown", ask("x", text={"format": {"type": "yaml"}}), "invalid_field",
     "text.format.type"),
    ("truncation unknown", ask("x", truncation="middle"), "invalid_field", "truncation"),
    ("metadata a list", ask("x", metadata=[]), "invalid_field", "metadata"),
    ("include a string", ask("x", include="all"), "invalid_field", "include"),
    ("tools not a list", tools(tools=WEATHER_TOOL), "invalid_field", "tools"),
    ("tool not an object", tools("f"), "invalid_field", "tools[0]"),
    ("hosted tool", tools({"type": "web_search"}), "invalid_field", "tools[0].type"),
    ("tool without a type", tools({"name": "f"}), "missing_field", "tools[0].type"),
    ("chat's nested tool", tools({"type": "function", "function": {"name": "f"}}),
     "missing_field", "tools[0].name"),
    ("tool name with a space", tools({"type": "function", "name": "get weather"}),
     "invalid_field", "tools[0].name"),
    ("parameters a string", tools({"type": "function", "name": "f", "parameters": "{}"}),
     "invalid_field", "tools[0].parameters"),
    ("strict a string", tools({"type": "function", "name": "f", "strict": "yes"}),
     "invalid_field", "tools[0].strict"),
    ("same tool twice", tools(WEATHER_TOOL, WEATHER_TOOL), "invalid_field", "tools[1].name"),
    ("tool_choice unknown", tools(WEATHER_TOOL, tool_choice="sometimes"), "invalid_field",
     "tool_choice"),
    ("tool_choice required without tools", tools(tool_choice="required"), "invalid_field",
     "tool_choice"),
    ("tool_choice a hosted tool", tools(WEATHER_TOOL, tool_choice={"type": "web_search"}),
     "invalid_field", "tool_choice.type"),
    ("tool_choice names no declared tool", tools(WEATHER_TOOL, tool_choice={
        "type": "function", "name": "get_time"}), "invalid_field", "tool_choice.name"),
    ("tool_choice without a name", tools(WEATHER_TOOL, tool_choice={"type": "function"}),
     "missing_field", "tool_choice.name"),
    ("allowed_tools required, none listed", tools(WEATHER_TOOL, tool_choice={
        "type": "allowed_tools", "mode": "required", "tools": []}), "invalid_field",
     "tool_choice.mode"),
    ("allowed_tools names an undeclared tool", tools(WEATHER_TOOL, tool_choice={
        "type": "allowed_tools", "mode": "auto", "tools": [{"type": "function",
                                                             "name": "get_time"}]}),
     "invalid_field", "tool_choice.tools[0].name"),
    ("parallel_tool_calls a string", tools(WEATHER_TOOL, parallel_tool_calls="no"),
     "invalid_field", "parallel_tool_calls"),
    ("remote image", image("https://example.com/cat.jpg"), "remote_image_url",
     "input[0].content[1].image_url"),
    ("image as a file id", image(None, file_id="file-1"), "invalid_field",
     "input[0].content[1].file_id"),
    ("image without a url", image(None), "missing_field", "input[0].content[1].image_url"),
    ("image url an object", image({"url": "data:,"}), "invalid_field",
     "input[0].content[1].image_url"),
    ("bad base64", image("data:image/png;base64,@@@"), "invalid_image",
     "input[0].content[1].image_url"),
    ("not an image", image("data:text/plain;base64,aGk="), "unsupported_image_format",
     "input[0].content[1].image_url"),
    ("no encoder", image(f"data:image/png;base64,{png()}"), "vision_unavailable", None),
]


@pytest.mark.parametrize(("name", "body", "code", "param"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_requests(fake: Any, name: str, body: Any, code: str, param: str | None
                            ) -> None:
    client = await fake()
    raws = [body] if isinstance(body, bytes) else [json.dumps(body).encode()]
    if isinstance(body, dict) and "stream" not in body:  # a stream is refused the same way
        raws.append(json.dumps({**body, "stream": True}).encode())
    for raw in raws:
        response = await client.post(RESPONSES, data=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400, await response.text()
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["code"], error["param"]) == (code, param), error
        assert error["type"] == "invalid_request_error" and len(error["message"]) > 10


async def test_nested_tool_gets_a_hint(fake: Any) -> None:
    client = await fake()
    response = await client.post(RESPONSES, json=tools({"type": "function",
                                                        "function": {"name": "f"}}))
    assert "flat" in (await response.json())["error"]["message"]


async def test_never_a_500_for_wrong_types(fake: Any) -> None:
    """Every known field, and every field of every item and part, with every JSON type."""
    client = await fake()
    values: list[Any] = [None, True, -1, 0, 1.5, "x", [], {}, [1], {"a": 1}, ["x"]]
    fields = ["model", "input", "instructions", "stream", "stream_options", "store",
              "background", "previous_response_id", "conversation", "prompt", "include",
              "max_output_tokens", "max_tool_calls", "temperature", "top_p", "top_k", "stop",
              "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text", "metadata",
              "truncation", "user"]
    bodies: list[Any] = [ask("x", **{f: v}) for f in fields for v in values]
    templates: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": "x"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                              "text": "x"}]},
        CALL, {"type": "function_call_output", "call_id": "c1", "output": "x"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "x"}]}]
    for template in templates:
        for key in ("type", "role", "content", "call_id", "name", "arguments", "output",
                    "summary"):
            bodies += [items(CALL, {**template, key: v}) for v in values]
    bodies += [items({"role": "user", "content": [v]}) for v in values]
    bodies += [image(v) for v in values] + [tools({"type": "function", "name": v})
                                            for v in values]
    bodies += [tools(WEATHER_TOOL, tool_choice={"type": "allowed_tools", "tools": [v]})
               for v in values]
    bodies += [ask("x", reasoning={"effort": v}) for v in values]
    for body in bodies:
        # A model named as a string that is not served is not found: 404, not a 500.
        unknown = isinstance(body.get("model"), str) and body["model"] not in ("", "m")
        response = await client.post(RESPONSES, json=body)
        assert response.status in ((404,) if unknown else (200, 400)), \
            (body, await response.text())
        if response.status != 200:
            assert (await response.json())["error"]["message"]


async def test_oversize_body_is_413(fake: Any) -> None:
    client = await fake(max_message_bytes=2048)
    response = await client.post(RESPONSES, json=ask("x" * 5000))
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["code"] == "request_too_large" and "2048" in error["message"]


async def test_queue_full_is_429_and_loading_is_503(fake: Any) -> None:
    client = await fake(delay_ms=50, max_queue=0)
    busy = await client.post(RESPONSES, json=ask("a b c d e f g h", stream=True))
    await busy.content.readline()  # the stream has started: the one instance is taken
    for extra in ({}, {"stream": True}):
        response = await client.post(RESPONSES, json=ask("x", **extra))
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        error = (await response.json())["error"]
        assert error["code"] == "queue_full" and error["type"] == "server_error"
    busy.close()
    state = client.app[STATE]
    pool, state.pool = state.pool, None  # as while the server starts
    try:
        response = await client.post(RESPONSES, json=ask("x"))
        assert response.status == 503 and response.headers["Retry-After"] == "1"
        assert (await response.json())["error"]["code"] == "model_loading"
    finally:
        state.pool = pool


async def test_failure_mid_stream_is_response_failed(fake: Any) -> None:
    client = await fake(delay_ms=1)
    events = await streamed(client, ask("one two FAIL three"))
    final = check_stream(events)
    assert events[-1]["type"] == "response.failed" and final["status"] == "failed"
    assert final["error"] == {"code": "runtime_error", "message": "injected"}
    assert final["output"][0]["status"] == "incomplete" and response_text(final) == "one two "
    response = await client.post(RESPONSES, json=ask("one FAIL"))
    assert response.status == 500
    assert (await response.json())["error"]["code"] == "runtime_error"


# -- the server around it: keys, CORS, metrics ------------------------------------------

async def test_keys_cors_and_metrics_apply(fake: Any) -> None:
    client = await fake(server={"api_keys": "k1", "cors_origins": "https://app.example"})
    refused = await client.post(RESPONSES, json=ask("x"))
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": "Bearer k1", "Origin": "https://app.example"}
    response = await client.post(RESPONSES, json=ask("a b", stream=True), headers=headers)
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    check_stream(response_events(await response.text()))
    metrics = await (await client.get("/metrics", headers=headers)).text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    key = ("rkstream_requests_total", (("api", "openai_responses"), ("status", "completed")))
    assert samples[key] == 1
    assert ResponsesDialect.api in APIS


# -- cancellation ---------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_run(fake: Any, calls: Calls, stream: bool) -> None:
    client = await fake(delay_ms=30)
    await post_and_leave(client, RESPONSES, ask(" ".join(["w"] * 200), stream=stream),
                         stream=stream, lines=1, after_s=0 if stream else 100 * MS)
    await eventually(lambda: calls.cancels, 100)
    assert len(calls.cancels) == 1 and len(calls.finished) == 1
    assert response_text(await whole(client, ask("next"))) == "next "


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_during_prefill_aborts_at_once(standin: Any, records: Records,
                                                        stream: bool) -> None:
    client = await standin(prefill_delay_us=3000000)
    # streamed, response.created comes before the first token
    gone_ns = await post_and_leave(client, RESPONSES, ask("slow", stream=stream),
                                   stream=stream, after_s=0.2)
    await aborted_in_prefill(records, gone_ns)


# -- on the stand-in: stop sequences, images -------------------------------------------

async def test_stop_sequence(standin: Any) -> None:
    client = await standin(reply="alpha beta gamma delta")
    assert response_text(await whole(client, ask("x", stop=["gamma"]))) == "alpha beta "
    final = check_stream(await streamed(client, ask("x", stop="gamma")))
    assert response_text(final) == "alpha beta " and final["status"] == "completed"


async def test_data_url_image_reaches_the_runtime(standin: Any, records: Records) -> None:
    client = await standin("model.rkllm", vision=True, embed_width=16)
    await whole(client, image(f"data:image/png;base64,{png()}", detail="auto"))
    run = records.all("run")[-1]
    assert run["input_type"] == "multimodal" and run["n_image"] == 1
    broken = image("data:image/jpeg;base64," + base64.b64encode(b"junk").decode())
    response = await client.post(RESPONSES, json=broken)  # found in the vision step
    assert response.status == 400
    assert (await response.json())["error"]["code"] in ("invalid_image",
                                                        "unsupported_image_format")
