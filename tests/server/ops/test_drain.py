"""The graceful drain: /health 503 draining while everything is still served,
then new work refused while open requests finish, then what is left cancelled
with shutting_down; POST /admin/drain starts it, guarded by the API key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from unittest import mock

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, make_mocked_request
from yarl import URL

from rkstream.config import ServerSettings, Settings
from rkstream.errors import RequestError
from rkstream.server.app import make_app
from rkstream.server.ops.drain import ON_STOPPED, admin_drain
from rkstream.server.state import STATE

from fakes import FakeEngine
from helpers import MS, WSClient, create, eventually, fake_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
CHAT = "/v1/chat/completions"


def settings(**server: Any) -> Settings:
    return fake_settings(server=replace(ServerSettings(), id="board-1", **server))


async def serve(aiohttp_client: ClientFactory, delay_s: float = 0.0, **server: Any
                ) -> tuple[TestClient[Any, Any], list[str]]:
    """A server on the fake engine; the list records when its drain has ended."""
    config = settings(**server)
    app = make_app(config, lambda s: FakeEngine(s, delay_s))
    stopped: list[str] = []
    app[ON_STOPPED] = lambda: stopped.append("stopped")
    return await aiohttp_client(app), stopped


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


async def health(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health")
    return response.status, await response.json()


async def test_draining_is_503_on_health_while_every_request_is_still_served(
        aiohttp_client: ClientFactory) -> None:
    client, stopped = await serve(aiohttp_client, drain_s=600 * MS)
    status, body = await health(client)
    assert status == 200 and body["phase"] == "serving" and body["server"] == "board-1"
    response = await client.post("/admin/drain")
    assert response.status == 202
    assert await response.json() == {"status": "draining", "started": True,
                                     "server": "board-1", "drain_s": 600 * MS,
                                     "shutdown_timeout_s": 5.0}
    status, body = await health(client)
    assert status == 503 and body["status"] == "draining" and body["phase"] == "draining"
    assert "stops taking requests in" in body["reason"]
    assert body["drain"]["drain_s"] == 600 * MS and "model" in body  # the models still shown
    # A balancer that has not noticed yet still gets answers, WebSockets too.
    answer = await client.post(CHAT, json=chat("still served"))
    assert answer.status == 200
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv_type("session.created")
    await conn.send(create("r1", "on a socket too"))
    assert (await conn.until_done({"r1"}))["r1"]["status"] == "completed"
    again = await client.post("/admin/drain", json={})
    assert again.status == 202 and (await again.json())["started"] is False
    metrics = await (await client.get("/metrics")).text()
    assert 'rkstream_server_state{state="draining"} 1.0' in metrics
    assert 'rkstream_server_info{id="board-1"' in metrics
    await eventually(lambda: stopped)
    assert stopped == ["stopped"]
    status, body = await health(client)
    assert status == 503 and body["status"] == "shutting_down" and body["phase"] == "stopping"
    refused = await client.post(CHAT, json=chat("too late"))
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "shutting_down"
    upgrade = await client.get("/ws")
    assert upgrade.status == 503


async def test_stopping_lets_open_requests_finish_and_refuses_new_ones(
        aiohttp_client: ClientFactory) -> None:
    client, stopped = await serve(aiohttp_client, delay_s=40 * MS, drain_s=0)
    busy = WSClient(await client.ws_connect("/ws"))
    await busy.recv_type("session.created")
    idle = await client.ws_connect("/ws")
    await busy.send(create("long", "one two three four five six seven eight"))
    await busy.recv_type("response.created")
    stream = await client.post(CHAT, json=chat("a b c d e f", stream=True))
    assert stream.status == 200
    await client.post("/admin/drain")
    await eventually(lambda: client.app[STATE].phase == "stopping")
    # The idle socket is closed at once, with 1001: its client reconnects elsewhere.
    while (message := await idle.receive(timeout=2000 * MS)).type != WSMsgType.CLOSE:
        pass
    assert message.data == 1001
    await busy.send(create("late", "refused"))
    done = await busy.until_done({"long", "late"})
    assert done["late"]["status"] == "failed"
    assert done["late"]["error"]["code"] == "shutting_down"
    assert "new connection" in done["late"]["error"]["message"]
    assert done["long"]["status"] == "completed"  # finished, not cancelled
    assert busy.text("long") == "one two three four five six seven eight "
    text = await stream.text()
    assert "f " in text and text.rstrip().endswith("data: [DONE]")
    closed = await busy.ws.receive(timeout=2000 * MS)
    assert closed.type == WSMsgType.CLOSE and closed.data == 1001
    await eventually(lambda: stopped)
    assert stopped == ["stopped"]


async def test_what_outlives_the_timeout_is_cancelled_with_shutting_down(
        aiohttp_client: ClientFactory) -> None:
    client, stopped = await serve(aiohttp_client, delay_s=500 * MS, drain_s=0,
                                  shutdown_timeout_s=300 * MS)
    conn = WSClient(await client.ws_connect("/ws"))
    await conn.recv_type("session.created")
    await conn.send(create("slow", "one two three four five six"))
    await conn.recv_type("response.created")
    stream = await client.post(CHAT, json=chat("x y z w v u", stream=True))
    assert stream.status == 200
    await client.post("/admin/drain")
    done = (await conn.until_done({"slow"}))["slow"]
    assert done["status"] == "cancelled" and done["error"]["code"] == "shutting_down"
    text = await stream.text()
    assert '"shutting_down"' in text  # the stream ends with the error, in OpenAI's shape
    await eventually(lambda: stopped)
    assert stopped == ["stopped"]


async def test_admin_drain_needs_the_key_when_keys_are_set(aiohttp_client: ClientFactory
                                                          ) -> None:
    client, _ = await serve(aiohttp_client, drain_s=60, api_keys="k1")
    response = await client.post("/admin/drain")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "invalid_api_key"
    response = await client.post("/admin/drain", headers={"Authorization": "Bearer k1"})
    assert response.status == 202 and (await response.json())["status"] == "draining"


async def test_an_encoded_admin_path_is_refused(aiohttp_client: ClientFactory) -> None:
    # A balancer's deny rule on the raw path would not see it as /admin/.
    client, _ = await serve(aiohttp_client, drain_s=60, api_keys="k1")
    response = await client.post(URL("/%61dmin/drain", encoded=True),
                                 headers={"Authorization": "Bearer k1"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "admin_forbidden"
    assert client.app[STATE].phase == "serving"


def _remote(app: web.Application, address: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = \
        lambda name, default=None: (address, 40000) if name == "peername" else default
    return make_mocked_request("POST", "/admin/drain", app=app, transport=transport)


async def test_without_keys_only_the_loopback_may_drain() -> None:
    app = make_app(settings(drain_s=60), lambda s: FakeEngine(s))
    try:
        await admin_drain(_remote(app, "192.168.1.20"))
    except RequestError as exc:
        assert exc.code == "admin_forbidden" and exc.spec.status == 403
        assert "loopback" in exc.message and "192.168.1.20" in exc.message
    else:
        raise AssertionError("a drain from another machine was taken without a key")
    assert app[STATE].phase == "serving"


async def test_admin_drain_refuses_fields_and_other_methods(aiohttp_client: ClientFactory
                                                           ) -> None:
    client, _ = await serve(aiohttp_client, drain_s=60)
    response = await client.post("/admin/drain", json={"now": True})
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "unknown_field"
    response = await client.post("/admin/drain", data=b"{not json")
    assert (await response.json())["error"]["code"] == "invalid_encoding"
    response = await client.get("/admin/drain")
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert client.app[STATE].phase == "serving"


async def test_a_drain_after_the_shutdown_began_does_nothing(aiohttp_client: ClientFactory
                                                            ) -> None:
    client, stopped = await serve(aiohttp_client, drain_s=0)
    client.app[STATE].enter("stopping")  # as on_shutdown does
    response = await client.post("/admin/drain")
    assert response.status == 202 and (await response.json())["started"] is False
    await asyncio.sleep(50 * MS)
    assert not stopped
