"""The Ollama API over HTTP with the recording fake engine: shapes, errors, cancel.

tests/server/test_ollama_client.py drives the same endpoints with the
official ``ollama`` Python client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from rkstream import __version__
from rkstream.config import LimitSettings, Settings
from rkstream.server.app import make_app
from rkstream.server.http.ollama.routes import ndjson

from fakes import Calls, FakeEngine
from helpers import MS, fake_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Server = Callable[..., Awaitable[TestClient[Any, Any]]]
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
         "eval_count", "eval_duration")


def build_app(settings: Settings, calls: Calls, delay_ms: float) -> web.Application:
    app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS, calls))
    return app


@pytest.fixture
def server(aiohttp_client: ClientFactory, calls: Calls) -> Server:
    async def make(delay_ms: float = 1, **limits: Any) -> TestClient[Any, Any]:
        settings = fake_settings(limits=replace(LimitSettings(), **limits))  # served as "m"
        return await aiohttp_client(build_app(settings, calls, delay_ms))
    return make


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


async def read_ndjson(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Parse the body line by line, as an NDJSON client does."""
    lines = []
    while line := await resp.content.readline():
        assert line.endswith(b"\n"), "every object ends with a newline"
        lines.append(json.loads(line))
    return lines


async def wait_for(predicate: Callable[[], bool], timeout: float = 3000 * MS) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(5 * MS)


def check_final(final: dict[str, Any], reason: str) -> None:
    assert final["done"] is True and final["done_reason"] == reason
    assert CREATED_AT.match(final["created_at"])
    for name in STATS:
        assert type(final[name]) is int and final[name] >= 0, name


async def test_chat_streams_ndjson(server: Server) -> None:
    client = await server()
    resp = await client.post("/api/chat", json=chat_body("one two three"))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    lines = await read_ndjson(resp)
    *pieces, final = lines
    assert [p["message"]["content"] for p in pieces] == ["one ", "two ", "three "]
    for piece in pieces:
        assert piece["done"] is False and piece["model"] == "m"
        assert piece["message"]["role"] == "assistant"
        assert CREATED_AT.match(piece["created_at"])
    assert final["message"] == {"role": "assistant", "content": ""}
    check_final(final, "stop")
    assert final["eval_count"] == 3 and final["prompt_eval_count"] == 3
    assert final["total_duration"] > 0


async def test_chat_not_streaming(server: Server, calls: Calls) -> None:
    client = await server()
    resp = await client.post("/api/chat", json=chat_body("a b", stream=False, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"}]))
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["message"] == {"role": "assistant", "content": "a b "}
    check_final(body, "stop")
    assert [m.role for m in calls.jobs[0].messages] == ["system", "user"]


async def test_num_predict_gives_length(server: Server, calls: Calls) -> None:
    client = await server()
    body = chat_body("a b c d e", options={"num_predict": 2}, stream=False)
    final = await (await client.post("/api/chat", json=body)).json()
    assert final["message"]["content"] == "a b " and final["eval_count"] == 2
    check_final(final, "length")
    for value, expected in ((-1, 512), (-2, 512), (10**9, 4096)):
        body = chat_body("x", options={"num_predict": value}, stream=False)
        assert (await client.post("/api/chat", json=body)).status == 200
        assert calls.jobs[-1].sampling.max_tokens == expected  # default, or clamped to cap


async def test_options_reach_the_job(server: Server, calls: Calls) -> None:
    client = await server()
    options = {"temperature": 0.2, "top_p": 0.5, "top_k": 40.0, "repeat_penalty": 1.3,
               "frequency_penalty": 0.1, "presence_penalty": 0.2, "stop": ["END", ""],
               "seed": 7, "num_ctx": 8192, "mirostat": 0, "num_thread": 4}
    body = chat_body("x", options=options, format="json", tools=[], keep_alive="5m",
                     think=False, stream=False)
    assert (await client.post("/api/chat", json=body)).status == 200
    s = calls.jobs[0].sampling
    assert (s.temperature, s.top_p, s.top_k, s.repeat_penalty) == (0.2, 0.5, 40, 1.3)
    assert (s.frequency_penalty, s.presence_penalty, s.stop) == (0.1, 0.2, ("END",))


async def test_generate_streams_and_uses_system(server: Server, calls: Calls) -> None:
    client = await server()
    resp = await client.post("/api/generate", json={"model": "m", "prompt": "hi there",
                                                    "system": "sys", "raw": True})
    *pieces, final = await read_ndjson(resp)
    assert "".join(p["response"] for p in pieces) == "hi there "
    assert final["response"] == "" and "message" not in final
    check_final(final, "stop")
    job = calls.jobs[0]
    assert job.instructions == "sys" and job.messages[0].text == "hi there"
    body = await (await client.post("/api/generate", json={"prompt": "x y",
                                                           "stream": False})).json()
    assert body["response"] == "x y " and body["model"] == "m"  # the default model
    check_final(body, "stop")


async def test_empty_requests_get_the_load_answer(server: Server, calls: Calls) -> None:
    client = await server()
    for path, body in (("/api/generate", {"model": "m"}), ("/api/chat", {"model": "m"}),
                       ("/api/chat", {"model": "m", "messages": []})):
        resp = await client.post(path, json=body)
        answer = await resp.json()
        assert resp.status == 200 and answer["done"] is True
        assert answer["done_reason"] == "load" and answer["model"] == "m"
    unload = await (await client.post("/api/generate", json={"keep_alive": 0})).json()
    assert unload["done_reason"] == "unload" and unload["response"] == ""
    assert calls.jobs == []


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/api/chat", b"{not json", "not valid JSON"),
    ("/api/chat", b"", "empty"),
    ("/api/chat", b"[1, 2]", "JSON object"),
    ("/api/chat", {"messages": "hi"}, "messages must be a list, not a string"),
    ("/api/chat", {"messages": ["hi"]}, "messages[0] must be an object"),
    ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("/api/chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/api/chat", {"model": 3, "messages": []}, "model must be a string"),
    ("/api/chat", chat_body("x", stream="yes"), "stream must be true or false"),
    ("/api/chat", chat_body("x", options=[1]), "options must be an object"),
    ("/api/chat", chat_body("x", options={"temperature": "hot"}), "options.temperature"),
    ("/api/chat", chat_body("x", options={"temperature": 99}), "out of range"),
    ("/api/chat", chat_body("x", options={"top_k": 1.5}), "options.top_k"),
    ("/api/chat", chat_body("x", options={"num_predict": 0}),
     "options.num_predict = 0 is out of range [1, inf]"),
    ("/api/chat", chat_body("x", options={"seed": "s"}), "options.seed"),
    ("/api/chat", chat_body("x", options={"stop": [1]}), "options.stop"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
     "not valid base64"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": "abc"}]},
     "images must be a list"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x",
                                 "images": [base64.b64encode(b"img").decode()]}]},
     "no vision encoder"),
    ("/api/generate", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("/api/generate", {"prompt": ["x"]}, "prompt must be a string"),
    ("/api/generate", {"prompt": "x", "images": [""]}, "images[0]"),
])
async def test_bad_requests_are_400(server: Server, calls: Calls, path: str,
                                    body: Any, fragment: str) -> None:
    client = await server()
    if isinstance(body, bytes):
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    else:
        resp = await client.post(path, json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert isinstance(error, str) and fragment in error
    assert calls.jobs == []


async def test_too_large_is_413(server: Server) -> None:
    client = await server(max_message_bytes=1024)
    resp = await client.post("/api/chat", json=chat_body("x" * 2000))
    assert resp.status == 413 and "larger than this server's limit" in (await resp.json())["error"]


async def test_queue_full_is_429(server: Server) -> None:
    client = await server(delay_ms=50, max_queue=0)
    first = await client.post("/api/chat", json=chat_body("a b c d"))
    resp = await client.post("/api/chat", json=chat_body("x", stream=False))
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert "queue is full" in (await resp.json())["error"]
    assert (await read_ndjson(first))[-1]["done"] is True


async def test_failure_before_and_after_the_first_piece(server: Server) -> None:
    client = await server()
    resp = await client.post("/api/chat", json=chat_body("FAIL now"))
    assert resp.status == 500 and (await resp.json()) == {"error": "injected"}
    resp = await client.post("/api/generate", json={"prompt": "a b FAIL"})
    assert resp.status == 200
    lines = await read_ndjson(resp)
    assert [line.get("response") for line in lines[:2]] == ["a ", "b "]
    assert lines[-1] == {"error": "injected"}


async def test_disconnect_cancels_streaming(server: Server, calls: Calls) -> None:
    client = await server(delay_ms=20)
    resp = await client.post("/api/chat", json=chat_body(" ".join(["w"] * 500)))
    assert json.loads(await resp.content.readline())["done"] is False
    resp.close()
    await wait_for(lambda: len(calls.cancels) == 1)
    assert calls.cancels[0].startswith("ollama-")


async def test_disconnect_cancels_before_any_answer(server: Server, calls: Calls) -> None:
    client = await server(delay_ms=20)
    body = {"prompt": " ".join(["w"] * 500), "stream": False}
    post = asyncio.create_task(client.post("/api/generate", json=body))
    await wait_for(lambda: len(calls.jobs) == 1)
    post.cancel()  # closes the connection while nothing has been answered yet
    await wait_for(lambda: len(calls.outcomes) == 1)
    rid = calls.jobs[0].request_id
    assert calls.cancels == [rid]
    # The run stopped early instead of producing all 500 words for nobody.
    outcome = calls.outcomes[rid]
    assert outcome.finish_reason == "cancelled" and outcome.output_tokens < 500
    assert post.cancelled()  # the client really left without an answer


def test_ndjson_escapes_what_splitlines_would_split() -> None:
    line = ndjson({"response": "a\u2028b\u2029c\x85d\u00e9\u4f60"})
    assert line.count(b"\n") == 1 and len(line.decode().splitlines()) == 1
    assert json.loads(line)["response"] == "a\u2028b\u2029c\x85d\u00e9\u4f60"
    assert "\u00e9\u4f60".encode() in line  # other text stays raw UTF-8, as Ollama sends it


async def test_model_endpoints(server: Server) -> None:
    client = await server()
    assert await (await client.get("/api/version")).json() == {"version": "0.6.0",
                                                               "rkstream": __version__}
    [model] = (await (await client.get("/api/tags")).json())["models"]
    assert set(model) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert model["name"] == model["model"] == "m"
    assert len(model["digest"]) == 64 and model["size"] == 0  # m.gguf is not there
    assert CREATED_AT.match(model["modified_at"])
    assert set(model["details"]) >= {"format", "family", "parameter_size",
                                     "quantization_level"}
    shown = await (await client.post("/api/show", json={"name": "m"})).json()  # old spelling
    info = shown["model_info"]
    assert info["rkstream.engine"] == "fake" and info["rkstream.loaded"] is True
    assert info[f"{info['general.architecture']}.context_length"] == 1024
    assert shown["capabilities"] == ["completion"]
    tagged = await (await client.post("/api/show", json={"model": "M:latest"})).json()
    assert tagged["model_info"] == info  # the name matches ignoring case and ":latest"
    resp = await client.post("/api/show", json={"model": 5})
    assert resp.status == 400 and "model" in (await resp.json())["error"]
    resp = await client.post("/api/show", json={"model": "llama3.2"})
    assert resp.status == 404 and "'llama3.2' not found" in (await resp.json())["error"]
    [running] = (await (await client.get("/api/ps")).json())["models"]
    assert running["size_vram"] == 0 and running["expires_at"].startswith("9999")
    assert running["context_length"] == 1024
