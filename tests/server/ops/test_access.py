"""API keys and which web pages may open /ws."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from rkstream.config import ServerSettings, Settings
from rkstream.server.app import make_app
from rkstream.server.ops.access import RedactingAccessLogger, key_matches

from fakes import FakeEngine


def app_with(**server: Any) -> Any:
    settings = replace(Settings(), server=replace(ServerSettings(), **server))
    return make_app(settings, lambda s: FakeEngine(s))


async def test_keys_required_everywhere_but_health(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(api_keys="k1, k2"))
    assert (await client.get("/health")).status == 200
    no_key = await client.get("/v1/models")
    assert no_key.status == 401
    assert (await no_key.json())["error"]["code"] == "invalid_api_key"
    wrong = await client.get("/api/tags", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and "API key" in (await wrong.json())["error"]
    ok = await client.get("/v1/models", headers={"Authorization": "Bearer k2"})
    assert ok.status == 200
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 401
    ws = await client.ws_connect("/ws?token=k1")
    await ws.receive()
    await ws.close()
    ws = await client.ws_connect("/ws", headers={"Authorization": "Bearer k1"})
    await ws.close()


async def test_no_keys_configured_means_open(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with())
    assert (await client.get("/v1/models")).status == 200


async def test_other_sites_cannot_open_ws(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(allowed_origins="https://robot.example"))
    host = f"http://{client.host}:{client.port}"
    ws = await client.ws_connect("/ws", headers={"Origin": host})  # the server's own page
    await ws.close()
    ws = await client.ws_connect("/ws", headers={"Origin": "https://robot.example"})
    await ws.close()
    ws = await client.ws_connect("/ws")  # no Origin: not a browser
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert info.value.status == 403


def test_key_comparison() -> None:
    assert key_matches("abc", ("x", "abc"))
    assert not key_matches("ab", ("abc",))
    assert not key_matches("", ("abc",))


def test_a_key_in_the_url_never_reaches_the_access_log(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    logger = logging.getLogger("test.access")
    access = RedactingAccessLogger(logger, "")
    request = make_mocked_request("GET", "/ws?token=sesame&x=1",
                                  headers={"User-Agent": "page", "Referer": "http://b/"})
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(request, web.Response(status=101), 0.01)
        access.log(make_mocked_request("GET", "/health"), web.Response(status=503), 0.0)
        # A balancer's health checks, every few seconds: only a failure is logged.
        access.log(make_mocked_request("GET", "/health"), web.Response(status=200), 0.0)
    first, second = (r.getMessage() for r in caplog.records)
    assert "sesame" not in first and "token=***" in first and "x=1" in first
    assert '"GET /ws?' in first and " 101 " in first and '"page"' in first
    assert '"GET /health HTTP/1.1" 503' in second
