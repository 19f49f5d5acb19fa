"""CORS: off by default, allowed origins only, preflight answered."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rkstream.config import ServerSettings
from rkstream.server.app import make_app

from fakes import FakeEngine
from helpers import fake_settings


def app_with(origins: str) -> Any:
    """An app on the fake engine, its model served as ``m``."""
    settings = fake_settings(server=replace(ServerSettings(), cors_origins=origins))
    return make_app(settings, lambda s: FakeEngine(s))


async def test_off_by_default(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with(""))
    response = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_listed_origin_only(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with("https://app.example, http://localhost:3000/"))
    ok = await client.get("/health", headers={"Origin": "http://localhost:3000"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options("/health", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]  # Anthropic's SDK


async def test_any_origin(aiohttp_client: Any) -> None:
    client = await aiohttp_client(app_with("*"))
    response = await client.get("/health", headers={"Origin": "https://x.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_streamed_answers_carry_the_header(aiohttp_client: Any) -> None:

    client = await aiohttp_client(app_with("https://app.example"))
    response = await client.post("/api/chat", headers={"Origin": "https://app.example"},
                                 json={"model": "m", "messages": [
                                     {"role": "user", "content": "a b"}]})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await response.read()
