"""End to end: a protocol client, the aiohttp app, the RKLLM binding, the stand-in.

No fake in between: tokens are produced by native code on a native thread
and cross the ctypes callback, the owner thread and the loop bridge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import LimitSettings, RKLLMSettings, Settings
from rkstream.server.app import make_app

from conftest import ModelFactory, Records
from helpers import MS, WSClient, create

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture(params=["1.3", "1.2"])
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(aiohttp_client: ClientFactory, standin_libs: dict[str, Path],
           standin_model: ModelFactory, records: Records, line: str
           ) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(instances: int = 1, max_queue: int = 32, **keys: Any
                   ) -> TestClient[Any, Any]:
        model = standin_model(record=records.path, **keys)
        settings = replace(
            Settings(), instances=instances,
            rkllm=replace(RKLLMSettings(), library=str(standin_libs[line]), model=str(model),
                          runtime="auto"),
            limits=replace(LimitSettings(), max_queue=max_queue))
        return await aiohttp_client(make_app(settings))
    return make


async def connect(client: TestClient[Any, Any]) -> WSClient:
    conn = WSClient(await client.ws_connect("/ws"))
    created = await conn.recv()
    assert created["type"] == "session.created"
    return conn


async def test_stream_cjk_and_emoji(server: Any, line: str) -> None:
    reply = "你好，世界！🎉🚀 naïve café"
    conn = await connect(await server(reply=reply, token_bytes=1, waiting="repeat"))
    runtime = conn.events[0]["model"]["runtime"]
    assert runtime == ("1.3.0" if line == "1.3" else "1.2.3")
    await conn.send(create("a", "hi"))
    done = (await conn.until_done({"a"}))["a"]
    assert conn.text("a") == reply
    assert done["status"] == "completed"
    assert done["usage"]["output_tokens"] == len(reply.encode())
    assert done["timings"]["ttft_ms"] is not None


async def test_cancel_running_reaches_abort(server: Any, records: Records) -> None:
    conn = await connect(await server(token_delay_us=2000, n_tokens=100000, reply="w"))
    await conn.send(create("a", "go"))
    await conn.recv_type("response.output_text.delta")
    sent_ns = time.monotonic_ns()
    await conn.send({"type": "response.cancel", "request_id": "a"})
    done = (await conn.until_done({"a"}))["a"]
    assert done["status"] == "cancelled" and done["finish_reason"] == "cancelled"
    abort = records.all("abort")[0]
    assert abort["running"] and (abort["t_ns"] - sent_ns) / 1e6 < 50
    assert records.all("run_end")[0]["generated"] == done["usage"]["output_tokens"]
    assert conn.text("a") == "w" * done["usage"]["output_tokens"]


async def test_disconnect_aborts(server: Any, records: Records) -> None:
    client = await server(token_delay_us=2000, n_tokens=100000)
    conn = await connect(client)
    await conn.send(create("a", "go"))
    await conn.recv_type("response.output_text.delta")
    await conn.ws.close()
    for _ in range(200):
        if records.all("run_end"):
            break
        await asyncio.sleep(5 * MS)
    assert records.all("abort")[0]["running"]
    assert records.all("run_end")[0]["finish"] == "abort"
    other = await connect(client)  # the model is free for others
    await other.send(create("b", "next [[n_tokens=0]] [[token_delay_us=0]]"))
    await other.until_done({"b"})
    assert other.text("b") == "Echo: next"


async def test_three_clients_in_order_never_concurrent(server: Any, records: Records) -> None:
    client = await server(token_delay_us=1000)
    conns = [await connect(client) for _ in range(3)]
    for i, conn in enumerate(conns):
        await conn.send(create(f"c{i}", f"client {i}"))
        await conn.recv_type("response.created")
    for i, conn in enumerate(conns):
        await conn.until_done({f"c{i}"})
        assert conn.text(f"c{i}") == f"Echo: client {i}"
    runs = records.all("run")
    assert [r["prompt"] for r in runs] == ["client 0", "client 1", "client 2"]
    assert not any(r["concurrent"] for r in runs)
    ends = records.all("run_end")
    for run, end in zip(runs[1:], ends[:-1], strict=True):
        assert run["t_ns"] >= end["t_ns"]  # each run started after the previous ended


async def test_multiplex_two_requests_on_one_socket(server: Any) -> None:
    conn = await connect(await server(instances=2, token_delay_us=500))
    await conn.send(create("x", "first one"))
    await conn.send(create("y", "second one"))
    await conn.until_done({"x", "y"})
    assert conn.text("x") == "Echo: first one"
    assert conn.text("y") == "Echo: second one"


async def test_error_then_next_request_works(server: Any) -> None:
    conn = await connect(await server())
    await conn.send(create("bad", "a b c [[error_after=1]]"))
    done = (await conn.until_done({"bad"}))["bad"]
    assert done["status"] == "failed" and done["error"]["code"] == "runtime_error"
    await conn.send(create("good", "fine"))
    assert (await conn.until_done({"good"}))["good"]["status"] == "completed"
    assert conn.text("good") == "Echo: fine"


async def test_max_tokens_and_stop(server: Any) -> None:
    conn = await connect(await server(reply="alpha beta gamma delta"))
    await conn.send(create("len", "x", params={"max_tokens": 2}))
    await conn.send(create("stop", "x", params={"stop": ["gam"]}))
    done = await conn.until_done({"len", "stop"})
    assert conn.text("len") == "alpha beta "
    assert done["len"]["finish_reason"] == "length"
    assert conn.text("stop") == "alpha beta "
    assert done["stop"]["finish_reason"] == "stop"


async def test_queue_full_with_runtime(server: Any) -> None:
    conn = await connect(await server(max_queue=1, token_delay_us=5000, n_tokens=50))
    for rid in ("a", "b", "c"):
        await conn.send(create(rid, "x"))
    refused = await conn.recv_type("response.done")
    assert refused["request_id"] == "c" and refused["error"]["code"] == "queue_full"
    done = await conn.until_done({"a", "b"})
    assert [d["status"] for d in done.values()] == ["completed", "completed"]


async def test_malformed_input_with_runtime(server: Any) -> None:
    conn = await connect(await server())
    await conn.ws.send_bytes(b"\xc1")
    await conn.send({"type": "response.create", "input": []})
    await conn.send(create("p", "x", params={"nope": 1}))
    codes = [(await conn.recv_type("error"))["error"]["code"] for _ in range(3)]
    assert codes == ["invalid_encoding", "missing_field", "unknown_param"]
    await conn.send(create("ok", "still"))
    await conn.until_done({"ok"})
    assert conn.text("ok") == "Echo: still"


async def test_client_that_stops_reading_is_dropped(aiohttp_client: ClientFactory,
                                                    standin_libs: dict[str, Path],
                                                    standin_model: ModelFactory,
                                                    records: Records, line: str) -> None:
    model = standin_model(record=records.path, reply="x" * 4000, n_tokens=1_000_000)
    settings = replace(
        Settings(),
        rkllm=replace(RKLLMSettings(), library=str(standin_libs[line]), model=str(model),
                      max_new_tokens=100_000),
        server=replace(Settings().server, slow_client_timeout_s=0.5,
                       max_outbound_bytes=1 << 20),
        limits=replace(LimitSettings(), max_tokens=100_000))
    client = await aiohttp_client(make_app(settings))
    stalled = WSClient(await client.ws_connect("/ws"))
    await stalled.recv()
    await stalled.send(create("flood", "go", params={"max_tokens": 100_000}))
    # Never read again: the server must drop this client and abort its run.
    for _ in range(400):
        if records.all("run_end"):
            break
        await asyncio.sleep(25 * MS)
    end = records.all("run_end")[0]
    assert end["finish"] == "abort" and end["generated"] < 100_000
    other = await connect(client)  # everyone else is still served
    await other.send(create("b", "hi [[n_tokens=1]] [[reply=ok]]"))
    await other.until_done({"b"})
    assert other.text("b") == "ok"
