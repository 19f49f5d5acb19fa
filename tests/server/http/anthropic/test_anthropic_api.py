"""The Anthropic Messages API over a real socket: the message object, the typed
events, params, errors in Anthropic's shape, keys, CORS, metrics, the queue,
cancellation on disconnect, and count_tokens.

Most tests use the recording fake engine (it echoes the words of the last
message, one per delay); stop sequences, images and the disconnect during
prefill run on the RKLLM binding and the stand-in runtime.
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

from rkstream.config import RKLLMSettings, Settings, VisionSettings
from rkstream.core.messages import Message, TextPart
from rkstream.core.request import Tool
from rkstream.engines.text import estimate_tokens
from rkstream.server.app import make_app
from rkstream.server.http.anthropic.dialect import AnthropicDialect
from rkstream.server.state import STATE

from anthropic_support import COUNT, MESSAGES, QWEN3, WEATHER, rebuild, sse, user
from conftest import ModelFactory, Records
from fakes import Calls
from helpers import (
    MS,
    aborted_in_prefill,
    eventually,
    model_file,
    post_and_leave,
    resident,
    served_name,
    standin_settings,
)
from tiny_encoder import build_tiny_encoder

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def standin(aiohttp_client: ClientFactory, standin_libs: dict[str, Path],
            standin_model: ModelFactory, records: Records, tmp_path: Path
            ) -> Callable[..., Awaitable[Client]]:
    async def make(vision: bool = False, **keys: Any) -> Client:
        model = standin_model(record=records.path, **keys)
        encoder = build_tiny_encoder(tmp_path / "tiny.onnx", width=16) if vision else None
        settings = replace(
            Settings(), engine="rkllm",
            rkllm=replace(RKLLMSettings(), library=str(standin_libs["1.3"]), model=str(model)),
            vision=replace(VisionSettings(), encoder=str(encoder or "")))
        return await aiohttp_client(make_app(settings))
    return make


async def streamed(client: Client, body: dict[str, Any], **headers: str
                   ) -> list[dict[str, Any]]:
    response = await client.post(MESSAGES, json={**body, "stream": True}, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    return sse(await response.text())


async def whole(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(MESSAGES, json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


def anthropic_error(body: Any, kind: str) -> str:
    """The message of an error in Anthropic's shape, checked to be of type ``kind``."""
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    assert message
    return message


# -- shapes ---------------------------------------------------------------------------

async def test_whole_message_shape(fake: Any) -> None:
    client = await fake()
    body = await whole(client, user("one two three", model="m"))
    assert body["id"].startswith("msg_") and len(body["id"]) == 28
    assert body == {"id": body["id"], "type": "message", "role": "assistant",
                    "model": "m", "content": [{"type": "text", "text": "one two three "}],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 3}}
    unnamed = await whole(client, {k: v for k, v in user("hi").items() if k != "model"})
    assert unnamed["model"] == "m"  # the default model
    unknown = await client.post(MESSAGES, json=user("hi", model="claude-x"))
    assert unknown.status == 404
    assert "claude-x" in anthropic_error(await unknown.json(), "not_found_error")


async def test_stream_events_in_order(fake: Any) -> None:
    client = await fake(delay_ms=2)
    events = await streamed(client, user("alpha beta gamma", model="m"))
    start, blocks, delta = rebuild(events)
    assert start == {"id": start["id"], "type": "message", "role": "assistant", "model": "m",
                     "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert blocks == [{"type": "text", "text": "alpha beta gamma "}]
    assert [e["type"] for e in events] == (
        ["message_start", "content_block_start"] + ["content_block_delta"] * 3
        + ["content_block_stop", "message_delta", "message_stop"])
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 3, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 3}


async def test_pings_while_waiting(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AnthropicDialect, "keepalive_s", 20 * MS)
    client = await fake(delay_ms=150)
    events = await streamed(client, user("slow start"))
    assert events[0]["type"] == "message_start"  # before any ping
    first_block = next(i for i, e in enumerate(events) if e["type"] == "content_block_start")
    assert [e["type"] for e in events[1:first_block]].count("ping") >= 3
    assert events[1:first_block] == [{"type": "ping"}] * (first_block - 1)
    assert rebuild(events)[1] == [{"type": "text", "text": "slow start "}]


async def test_max_tokens_stop_reason_and_clamp(fake: Any, calls: Calls) -> None:
    client = await fake(max_tokens=64)
    body = await whole(client, user("a b c d e", max_tokens=2))
    assert body["stop_reason"] == "max_tokens" and body["content"][0]["text"] == "a b "
    assert body["usage"]["output_tokens"] == 2
    _, _, delta = rebuild(await streamed(client, user("a b c d e", max_tokens=2)))
    assert delta["delta"]["stop_reason"] == "max_tokens"
    # Claude Code asks for 32000: "as much as you may", clamped to limits.max_tokens.
    await whole(client, user("x", max_tokens=32000))
    assert calls.jobs[-1].sampling.max_tokens == 64


async def test_params_and_accepted_fields_reach_the_engine(fake: Any, calls: Calls) -> None:
    client = await fake()
    response = await client.post(MESSAGES, json=user(
        "x", temperature=0.3, top_p=0.5, top_k=7, stop_sequences=["END", "STOP"],
        metadata={"user_id": "u-1"}, thinking={"type": "enabled", "budget_tokens": 2048},
        service_tier="auto", system=[{"type": "text", "text": "be brief",
                                      "cache_control": {"type": "ephemeral"}}],
        some_future_field={"x": 1}), headers={"anthropic-version": "2023-06-01",
                                              "anthropic-beta": "whatever-2025"})
    assert response.status == 200, await response.text()
    job = calls.jobs[-1]
    s = job.sampling
    assert (s.temperature, s.top_p, s.top_k, s.stop) == (0.3, 0.5, 7, ("END", "STOP"))
    assert job.enable_thinking is True
    assert [m.role for m in job.messages] == ["system", "user"]
    assert job.messages[0].text == "be brief"


async def test_conversation_becomes_project_messages(fake: Any, calls: Calls) -> None:
    client = await fake()
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather"},
                                     {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "need it", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"}]},
        {"role": "user", "content": "Also Bergen."},  # combined with the turn before
    ]
    body = {"model": "m", "max_tokens": 9, "system": "be brief", "messages": messages,
            "tools": [WEATHER]}
    assert (await client.post(MESSAGES, json=body)).status == 200
    got = calls.jobs[-1].messages
    assert [m.role for m in got] == ["system", "user", "assistant", "tool", "user"]
    assert got[1].text == "weather\n\nin Oslo?"
    assert got[2].text == "Checking."  # no think tags: the fake has no chat format
    assert [(c.id, c.name, c.arguments_value()) for c in got[2].tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Oslo"})]
    assert (got[3].text, got[3].tool_call_id, got[3].tool_name) == (
        "sunny", "toolu_1", "get_weather")
    assert got[4].text == "and tomorrow?\n\nAlso Bergen."


async def test_stop_sequence_on_standin(standin: Any) -> None:
    client = await standin(reply="alpha beta gamma delta")
    model = served_name(client)
    body = await whole(client, user("x", model=model, stop_sequences=["nope", "gamma"]))
    assert body["content"] == [{"type": "text", "text": "alpha beta "}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "gamma")
    _, blocks, delta = rebuild(await streamed(client, user("x", model=model,
                                                           stop_sequences=["gamma"])))
    assert blocks == [{"type": "text", "text": "alpha beta "}]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "gamma"}
    body = await whole(client, user("x", model=model, stop_sequences=["omega"]))
    assert (body["stop_reason"], body["stop_sequence"]) == ("end_turn", None)


async def test_empty_answer_has_an_empty_text_block(standin: Any) -> None:
    client = await standin(reply="alpha beta")
    model = served_name(client)
    body = await whole(client, user("x", model=model, stop_sequences=["alpha"]))
    assert body["content"] == [{"type": "text", "text": ""}]
    _, blocks, _ = rebuild(await streamed(client, user("x", model=model,
                                                      stop_sequences=["alpha"])))
    assert blocks == [{"type": "text", "text": ""}]


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_block(source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def with_image(source: Any, model: str = "m") -> dict[str, Any]:
    return user([{"type": "text", "text": "what is this?"}, image_block(source)], model=model)


PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": png()}


async def test_base64_image_reaches_the_runtime(standin: Any, records: Records) -> None:
    client = await standin(vision=True, embed_width=16)
    model = served_name(client)
    await whole(client, with_image(PNG_SOURCE, model))
    run = records.all("run")[-1]
    assert run["input_type"] == "multimodal" and run["n_image"] == 1
    assert "<image>" in run["prompt"]
    broken = {**PNG_SOURCE, "data": base64.b64encode(b"junk").decode()}
    response = await client.post(MESSAGES, json=with_image(broken, model))  # the vision step
    assert response.status == 400
    anthropic_error(await response.json(), "invalid_request_error")
    events = await streamed(client, with_image(broken, model))
    assert events[-1]["type"] == "error"  # the stream had opened (message_start)
    anthropic_error(events[-1], "invalid_request_error")


# -- errors ---------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, Any, str]] = [
    # (name, body (bytes are sent as they are), a word the message holds)
    ("not json", b"{nope", "not valid JSON"),
    ("not an object", [1, 2], "JSON object"),
    ("no messages", {"model": "m", "max_tokens": 5}, "messages is required"),
    ("empty messages", {"max_tokens": 5, "messages": []}, "at least one"),
    ("no max_tokens", {"messages": [{"role": "user", "content": "x"}]},
     "max_tokens is required"),
    ("max_tokens zero", user("x", max_tokens=0), "max_tokens = 0"),
    ("max_tokens a string", user("x", max_tokens="9"), "max_tokens must be"),
    ("system role", {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages[0].role"),
    ("no content", {"max_tokens": 5, "messages": [{"role": "user"}]}, "messages[0].content"),
    ("content a number", user(5), "messages[0].content must be"),
    ("block not an object", user(["x"]), "messages[0].content[0] must be"),
    ("unknown block", user([{"type": "document", "source": {}}]),
     "messages[0].content[0].type = 'document'"),
    ("text block without text", user([{"type": "text"}]), "messages[0].content[0].text"),
    ("prefill", {"max_tokens": 5, "messages": [{"role": "user", "content": "x"},
                                               {"role": "assistant", "content": "y"}]},
     "prefill"),
    ("assistant block unknown", {"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "image"}]},
        {"role": "user", "content": "x"}]}, "messages[0].content[0].type"),
    ("tool_use without input", {"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]},
        {"role": "user", "content": "x"}]}, "messages[0].content[0].input"),
    ("tool_use input a string", {"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                           "input": "{}"}]},
        {"role": "user", "content": "x"}]}, "messages[0].content[0].input must be"),
    ("tool_result without id", user([{"type": "tool_result", "content": "x"}]),
     "tool_use_id is required"),
    ("tool_result content a number", user([{"type": "tool_result", "tool_use_id": "t",
                                            "content": 3}]), "content[0].content"),
    ("image in a tool result", user([{"type": "tool_result", "tool_use_id": "t",
                                      "content": [image_block(PNG_SOURCE)]}]),
     "not allowed in a tool result"),
    ("image url source", with_image({"type": "url", "url": "https://example.com/a.png"}),
     "remote image URLs"),
    ("image file source", with_image({"type": "file", "file_id": "f"}), "Files API"),
    ("image without source", user([{"type": "image"}]), "source is required"),
    ("image bad base64", with_image({**PNG_SOURCE, "data": "@@@"}), "not valid base64"),
    ("image not an image", with_image({**PNG_SOURCE, "media_type": "text/plain"}),
     "not an image type"),
    ("image without an encoder", with_image(PNG_SOURCE), "no vision encoder"),
    ("system a number", user("x", system=5), "system must be"),
    ("system block not text", user("x", system=[{"type": "image"}]), "system[0].type"),
    ("temperature too high", user("x", temperature=9), "temperature = 9"),
    ("top_k negative", user("x", top_k=-1), "top_k = -1"),
    ("stop_sequences a number", user("x", stop_sequences=5), "stop_sequences must be"),
    ("too many stop_sequences", user("x", stop_sequences=[str(i) for i in range(9)]),
     "at most 8"),
    ("stream a string", user("x", stream="yes"), "stream must be"),
    ("model a number", user("x", model=5), "model must be"),
    ("metadata a list", user("x", metadata=[]), "metadata must be"),
    ("metadata.user_id a number", user("x", metadata={"user_id": 1}), "metadata.user_id"),
    ("thinking a string", user("x", thinking="on"), "thinking must be"),
    ("thinking unknown type", user("x", thinking={"type": "maybe"}), "thinking.type"),
    ("thinking without budget", user("x", thinking={"type": "enabled"}),
     "thinking.budget_tokens is required"),
    ("thinking budget zero", user("x", thinking={"type": "enabled", "budget_tokens": 0}),
     "thinking.budget_tokens = 0"),
    ("thinking display unknown", user("x", thinking={"type": "adaptive", "display": "all"}),
     "thinking.display"),
]


@pytest.mark.parametrize(("name", "body", "words"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_requests(fake: Any, name: str, body: Any, words: str) -> None:
    client = await fake()
    raws = [body] if isinstance(body, bytes) else [json.dumps(body).encode()]
    if isinstance(body, dict) and "stream" not in body:  # a stream is refused the same way
        raws.append(json.dumps({**body, "stream": True}).encode())
    for raw in raws:
        response = await client.post(MESSAGES, data=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400, await response.text()
        assert response.content_type == "application/json"
        assert words in anthropic_error(await response.json(), "invalid_request_error")


async def test_never_a_500_for_wrong_types(fake: Any) -> None:
    """Every known field, and every field of a message and a block, with every JSON type."""
    client = await fake()
    values: list[Any] = [None, True, -1, 0, 1.5, "x", [], {}, [1], {"a": 1}, ["x"],
                         [{"type": "text"}]]
    fields = ["model", "stream", "max_tokens", "system", "temperature", "top_p", "top_k",
              "stop_sequences", "metadata", "tools", "tool_choice", "thinking", "messages"]
    bodies: list[Any] = [user("x", **{f: v}) for f in fields for v in values]
    for key in ("role", "content"):
        bodies += [{"max_tokens": 5, "messages": [{"role": "user", "content": "x", key: v}]}
                   for v in values]
    blocks = [{"type": t, key: v} for t in ("text", "image", "tool_result", "tool_use",
                                            "thinking")
              for key in ("text", "source", "content", "tool_use_id", "input", "id", "name",
                          "thinking", "is_error")
              for v in values]
    bodies += [user([b]) for b in blocks]
    bodies += [{"max_tokens": 5, "messages": [{"role": "assistant", "content": [b]},
                                              {"role": "user", "content": "x"}]}
               for b in blocks]
    bodies += [with_image(v) for v in values]
    bodies += [with_image({"type": "base64", key: v}) for key in ("media_type", "data")
               for v in values]
    for body in bodies:
        # A model named as a string that is not served is not found: 404, not a 500.
        unknown = isinstance(body, dict) and body.get("model") not in (None, "", "m") \
            and isinstance(body.get("model"), str)
        for path in (MESSAGES, COUNT):
            response = await client.post(path, json=body)
            assert response.status in ((404,) if unknown else (200, 400)), \
                (path, body, await response.text())
            if response.status == 400:
                anthropic_error(await response.json(), "invalid_request_error")
            elif unknown:
                anthropic_error(await response.json(), "not_found_error")


async def test_oversize_body_is_413(fake: Any) -> None:
    client = await fake(max_message_bytes=2048)
    response = await client.post(MESSAGES, json=user("x" * 5000))
    assert response.status == 413
    assert "2048" in anthropic_error(await response.json(), "request_too_large")


async def test_queue_full_is_529_overloaded(fake: Any) -> None:
    client = await fake(delay_ms=50, max_queue=0)
    busy = await client.post(MESSAGES, json=user("a b c d e f g h", stream=True))
    await busy.content.readline()  # message_start: the one instance is taken
    for extra in ({}, {"stream": True}):
        response = await client.post(MESSAGES, json=user("x", **extra))
        assert response.status == 529 and response.headers["Retry-After"] == "1"
        assert "queue is full" in anthropic_error(await response.json(), "overloaded_error")
    busy.close()


async def test_routes_and_methods(fake: Any) -> None:
    client = await fake()
    for method, path, status, kind in [
            ("GET", MESSAGES, 405, "invalid_request_error"),
            ("GET", COUNT, 405, "invalid_request_error"),
            ("POST", "/v1/messages/batches", 404, "not_found_error")]:
        response = await client.request(method, path)
        assert response.status == status
        anthropic_error(await response.json(), kind)
    # The OpenAI routes keep OpenAI's shape.
    other = await client.get("/v1/messagesX")
    assert other.status == 404 and "code" in (await other.json())["error"]


async def test_model_loading_is_503_overloaded(fake: Any) -> None:
    client = await fake()
    state = client.app[STATE]
    pool, state.pool = state.pool, None  # as while the server starts
    try:
        for path in (MESSAGES, COUNT):
            response = await client.post(path, json=user("x"))
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            anthropic_error(await response.json(), "overloaded_error")
    finally:
        state.pool = pool


async def test_failure_mid_stream_is_an_error_event(fake: Any) -> None:
    client = await fake(delay_ms=1)
    events = await streamed(client, user("one two FAIL three"))
    assert events[-1] == {"type": "error", "error": {"type": "api_error",
                                                     "message": "injected"}}
    assert "message_stop" not in [e["type"] for e in events]
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(texts) == "one two "
    response = await client.post(MESSAGES, json=user("one FAIL"))
    assert response.status == 500
    assert anthropic_error(await response.json(), "api_error") == "injected"


async def test_api_keys_by_x_api_key_or_bearer(fake: Any) -> None:
    client = await fake(server={"api_keys": "k1"})
    for path in (MESSAGES, COUNT):
        refused = await client.post(path, json=user("x"))
        assert refused.status == 401
        message = anthropic_error(await refused.json(), "authentication_error")
        assert "x-api-key" in message
        wrong = await client.post(path, json=user("x"), headers={"x-api-key": "nope"})
        assert wrong.status == 401
    for headers in ({"x-api-key": "k1"}, {"Authorization": "Bearer k1"},
                    {"X-Api-Key": "k1", "anthropic-version": "2023-06-01"}):
        assert (await client.post(MESSAGES, json=user("hi"), headers=headers)).status == 200
        assert (await client.post(COUNT, json=user("hi"), headers=headers)).status == 200


async def test_cors_headers_on_streams_and_errors(fake: Any) -> None:
    client = await fake(server={"cors_origins": "https://app.example"})
    origin = {"Origin": "https://app.example"}
    response = await client.post(MESSAGES, json=user("hi", stream=True), headers=origin)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await response.read()
    refused = await client.post(MESSAGES, json=user(5), headers=origin)
    assert refused.status == 400
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_metrics_count_the_endpoint(fake: Any) -> None:
    client = await fake()
    await whole(client, user("a"))
    await streamed(client, user("b"))
    text = await (await client.get("/metrics")).text()
    samples = {(s.labels.get("api"), s.labels.get("status")): s.value
               for family in text_string_to_metric_families(text)
               if family.name == "rkstream_requests"
               for s in family.samples if s.name == "rkstream_requests_total"}
    assert samples[("anthropic_messages", "completed")] == 2
    assert samples[("openai_chat", "completed")] == 0


# -- cancellation ---------------------------------------------------------------------

@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_fake_run(fake: Any, calls: Calls, stream: bool) -> None:
    client = await fake(delay_ms=30)
    await post_and_leave(client, MESSAGES, user(" ".join(["w"] * 200), stream=stream),
                         stream=stream, lines=2, after_s=0 if stream else 100 * MS)
    await eventually(lambda: calls.cancels, 100)
    assert len(calls.cancels) == 1 and len(calls.finished) == 1
    assert (await whole(client, user("next")))["content"][0]["text"] == "next "


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_during_prefill_aborts_at_once(standin: Any, records: Records,
                                                        stream: bool) -> None:
    client = await standin(prefill_delay_us=3000000)
    # streamed, message_start goes out before the first token
    gone_ns = await post_and_leave(client, MESSAGES, user("slow", model=served_name(client),
                                                          stream=stream),
                                   stream=stream, after_s=0.2)
    await aborted_in_prefill(records, gone_ns)


# -- count_tokens -----------------------------------------------------------------------

async def test_count_tokens_estimates_on_rkllm(standin: Any, records: Records) -> None:
    client = await standin()
    response = await client.post(COUNT, json={"model": served_name(client), "messages": [
        {"role": "user", "content": "What is the weather in Oslo today?"}]})
    assert response.status == 200, await response.text()
    assert response.headers["X-Rkstream-Token-Count"] == "estimate"
    body = await response.json()
    # No chat format on this file: the runtime gets the message as it is.
    assert body == {"input_tokens": estimate_tokens("What is the weather in Oslo today?")}
    assert records.all("run") == []  # nothing was generated
    longer = await (await client.post(COUNT, json={
        "system": "Be brief. " * 20, "tools": [WEATHER], "messages": [
            {"role": "user", "content": "What is the weather in Oslo today?"}]})).json()
    assert longer["input_tokens"] > body["input_tokens"] + 40


async def test_count_tokens_follows_the_chat_format(aiohttp_client: ClientFactory,
                                                    standin_libs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    model = model_file(tmp_path, QWEN3)
    client = await aiohttp_client(make_app(standin_settings(standin_libs["1.3"], model)))
    engine = resident(client).engine
    assert engine.chat_format is not None
    body = {"system": "sys", "tools": [WEATHER],
            "messages": [{"role": "user", "content": "hi"}]}
    got = await (await client.post(COUNT, json=body)).json()
    prompt = engine.chat_format.render(
        (Message("system", (TextPart("sys"),)), Message("user", (TextPart("hi"),))), None,
        tools=(Tool("get_weather", WEATHER["description"], WEATHER["input_schema"]),))
    assert got == {"input_tokens": estimate_tokens(prompt)}
    off = await (await client.post(COUNT, json={
        **body, "thinking": {"type": "disabled"}})).json()
    assert off["input_tokens"] > got["input_tokens"]  # the empty <think></think> block


async def test_count_tokens_counts_image_rows(standin: Any, fake: Any) -> None:
    client = await standin(vision=True, embed_width=16)
    model = served_name(client)
    text_only = await (await client.post(COUNT, json=user("what is this?", model=model))).json()
    response = await client.post(COUNT, json=with_image(PNG_SOURCE, model))
    assert response.headers["X-Rkstream-Token-Count"] == "estimate"
    vision = resident(client).vision
    assert vision is not None
    got = (await response.json())["input_tokens"]
    assert got == text_only["input_tokens"] + vision.encoder.n_tokens
    refused = await (await fake()).post(COUNT, json=with_image(PNG_SOURCE))
    assert refused.status == 400
    assert "no vision encoder" in anthropic_error(await refused.json(),
                                                  "invalid_request_error")
