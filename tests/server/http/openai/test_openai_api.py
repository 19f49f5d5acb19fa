"""The OpenAI-compatible API over a real socket: response shapes, SSE chunk
rules, params, errors, and cancellation on disconnect.

Most tests use the recording fake engine (it echoes the words of the last
message, one per delay). Stop sequences and the disconnect-during-prefill
test run on the RKLLM binding and the stand-in runtime, whose call records
show when rkllm_abort was called.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from rkstream.config import LimitSettings, RKLLMSettings, Settings, VisionSettings
from rkstream.core.messages import ToolCall
from rkstream.server.app import make_app
from rkstream.server.http.openai.dialect import OpenAIDialect
from rkstream.server.state import STATE

from conftest import ModelFactory, Records
from fakes import Calls, FakeEngine
from helpers import MS, aborted_in_prefill, eventually, fake_settings, post_and_leave
from openai_support import sse_events
from tiny_encoder import build_tiny_encoder

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]
CHAT = "/v1/chat/completions"


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def fake(aiohttp_client: ClientFactory, calls: Calls) -> Callable[..., Awaitable[Client]]:
    async def make(delay_ms: float = 0, **limits: Any) -> Client:
        settings = fake_settings(limits=replace(LimitSettings(), **limits))  # served as "m"
        app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS, calls))
        return await aiohttp_client(app)
    return make


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
        app = make_app(settings)
        return await aiohttp_client(app)
    return make


async def stream(client: Client, path: str, body: dict[str, Any]) -> list[Any]:
    response = await client.post(path, json={**body, "stream": True})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    return sse_events(await response.text())


def check_chunks(events: list[Any], *, usage: bool, chat: bool = True) -> list[dict[str, Any]]:
    """Assert every rule a chunk sequence must keep; return the chunks with choices."""
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    kind = "chat.completion.chunk" if chat else "text_completion"
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    for chunk in chunks:
        assert chunk["object"] == kind and isinstance(chunk["created"], int)
        assert chunk["model"] and ("usage" in chunk) is usage
    with_choices = [c for c in chunks if c["choices"]]
    if usage:
        last = chunks[-1]
        assert last["choices"] == [] and chunks[:-1] == with_choices
        u = last["usage"]
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert all(c["usage"] is None for c in with_choices)
    else:
        assert chunks == with_choices
    for i, chunk in enumerate(with_choices):
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and choice["logprobs"] is None
        final = i == len(with_choices) - 1
        assert (choice["finish_reason"] is None) is not final
        if chat:
            assert ("role" in choice["delta"]) is (i == 0)
    if chat:
        assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert with_choices[-1]["choices"][0]["delta"] == {}
    return with_choices


def text_of(chunks: list[dict[str, Any]]) -> str:
    choices = [c["choices"][0] for c in chunks]
    return "".join(c["delta"].get("content", "") if "delta" in c else c["text"]
                   for c in choices)


# -- shapes ---------------------------------------------------------------------------

async def test_chat_whole_shape(fake: Any) -> None:
    client = await fake()
    response = await client.post(CHAT, json=user("one two three", model="m"))
    assert response.status == 200 and response.content_type == "application/json"
    body = await response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                "message": {"role": "assistant",
                                            "content": "one two three "}}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert body["timings"]["predicted_n"] == 3


async def test_model_defaults_to_the_loaded_one(fake: Any) -> None:
    client = await fake()
    body = await (await client.post(CHAT, json=user("hi"))).json()
    assert body["model"] == "m"
    for path, body in [(CHAT, user("hi", model="my-model")),
                       ("/v1/completions", {"prompt": "hi", "model": "my-model"})]:
        unknown = await client.post(path, json=body)
        assert unknown.status == 404
        error = (await unknown.json())["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        assert "my-model" in error["message"]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_chunks(fake: Any, include_usage: bool) -> None:
    client = await fake(delay_ms=2)
    events = await stream(client, CHAT, user(
        "alpha beta gamma", model="m", stream_options={"include_usage": include_usage}))
    chunks = check_chunks(events, usage=include_usage)
    assert text_of(chunks) == "alpha beta gamma "
    assert len(chunks) == 5  # role, three pieces, finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["model"] == "m"
    if include_usage:
        assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                       "total_tokens": 6,
                                       "prompt_tokens_details": {"cached_tokens": 0}}


async def test_pings_while_waiting_for_the_first_token(fake: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenAIDialect, "keepalive_s", 20 * MS)
    client = await fake(delay_ms=150)
    response = await client.post(CHAT, json=user("slow start", stream=True))
    body = await response.text()
    assert body.count(": ping\n\n") >= 3  # before the first word only
    assert text_of(check_chunks(sse_events(body), usage=False)) == "slow start "


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_gives_length(fake: Any, field: str) -> None:
    client = await fake()
    body = await (await client.post(CHAT, json=user("a b c d e", **{field: 2}))).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "a b "
    assert body["usage"]["completion_tokens"] == 2
    chunks = check_chunks(await stream(client, CHAT, user("a b c d e", **{field: 2})),
                          usage=False)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_newer_max_tokens_name_wins(fake: Any, calls: Calls) -> None:
    client = await fake()
    await client.post(CHAT, json=user("x", max_tokens=9, max_completion_tokens=3))
    assert calls.jobs[-1].sampling.max_tokens == 3


async def test_params_reach_the_engine(fake: Any, calls: Calls) -> None:
    client = await fake()
    response = await client.post(CHAT, json=user(
        "x", temperature=0.3, top_p=0.5, top_k=7, repeat_penalty=1.3, frequency_penalty=0.4,
        presence_penalty=-0.2, stop=["END"], seed=42, n=1, user="u", logprobs=False,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto", parallel_tool_calls=True, response_format={"type": "text"},
        enable_thinking=False, some_future_field={"x": 1}))
    assert response.status == 200
    s = calls.jobs[-1].sampling
    assert (s.temperature, s.top_p, s.top_k, s.repeat_penalty) == (0.3, 0.5, 7, 1.3)
    assert (s.frequency_penalty, s.presence_penalty, s.stop) == (0.4, -0.2, ("END",))
    await client.post(CHAT, json=user("x", stop="one"))
    assert calls.jobs[-1].sampling.stop == ("one",)


async def test_messages_become_project_messages(fake: Any, calls: Calls) -> None:
    client = await fake()
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather "},
                                     {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    response = await client.post(CHAT, json={"messages": messages, "model": "m"})
    assert response.status == 200
    got = calls.jobs[-1].messages
    assert [m.role for m in got] == ["system", "user", "assistant", "tool"]
    assert got[1].text == "weather in Oslo?"
    assert got[2].text == "" and got[2].tool_calls == (
        ToolCall("c1", "weather", '{"city": "Oslo"}'),)
    assert got[3].text == "sunny" and got[3].tool_call_id == "c1"
    assert got[3].tool_name == "weather"


async def test_stop_sequence_on_standin(standin: Any) -> None:
    client = await standin(reply="alpha beta gamma delta")
    body = await (await client.post(CHAT, json=user("x", stop=["gamma"]))).json()
    assert body["choices"][0]["message"]["content"] == "alpha beta "
    assert body["choices"][0]["finish_reason"] == "stop"
    chunks = check_chunks(await stream(client, CHAT, user("x", stop="gamma", max_tokens=9)),
                          usage=False)
    assert text_of(chunks) == "alpha beta "


async def test_completions_shapes(fake: Any) -> None:
    client = await fake()
    body = await (await client.post("/v1/completions",
                                    json={"prompt": ["red green"], "model": "m"})).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "red green ", "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 4
    events = await stream(client, "/v1/completions", {
        "prompt": "red green", "stream_options": {"include_usage": True}})
    chunks = check_chunks(events, usage=True, chat=False)
    assert text_of(chunks) == "red green "
    echoed = await (await client.post("/v1/completions",
                                      json={"prompt": "a b", "echo": True})).json()
    assert echoed["choices"][0]["text"] == "a ba b "


async def test_models(fake: Any) -> None:
    client = await fake()
    listing = await (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    (model,) = listing["data"]
    assert model["id"] == "m" and model["object"] == "model"
    assert model["owned_by"] == "rkstream" and isinstance(model["created"], int)
    assert model["status"] == {"value": "loaded"}  # the default model loads at start
    assert await (await client.get("/v1/models/m")).json() == model
    missing = await client.get("/v1/models/gpt-4o")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


# -- errors ---------------------------------------------------------------------------

def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image(url: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": url}]}]}


BAD_REQUESTS: list[tuple[str, Any, str, str | None]] = [
    # (name, body (bytes are sent as they are), code, param)
    ("not json", b"{nope", "invalid_encoding", None),
    ("not utf-8", b"\xff\xfe{}", "invalid_encoding", None),
    ("too deep", b"[" * 100000, "invalid_encoding", None),
    ("not an object", [1, 2], "invalid_event", None),
    ("no messages", {"model": "m"}, "missing_field", "messages"),
    ("messages not a list", {"messages": "hi"}, "invalid_field", "messages"),
    ("empty messages", {"messages": []}, "invalid_field", "messages"),
    ("message not an object", {"messages": ["hi"]}, "invalid_field", "messages[0]"),
    ("no role", {"messages": [{"content": "x"}]}, "missing_field", "messages[0].role"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "invalid_field",
     "messages[0].role"),
    ("no content", {"messages": [{"role": "user"}]}, "missing_field", "messages[0].content"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "invalid_field",
     "messages[0].content"),
    ("unknown part", {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "invalid_field", "messages[0].content[0].type"),
    ("text part without text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "missing_field", "messages[0].content[0].text"),
    ("bad tool call", {"messages": [{"role": "assistant", "tool_calls": [{"id": 1}]}]},
     "invalid_field", "messages[0].tool_calls[0].id"),
    ("n=2", user("x", n=2), "invalid_param", "n"),
    ("model a number", user("x", model=5), "invalid_field", "model"),
    ("stream a string", user("x", stream="yes"), "invalid_field", "stream"),
    ("stream_options a number", user("x", stream_options=3), "invalid_field",
     "stream_options"),
    ("include_usage a string", user("x", stream_options={"include_usage": "y"}),
     "invalid_field", "stream_options.include_usage"),
    ("temperature a string", user("x", temperature="hot"), "invalid_field", "temperature"),
    ("temperature too high", user("x", temperature=9), "invalid_param", "temperature"),
    ("top_p negative", user("x", top_p=-0.1), "invalid_param", "top_p"),
    ("top_k negative", user("x", top_k=-1), "invalid_param", "top_k"),
    ("max_tokens zero", user("x", max_tokens=0), "invalid_param", "max_tokens"),
    ("max_tokens fractional", user("x", max_tokens=1.5), "invalid_field", "max_tokens"),
    ("max_tokens over the cap", user("x", max_tokens=100000), "invalid_param", "max_tokens"),
    ("stop a number", user("x", stop=5), "invalid_field", "stop"),
    ("too many stops", user("x", stop=[str(i) for i in range(9)]), "invalid_param", "stop"),
    ("seed a string", user("x", seed="s"), "invalid_field", "seed"),
    ("remote image", image({"url": "https://example.com/cat.jpg"}), "remote_image_url",
     "messages[0].content[1].image_url.url"),
    ("file image", image("file:///etc/passwd"), "invalid_image",
     "messages[0].content[1].image_url"),
    ("bad base64", image({"url": "data:image/png;base64,@@@"}), "invalid_image",
     "messages[0].content[1].image_url.url"),
    ("not an image", image({"url": "data:text/plain;base64,aGk="}),
     "unsupported_image_format", "messages[0].content[1].image_url.url"),
    ("no encoder", image({"url": f"data:image/png;base64,{png()}"}), "vision_unavailable",
     None),
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
        response = await client.post(CHAT, data=raw,
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400, await response.text()
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code and error["param"] == param
        assert error["type"] == "invalid_request_error" and len(error["message"]) > 10


async def test_data_url_image_reaches_the_runtime(standin: Any, records: Records) -> None:
    client = await standin(vision=True, embed_width=16)
    response = await client.post(CHAT, json=image(f"data:image/png;base64,{png()}"))
    assert response.status == 200, await response.text()
    run = records.all("run")[-1]
    assert run["input_type"] == "multimodal" and run["n_image"] == 1
    assert "<image>" in run["prompt"]
    broken = image({"url": "data:image/jpeg;base64," + base64.b64encode(b"junk").decode()})
    response = await client.post(CHAT, json=broken)  # found in the vision step
    assert response.status == 400
    assert (await response.json())["error"]["code"] in ("invalid_image",
                                                        "unsupported_image_format")
    events = await stream(client, CHAT, broken)
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "invalid_request_error"


async def test_completions_errors(fake: Any) -> None:
    client = await fake()
    for body, code in [({"prompt": "def f(", "suffix": "return x"}, "fim_unsupported"),
                       ({}, "missing_field"), ({"prompt": [1, 2, 3]}, "invalid_field"),
                       ({"prompt": ["a", "b"]}, "invalid_field"),
                       ({"prompt": "x", "best_of": 3}, "invalid_param")]:
        response = await client.post("/v1/completions", json=body)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == code
    fim = await (await client.post("/v1/completions", json={"prompt": "a", "suffix": "b"})
                 ).json()
    assert "fill-in-the-middle markers" in fim["error"]["message"]


async def test_never_a_500_for_wrong_types(fake: Any) -> None:
    """Every known field, and every message field, with every JSON type."""
    client = await fake()
    values: list[Any] = [None, True, -1, 0, 1.5, "x", [], {}, [1], {"a": 1}, ["x"]]
    fields = ["model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
              "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
              "repeat_penalty", "stop", "seed", "n", "tools", "tool_choice", "user"]
    bodies: list[Any] = [user("x", **{f: v}) for f in fields for v in values]
    for key in ("role", "content", "tool_calls", "name"):
        bodies += [{"messages": [{"role": "assistant", "content": "x", key: v}]}
                   for v in values]
    bodies += [{"messages": [{"role": "user", "content": [v]}]} for v in values]
    bodies += [image(v) for v in values] + [image({"url": v}) for v in values]
    bodies += [{"prompt": v, "suffix": v} for v in values]
    for body in bodies:
        # A model named as a string that is not served is not found: 404, not a 500.
        unknown = isinstance(body.get("model"), str) and body["model"] not in ("", "m")
        for path in (CHAT, "/v1/completions"):
            response = await client.post(path, json=body)
            assert response.status in ((404,) if unknown else (200, 400)), \
                (path, body, await response.text())
            if response.status != 200:
                assert (await response.json())["error"]["message"]


async def test_oversize_body_is_413(fake: Any) -> None:
    client = await fake(max_message_bytes=2048)
    response = await client.post(CHAT, json=user("x" * 5000))
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["code"] == "request_too_large" and "2048" in error["message"]
    assert (await client.post(CHAT, json=user("small"))).status == 200


async def test_queue_full_is_429_with_retry_after(fake: Any) -> None:
    client = await fake(delay_ms=50, max_queue=0)
    busy = await client.post(CHAT, json=user("a b c d e f g h", stream=True))
    await busy.content.readline()  # the stream has started: the one instance is taken
    for extra in ({}, {"stream": True}):
        response = await client.post(CHAT, json=user("x", **extra))
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        error = (await response.json())["error"]
        assert error["code"] == "queue_full" and error["type"] == "server_error"
    busy.close()


async def test_routes_and_methods_under_v1(fake: Any) -> None:
    client = await fake()
    for method, path, status, code in [("GET", "/v1/images/generations", 404, "not_found"),
                                       ("POST", "/v1/audio/speech", 404, "not_found"),
                                       ("GET", CHAT, 405, "method_not_allowed")]:
        response = await client.request(method, path)
        assert response.status == status
        assert (await response.json())["error"]["code"] == code
    assert (await client.get("/nope")).content_type != "application/json"  # not ours


async def test_model_loading_is_503(fake: Any) -> None:
    client = await fake()
    state = client.app[STATE]
    pool, state.pool = state.pool, None  # as while the server starts
    try:
        for method, path in [("POST", CHAT), ("GET", "/v1/models")]:
            response = await client.request(method, path, json=user("x"))
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == "model_loading"
    finally:
        state.pool = pool


async def test_failure_mid_stream_is_an_error_event(fake: Any) -> None:
    client = await fake(delay_ms=1)
    events = await stream(client, CHAT, user("one two FAIL three"))
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "runtime_error" and error["message"] == "injected"
    assert text_of([e for e in events[:-2]]) == "one two "
    whole = await client.post(CHAT, json=user("one FAIL"))
    assert whole.status == 500
    assert (await whole.json())["error"]["code"] == "runtime_error"


# -- cancellation ---------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [True, False])
async def test_disconnect_cancels_fake_run(fake: Any, calls: Calls, streamed: bool) -> None:
    """A client that goes away cancels its run, streamed or not."""
    client = await fake(delay_ms=30)
    body = user(" ".join(["w"] * 200), stream=streamed)
    await post_and_leave(client, CHAT, body, stream=streamed, lines=2,
                         after_s=0 if streamed else 100 * MS)
    await eventually(lambda: calls.cancels, 100)
    assert len(calls.cancels) == 1 and len(calls.finished) == 1
    body = await (await client.post(CHAT, json=user("next"))).json()
    assert body["choices"][0]["message"]["content"] == "next "


@pytest.mark.parametrize("streamed", [True, False])
async def test_disconnect_during_prefill_aborts_at_once(standin: Any, records: Records,
                                                        streamed: bool) -> None:
    client = await standin(prefill_delay_us=3000000)
    # streamed, the headers come before the first token
    gone_ns = await post_and_leave(client, CHAT, user("slow", stream=streamed),
                                   stream=streamed, after_s=0.2)
    await aborted_in_prefill(records, gone_ns)
    before = time.monotonic()
    body = await (await client.post(CHAT, json=user("again [[prefill_delay_us=0]]"))).json()
    assert body["choices"][0]["message"]["content"] == "Echo: again"
    assert time.monotonic() - before < 1000 * MS
