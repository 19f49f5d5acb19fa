"""POST /rkllm_chat, the official rknn-llm 1.2.x server demo's API.

The client in :func:`demo_client` is written from the demo's own client logic
(chat_api_flask.py, as described in docs/http_apis.md): POST with
``stream=True``, read non-empty lines, ``json.loads`` each, print
``choices[-1].delta.content`` while ``finish_reason != "stop"``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rkstream.config import LimitSettings, RKLLMSettings, Settings
from rkstream.server.app import make_app

from conftest import ModelFactory
from fakes import Calls, FakeEngine
from helpers import MS

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Server = Callable[..., Awaitable[TestClient[Any, Any]]]


def fake_app(calls: Calls, delay_ms: float = 1, **limits: Any) -> web.Application:
    settings = replace(Settings(), limits=replace(LimitSettings(), **limits))
    app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS, calls))
    return app


@pytest.fixture
def server(aiohttp_client: ClientFactory, calls: Calls) -> Server:
    async def make(delay_ms: float = 1, **limits: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(fake_app(calls, delay_ms, **limits))
    return make


def body(text: str, **extra: Any) -> dict[str, Any]:
    # What the demo's client sends.
    return {"model": "your_model_deploy_with_RKLLM_Server",
            "messages": [{"role": "user", "content": text}], "stream": True,
            "enable_thinking": False, "tools": None, **extra}


def demo_client(url: str, data: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The demo client's streaming loop; returns the printed text and every frame."""
    printed, frames = "", []
    with httpx.stream("POST", url, json=data, headers={"Authorization": "not_required"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line:
                frame = json.loads(line)
                frames.append(frame)
                if frame["choices"][-1]["finish_reason"] != "stop":
                    printed += frame["choices"][-1]["delta"]["content"]
    return printed, frames


def check_frame(frame: dict[str, Any]) -> None:
    assert frame["id"] == "rkllm_chat" and frame["object"] == "rkllm_chat"
    assert isinstance(frame["created"], int)
    [choice] = frame["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None


async def test_not_streaming(server: Server, calls: Calls) -> None:
    client = await server()
    resp = await client.post("/rkllm_chat", json=body("one two", stream=False))
    assert resp.status == 200 and resp.content_type == "application/json"
    answer = await resp.json()
    check_frame(answer)
    assert answer["choices"][-1]["message"] == {"role": "assistant", "content": "one two "}
    assert answer["choices"][-1]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4,
                               "prompt_tokens_details": {"cached_tokens": 0}}
    # stream defaults to false, as in the demo
    resp = await client.post("/rkllm_chat", json={"messages": [{"role": "user",
                                                                 "content": "x"}]})
    assert (await resp.json())["choices"][0]["message"]["content"] == "x "


async def test_stream_frames(server: Server, calls: Calls) -> None:
    client = await server()
    resp = await client.post("/rkllm_chat", json=body("one two three"))
    assert resp.status == 200 and resp.content_type == "text/plain"
    raw = await resp.text()
    assert raw.endswith("}\n\n") and "data:" not in raw
    frames = [json.loads(chunk) for chunk in raw.split("\n\n") if chunk]
    for frame in frames:
        check_frame(frame)
        assert frame["choices"][0]["delta"]["role"] == "assistant"
    assert [f["choices"][0]["delta"]["content"] for f in frames] == ["one ", "two ",
                                                                     "three ", ""]
    assert [f["choices"][0]["finish_reason"] for f in frames] == [None, None, None, "stop"]
    assert frames[0]["usage"]["total_tokens"] is None
    assert frames[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                   "total_tokens": 6,
                                   "prompt_tokens_details": {"cached_tokens": 0}}


async def test_demo_client_over_a_socket(aiohttp_server: Callable[..., Awaitable[TestServer]],
                                         calls: Calls) -> None:
    server = await aiohttp_server(fake_app(calls), host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/rkllm_chat"
    printed, frames = await asyncio.to_thread(demo_client, url, body("hello from the demo"))
    assert printed == "hello from the demo "
    assert frames[-1]["choices"][-1]["finish_reason"] == "stop"


async def test_demo_client_with_the_standin(
        aiohttp_server: Callable[..., Awaitable[TestServer]], standin_libs: dict[str, Path],
        standin_model: ModelFactory) -> None:
    model = standin_model(token_bytes=1, waiting="repeat")
    settings = replace(Settings(), engine="rkllm", rkllm=replace(
        RKLLMSettings(), library=str(standin_libs["1.2"]), model=str(model)))
    app = make_app(settings)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/rkllm_chat"
    reply = "你好\u2028世界\u2029🎉\x85naïve\nnext line"
    printed, frames = await asyncio.to_thread(demo_client, url, body(f"[[reply={reply}]]"))
    assert printed == reply  # U+2028 and friends are escaped, so no frame is cut
    assert frames[-1]["usage"]["completion_tokens"] == len(reply.encode())


async def test_length_and_sampling(server: Server, calls: Calls) -> None:
    client = await server()
    resp = await client.post("/rkllm_chat", json=body(
        "a b c d", stream=False, max_tokens=2, temperature=0.3, top_p=0.7, top_k=5,
        repeat_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.4))
    answer = await resp.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["choices"][0]["message"]["content"] == "a b "
    s = calls.jobs[0].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k) == (2, 0.3, 0.7, 5)
    assert (s.repeat_penalty, s.frequency_penalty, s.presence_penalty) == (1.2, 0.5, 0.4)


async def test_whole_conversation_and_parts(server: Server, calls: Calls) -> None:
    client = await server()
    messages = [{"role": "system", "content": "be kind"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "two "},
                                             {"type": "text", "text": "parts"},
                                             {"type": "audio", "audio": "skipped"}]}]
    resp = await client.post("/rkllm_chat", json={"messages": messages})
    assert (await resp.json())["choices"][0]["message"]["content"] == "two parts "
    job = calls.jobs[0]
    assert [m.role for m in job.messages] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize(("payload", "fragment"), [
    (b"{oops", "not valid JSON"),
    (b"", "empty"),
    ({"model": "m"}, "messages is required"),
    ({"messages": []}, "messages must hold at least one message"),
    ({"messages": "hi"}, "messages must be a list, not a string"),
    ({"messages": [["user", "hi"]]}, "messages[0] must be an object"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": "http://x/y.png"}]}]},
     "data URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,AAAA"}}]}]}, "no vision encoder"),
    (body("x", stream="yes"), "stream must be true or false"),
    (body("x", temperature="warm"), "temperature must be a number"),
    (body("x", max_tokens=0), "max_tokens = 0 is out of range [1, inf]"),
])
async def test_bad_requests(server: Server, calls: Calls, payload: Any,
                            fragment: str) -> None:
    client = await server()
    if isinstance(payload, bytes):
        resp = await client.post("/rkllm_chat", data=payload)
    else:
        resp = await client.post("/rkllm_chat", json=payload)
    assert resp.status == 400
    answer = await resp.json()
    assert answer["status"] == "error" and fragment in answer["message"]
    assert calls.jobs == []


async def test_busy_is_503(server: Server) -> None:
    client = await server(delay_ms=50, max_queue=0)
    first = await client.post("/rkllm_chat", json=body("a b c d"))
    resp = await client.post("/rkllm_chat", json=body("x"))
    assert resp.status == 503
    answer = await resp.json()
    assert answer["status"] == "error" and "queue is full" in answer["message"]
    assert (await first.text()).endswith("\n\n")


async def test_failures(server: Server) -> None:
    client = await server()
    resp = await client.post("/rkllm_chat", json=body("FAIL"))
    assert resp.status == 500
    assert await resp.json() == {"status": "error", "message": "injected"}
    resp = await client.post("/rkllm_chat", json=body("a FAIL"))
    frames = [json.loads(c) for c in (await resp.text()).split("\n\n") if c]
    assert frames[0]["choices"][0]["delta"]["content"] == "a "
    last = frames[-1]
    check_frame(last)
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["status"] == "error" and last["message"] == "injected"


async def test_disconnect_cancels(server: Server, calls: Calls) -> None:
    client = await server(delay_ms=20)
    resp = await client.post("/rkllm_chat", json=body(" ".join(["w"] * 500)))
    assert json.loads(await resp.content.readline())["choices"][0]["delta"]["content"]
    resp.close()
    deadline = asyncio.get_running_loop().time() + 3000 * MS
    while not calls.cancels:
        assert asyncio.get_running_loop().time() < deadline, "not cancelled"
        await asyncio.sleep(5 * MS)
    assert calls.cancels[0].startswith("rkllm_chat-")

