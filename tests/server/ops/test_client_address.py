"""server.trusted_proxies: the client's address read from X-Forwarded-For, only
when the direct peer is a trusted proxy, for the per-address limit and the
logs; never for the admin drain's loopback check."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from rkstream.config import LimitSettings, ServerSettings, Settings, parsed
from rkstream.errors import RequestError
from rkstream.server.app import make_app
from rkstream.server.ops.access import RedactingAccessLogger
from rkstream.server.ops.client_address import (
    client_address,
    client_address_middleware,
    described,
    forwarded_client,
)
from rkstream.server.ops.drain import admin_drain
from rkstream.server.state import STATE

from fakes import FakeEngine
from helpers import MS

XFF = "X-Forwarded-For"


def trusting(text: str) -> Any:
    return parsed("server.trusted_proxies", text)


@pytest.mark.parametrize("peer, header, trusted, client", [
    # No trusted proxies (the default): the header is ignored.
    ("10.0.0.2", ["203.0.113.5"], "", "10.0.0.2"),
    # A peer that is not trusted: its header is the client's own word.
    ("198.51.100.7", ["127.0.0.1"], "10.0.0.0/8", "198.51.100.7"),
    # One hop: the balancer's entry.
    ("10.0.0.2", ["203.0.113.5"], "10.0.0.2", "203.0.113.5"),
    # A client that sends its own header: only the entry the proxy added counts.
    ("10.0.0.2", ["1.2.3.4, 203.0.113.5"], "10.0.0.0/8", "203.0.113.5"),
    # HAProxy adds its own header line after the client's; the lines are one list.
    ("10.0.0.2", ["1.2.3.4", "203.0.113.5"], "10.0.0.0/8", "203.0.113.5"),
    # Two proxies, both trusted: skipped from the right.
    ("10.0.0.2", ["203.0.113.5, 10.0.0.3"], "10.0.0.0/8", "203.0.113.5"),
    # Every hop trusted: the leftmost (a client inside the proxies' network).
    ("10.0.0.2", ["10.0.0.9, 10.0.0.3"], "10.0.0.0/8", "10.0.0.9"),
    # Garbage where a proxy should have written an address: the peer.
    ("10.0.0.2", ["not-an-ip"], "10.0.0.0/8", "10.0.0.2"),
    ("10.0.0.2", ["203.0.113.5, 10.0.0.3:4711"], "10.0.0.0/8", "10.0.0.2"),
    ("10.0.0.2", ["203.0.113.5,,10.0.0.3"], "10.0.0.0/8", "10.0.0.2"),
    ("10.0.0.2", [""], "10.0.0.0/8", "10.0.0.2"),
    # Garbage left of the client was the client's own: never read.
    ("10.0.0.2", ["<script>, 203.0.113.5"], "10.0.0.0/8", "203.0.113.5"),
    # A trusted peer that sent no header (a health check): the peer.
    ("10.0.0.2", [], "10.0.0.0/8", "10.0.0.2"),
    # IPv6, written as the header has it; the result is in the canonical form.
    ("fd00::2", ["2001:DB8:0::1"], "fd00::/8", "2001:db8::1"),
    # A dual-stack socket gives an IPv4 peer as ::ffff:a.b.c.d.
    ("::ffff:10.0.0.2", ["203.0.113.5"], "10.0.0.0/8", "203.0.113.5"),
    # No address at all (a Unix socket): nothing to trust.
    (None, ["203.0.113.5"], "10.0.0.0/8", None),
    ("/run/rk.sock", ["203.0.113.5"], "10.0.0.0/8", "/run/rk.sock"),
])
def test_the_address_chosen(peer: str | None, header: list[str], trusted: str,
                            client: str | None) -> None:
    assert forwarded_client(peer, header, trusting(trusted)) == client


def _request(peer: str, headers: dict[str, str], app: web.Application | None = None,
             path: str = "/admin/drain") -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = \
        lambda name, default=None: (peer, 40000) if name == "peername" else default
    return make_mocked_request("POST", path, headers=headers, app=app, transport=transport)


async def _through(middleware: Any, request: web.Request) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    await middleware(request, handler)


async def test_the_middleware_sets_what_client_address_reads() -> None:
    forwarded = _request("10.0.0.2", {XFF: "203.0.113.5"})
    await _through(client_address_middleware(trusting("10.0.0.2")), forwarded)
    assert client_address(forwarded) == "203.0.113.5"
    assert forwarded.remote == "10.0.0.2"  # the real peer is left as it was
    assert described(forwarded) == "203.0.113.5 via 10.0.0.2"
    direct = _request("10.0.0.7", {XFF: "203.0.113.5"})
    await _through(client_address_middleware(trusting("10.0.0.2")), direct)
    assert client_address(direct) == "10.0.0.7" and described(direct) == "10.0.0.7"
    # Without the middleware (no trusted proxies, or a request refused before the app).
    assert client_address(_request("10.0.0.2", {XFF: "203.0.113.5"})) == "10.0.0.2"


async def test_a_forwarded_loopback_never_passes_the_admin_check() -> None:
    settings = replace(Settings(), server=replace(ServerSettings(), drain_s=60,
                                                  trusted_proxies="10.0.0.0/8"))
    app = make_app(settings, lambda s: FakeEngine(s))
    request = _request("10.0.0.2", {XFF: "127.0.0.1"}, app)
    with pytest.raises(RequestError) as info:
        await client_address_middleware(trusting("10.0.0.0/8"))(request, admin_drain)
    assert info.value.code == "admin_forbidden" and "10.0.0.2" in info.value.message
    assert client_address(request) == "127.0.0.1"  # the header was read, and granted nothing
    assert app[STATE].phase == "serving"



async def test_a_proxy_on_the_board_cannot_forward_an_admin_call() -> None:
    # nginx on the board itself, trusted: its peer is the loopback, its client is not.
    settings = replace(Settings(), server=replace(ServerSettings(), drain_s=60,
                                                  trusted_proxies="127.0.0.1"))
    app = make_app(settings, lambda s: FakeEngine(s))
    request = _request("127.0.0.1", {XFF: "203.0.113.5"}, app)
    with pytest.raises(RequestError) as info:
        await client_address_middleware(trusting("127.0.0.1"))(request, admin_drain)
    assert info.value.code == "admin_forbidden"
    assert "203.0.113.5 via 127.0.0.1" in info.value.message
    assert app[STATE].phase == "serving"


async def test_a_dual_stack_loopback_peer_may_drain_without_a_key() -> None:
    # An IPv6 socket reports a local IPv4 client as ::ffff:127.0.0.1.
    app = make_app(replace(Settings(), server=replace(ServerSettings(), drain_s=60)),
                   lambda s: FakeEngine(s))
    response = await admin_drain(_request("::ffff:127.0.0.1", {}, app))
    assert response.status == 202
    state = app[STATE]
    assert state.phase == "draining" and state.drain is not None
    state.drain.cancel()

def app_with(trusted: str, **limits: Any) -> web.Application:
    settings = replace(Settings(), server=replace(ServerSettings(), trusted_proxies=trusted),
                       limits=replace(LimitSettings(), **limits))
    return make_app(settings, lambda s: FakeEngine(s, MS))


async def test_the_connection_limit_counts_forwarded_clients_apart(aiohttp_client: Any
                                                                   ) -> None:
    client = await aiohttp_client(app_with("127.0.0.1", max_connections_per_address=2))

    async def connect(address: str | None) -> aiohttp.ClientWebSocketResponse[Any]:
        ws: aiohttp.ClientWebSocketResponse[Any] = await client.ws_connect(
            "/ws", headers={XFF: address} if address else None)
        return ws

    held = [await connect("203.0.113.5"), await connect("203.0.113.5")]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect("203.0.113.5")
    assert info.value.status == 429
    held += [await connect("203.0.113.6"), await connect("203.0.113.6")]
    held += [await connect(None), await connect(None)]  # the proxy's own address: 127.0.0.1
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await connect(None)
    counts = dict(client.app[STATE].per_address)
    assert {a: counts[a] for a in ("203.0.113.5", "203.0.113.6", "127.0.0.1")} == {
        "203.0.113.5": 2, "203.0.113.6": 2, "127.0.0.1": 2}
    await asyncio.gather(*(ws.close() for ws in held))


async def test_an_untrusted_peer_is_counted_as_itself(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with("10.0.0.0/8", max_connections_per_address=1))
    first = await client.ws_connect("/ws", headers={XFF: "203.0.113.5"})
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", headers={XFF: "203.0.113.6"})  # the header is ignored
    assert info.value.status == 429
    await first.close()


async def test_the_access_log_names_the_forwarded_client(
        aiohttp_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    server = TestServer(app_with("127.0.0.1"))
    # As `rkstream serve` runs it (aiohttp_client's server_kwargs do not reach the runner).
    await server.start_server(access_log_class=RedactingAccessLogger)
    client = await aiohttp_client(server)
    await (await client.get("/v1/models", headers={XFF: "203.0.113.5"})).read()
    ws = await client.ws_connect("/ws", headers={XFF: "198.51.100.7, 203.0.113.9"})
    await ws.close()
    await (await client.get("/v1/models")).read()
    for _ in range(100):  # the /ws line is written once the server has seen the close
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        if len(lines) == 3:
            break
        await asyncio.sleep(10 * MS)
    assert sorted(line.split()[0] + " " + line.split('"')[1].split()[1] for line in lines) == [
        "127.0.0.1 /v1/models", "203.0.113.5 /v1/models", "203.0.113.9 /ws"], lines
