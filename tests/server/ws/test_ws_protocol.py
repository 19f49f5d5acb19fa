"""Protocol v1 over a real socket, with the recording fake engine.

These check the contract a client relies on; tests/server/test_ws_standin.py
runs the same path through the real ctypes binding and the stand-in runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import LimitSettings, Settings
from rkstream.server.app import make_app

from fakes import Calls, FakeEngine
from helpers import MS, WSClient, create, fake_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def make_server(aiohttp_client: ClientFactory, calls: Calls
                ) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(delay_ms: float = 1, **limits: Any) -> TestClient[Any, Any]:
        settings = fake_settings(limits=replace(LimitSettings(), **limits))  # served as "m"
        app = make_app(settings, lambda s: FakeEngine(s, delay_ms * MS, calls))
        return await aiohttp_client(app)
    return make


async def connect(client: TestClient[Any, Any], protocols: tuple[str, ...] = ()
                  ) -> WSClient:
    ws = await client.ws_connect("/ws", protocols=protocols)
    encoding = "json" if ws.protocol == "rkstream.v1+json" else "msgpack"
    conn = WSClient(ws, encoding)
    created = await conn.recv()
    assert created["type"] == "session.created"
    return conn


async def test_session_created_announces_limits(make_server: Any) -> None:
    client = await make_server(max_queue=7)
    ws = await client.ws_connect("/ws")
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.BINARY
    event = msgpack.unpackb(msg.data)
    assert event["type"] == "session.created"
    assert event["protocol"] == "rkstream.v1"
    assert event["server"]["name"] == "rkstream"
    model = event["model"]  # the default model, under the name it is served as
    assert model["id"] == "m" and model["engine"] == "fake" and model["vision"] is False
    assert model["loaded"] is True and model["default"] is True
    assert event["models"] == [model]  # every served model
    assert event["limits"]["max_queue"] == 7
    assert event["limits"]["max_message_bytes"] == Settings().limits.max_message_bytes


async def test_stream_and_done_json_subprotocol(make_server: Any) -> None:
    client = await make_server()
    conn = await connect(client, ("rkstream.v1+json",))
    assert conn.encoding == "json"
    await conn.send(create("a", "one two three", event_id="e1"))
    created = await conn.recv()
    assert created == {"type": "response.created", "request_id": "a", "queue_position": 0}
    done = (await conn.until_done({"a"}))["a"]
    assert conn.text("a") == "one two three "
    assert done["status"] == "completed" and done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 3, "output_tokens": 3}
    assert done["model"] == "m"
    assert set(done["timings"]) == {"load_ms", "queued_ms", "vision_ms", "prompt_n", "cache_n",
                                    "prompt_ms", "predicted_n", "predicted_ms",
                                    "predicted_per_second", "ttft_ms", "total_ms"}
    assert done["timings"]["load_ms"] == 0.0  # the model was loaded
    assert not any(e["type"].startswith("model.") for e in conn.events)  # no load events
    assert "text" not in done


async def test_stream_false_gives_text_in_done(make_server: Any) -> None:
    conn = await connect(await make_server())
    await conn.send(create("a", "x y", stream=False))
    done = (await conn.until_done({"a"}))["a"]
    assert conn.deltas("a") == [] and done["text"] == "x y "


async def test_max_tokens_gives_incomplete(make_server: Any) -> None:
    conn = await connect(await make_server())
    await conn.send(create("a", "1 2 3 4 5", params={"max_tokens": 2}))
    done = (await conn.until_done({"a"}))["a"]
    assert conn.text("a") == "1 2 "
    assert done["status"] == "incomplete" and done["finish_reason"] == "length"


async def test_multiplexed_requests_and_cancel(make_server: Any, calls: Calls) -> None:
    conn = await connect(await make_server(delay_ms=20))
    await conn.send(create("long", "w " * 200))
    await conn.send(create("short", "s t"))
    await conn.recv_type("response.output_text.delta")
    await conn.send({"type": "response.cancel", "request_id": "long"})
    done = await conn.until_done({"long", "short"})
    assert done["long"]["status"] == "cancelled"
    assert done["long"]["finish_reason"] == "cancelled"
    assert done["short"]["status"] == "completed"
    assert conn.text("short") == "s t "
    assert calls.cancels == ["long"]
    # Nothing for a request after its response.done.
    last = max(i for i, e in enumerate(conn.events) if e.get("request_id") == "long")
    assert conn.events[last]["type"] == "response.done"


async def test_cancel_unknown_is_an_error(make_server: Any) -> None:
    conn = await connect(await make_server())
    await conn.send({"type": "response.cancel", "request_id": "nope", "event_id": "c1"})
    error = await conn.recv()
    assert error["type"] == "error" and error["request_id"] == "nope"
    assert error["error"]["code"] == "unknown_request"
    assert error["error"]["event_id"] == "c1"


async def test_session_update(make_server: Any, calls: Calls) -> None:
    conn = await connect(await make_server())
    await conn.send({"type": "session.update",
                     "session": {"instructions": "be brief", "params": {"max_tokens": 1}}})
    updated = await conn.recv()
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "be brief"
    assert updated["session"]["model"] == "m"  # the default model
    assert updated["session"]["params"]["max_tokens"] == 1
    assert updated["session"]["params"]["temperature"] == Settings().sampling.temperature
    await conn.send(create("a", "x y z"))
    done = (await conn.until_done({"a"}))["a"]
    assert done["finish_reason"] == "length"
    assert calls.jobs[-1].instructions == "be brief"
    assert calls.jobs[-1].sampling.max_tokens == 1


async def test_ping(make_server: Any) -> None:
    conn = await connect(await make_server())
    await conn.send({"type": "ping"})
    assert await conn.recv() == {"type": "pong"}


async def test_queue_full_fails_at_once(make_server: Any) -> None:
    conn = await connect(await make_server(delay_ms=50, max_queue=1))
    for rid in ("a", "b", "c"):
        await conn.send(create(rid, "w " * 20))
    events = [await conn.recv() for _ in range(4)]
    assert [e["type"] for e in events] == ["response.created", "response.started",
                                           "response.created", "response.done"]
    assert events[2]["queue_position"] == 0
    refused = events[3]
    assert refused["request_id"] == "c" and refused["status"] == "failed"
    assert refused["error"]["code"] == "queue_full"
    await conn.send({"type": "response.cancel", "request_id": "a"})
    await conn.send({"type": "response.cancel", "request_id": "b"})
    await conn.until_done({"a", "b"})


async def test_inflight_limit(make_server: Any) -> None:
    conn = await connect(await make_server(delay_ms=50, max_inflight_per_connection=1))
    await conn.send(create("a", "w " * 20))
    await conn.send(create("b", "x"))
    await conn.recv_type("response.created")
    refused = await conn.recv_type("response.done")
    assert refused["request_id"] == "b" and refused["error"]["code"] == "too_many_requests"


async def test_three_clients_served_in_arrival_order(make_server: Any, calls: Calls) -> None:
    client = await make_server(delay_ms=10)
    conns = [await connect(client) for _ in range(3)]
    for i, conn in enumerate(conns):
        await conn.send(create(f"c{i}", "a b c"))
        await conn.recv_type("response.created")
    for i, conn in enumerate(conns):
        await conn.until_done({f"c{i}"})
    assert calls.finished == ["c0", "c1", "c2"]
    assert calls.overlaps == 0


@pytest.mark.parametrize("payload, code", [
    (b"\xc1\xc1", "invalid_encoding"),
    (msgpack.packb([1, 2]), "invalid_event"),
    (msgpack.packb({"type": "launch"}), "unknown_event"),
    (msgpack.packb({"type": "response.create", "input": []}), "missing_field"),
    (msgpack.packb({"type": "response.create", "request_id": 5, "input": []}),
     "invalid_field"),
    ("{not json", "invalid_encoding"),
    ('"a string"', "invalid_event"),
])
async def test_malformed_input_keeps_serving(make_server: Any, payload: bytes | str,
                                             code: str) -> None:
    conn = await connect(await make_server())
    if isinstance(payload, str):
        await conn.ws.send_str(payload)
    else:
        await conn.ws.send_bytes(payload)
    error = await conn.recv()
    assert error["type"] == "error" and error["error"]["code"] == code
    assert error["error"]["message"]
    await conn.send(create("ok", "still here"))
    await conn.until_done({"ok"})
    assert conn.text("ok") == "still here "


@pytest.mark.parametrize("event, code", [
    (create("x", "hi", params={"temp": 1}), "unknown_param"),
    (create("x", "hi", params={"max_tokens": "many"}), "invalid_field"),
    (create("x", "hi", params={"max_tokens": 10**6}), "invalid_param"),
    (create("x", "hi", stream=1), "invalid_field"),
    ({"type": "response.create", "request_id": "x", "input": [{"role": "user"}]},
     "missing_field"),
])
async def test_bad_create_gets_error_and_failed_done(make_server: Any, calls: Calls,
                                                     event: dict[str, Any], code: str) -> None:
    conn = await connect(await make_server())
    await conn.send(event)
    error = await conn.recv()
    assert error["type"] == "error" and error["request_id"] == "x"
    assert error["error"]["code"] == code
    done = await conn.recv()
    assert done["type"] == "response.done" and done["status"] == "failed"
    assert done["error"]["code"] == code
    assert calls.jobs == []


async def test_duplicate_request_id(make_server: Any) -> None:
    conn = await connect(await make_server(delay_ms=20))
    await conn.send(create("a", "w " * 10))
    await conn.send(create("a", "again"))
    error = await conn.recv_type("error")
    assert error["error"]["code"] == "duplicate_request_id" and error["request_id"] == "a"
    done = await conn.until_done({"a"})
    assert done["a"]["status"] == "completed"  # the first request is untouched
    assert conn.text("a") == "w " * 10


async def test_images_before_vision_exists(make_server: Any) -> None:
    conn = await connect(await make_server())
    await conn.send(create("a", "hi", input=[{"role": "user", "content": [
        {"type": "image", "data": b"\xff\xd8\xff"}, {"type": "text", "text": "what?"}]}]))
    done = await conn.recv()
    assert done["type"] == "response.done" and done["error"]["code"] == "vision_unavailable"
    await conn.send({"type": "image.upload", "data": b"x"})
    error = await conn.recv()
    assert error["type"] == "error" and error["error"]["code"] == "vision_unavailable"
    await conn.send({"type": "frame.append", "stream": "cam", "seq": 0, "data": b"x"})
    assert (await conn.recv())["error"]["code"] == "vision_unavailable"


async def test_oversize_message_closes_with_1009(make_server: Any) -> None:
    client = await make_server(max_message_bytes=4096)
    conn = await connect(client)
    await conn.send({"type": "image.upload", "data": b"x" * 10000})
    msg = await conn.ws.receive(timeout=5000 * MS)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING)
    assert conn.ws.close_code == 1009
    other = await connect(client)  # the server keeps serving everyone else
    await other.send(create("a", "fine"))
    await other.until_done({"a"})


async def test_disconnect_cancels_requests(make_server: Any, calls: Calls) -> None:
    client = await make_server(delay_ms=20)
    conn = await connect(client)
    await conn.send(create("run", "w " * 100))
    await conn.send(create("wait", "x"))
    await conn.recv_type("response.output_text.delta")
    await conn.ws.close()
    for _ in range(100):
        if "run" in calls.finished:
            break
        await asyncio.sleep(10 * MS)
    assert calls.cancels == ["run"]
    assert [j.request_id for j in calls.jobs] == ["run"]  # the queued one never ran


async def test_shutdown_closes_with_1001(aiohttp_server: Any, calls: Calls) -> None:
    app = make_app(Settings(), lambda s: FakeEngine(s, 20 * MS, calls))
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.make_url("/ws"))
        conn = WSClient(ws)
        await conn.recv()
        await conn.send(create("a", "w " * 100))
        await conn.recv_type("response.output_text.delta")
        closing = asyncio.create_task(server.close())
        while True:
            msg = await ws.receive(timeout=5000 * MS)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        await closing
        assert ws.close_code == 1001
    assert set(calls.cancels) == {"a"} and calls.closes == 1


async def test_health(make_server: Any) -> None:
    client = await make_server()
    response = await client.get("/health")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"



async def test_health_while_loading_then_ready(aiohttp_client: ClientFactory) -> None:
    gate = asyncio.Event()

    class SlowEngine(FakeEngine):
        async def load(self) -> None:
            await gate.wait()

    app = make_app(Settings(), lambda s: SlowEngine(s), load_in_background=True)
    client = await aiohttp_client(app)
    loading = await client.get("/health")
    assert loading.status == 503 and (await loading.json())["status"] == "loading"
    assert (await client.get("/ws")).status == 503
    gate.set()
    for _ in range(100):
        ready = await client.get("/health")
        if ready.status == 200:
            break
        await asyncio.sleep(5 * MS)
    assert (await ready.json())["model"]["id"] == "fake"
    await connect(client)


async def test_a_message_of_exactly_the_limit_is_taken(make_server: Any) -> None:
    client = await make_server(max_message_bytes=4096)
    conn = await connect(client)
    bare = msgpack.packb({"type": "image.upload", "data": b""})
    padded = msgpack.packb({"type": "image.upload", "data": b"x" * (4096 - len(bare) - 1)})
    assert len(padded) == 4096
    await conn.ws.send_bytes(padded)
    # Read and refused as an event (no encoder here), not closed with 1009.
    assert (await conn.recv())["error"]["code"] == "vision_unavailable"
    await conn.send({"type": "ping"})
    assert (await conn.recv())["type"] == "pong"
