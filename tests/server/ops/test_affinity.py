"""What a load balancer needs: the server's name on every answer, and a
conversation key that is checked and echoed (header, or ?conversation= on /ws)."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from rkstream.config import ServerSettings, Settings, load_settings
from rkstream.errors import ConfigError
from rkstream.server.app import make_app
from rkstream.server.ops.affinity import _KEY
from rkstream.server.state import server_id

from fakes import FakeEngine
from helpers import WSClient, fake_settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
KEY = "X-Rkstream-Conversation"


async def serve(aiohttp_client: ClientFactory, **server: Any) -> TestClient[Any, Any]:
    config = fake_settings(server=replace(ServerSettings(), **server))
    return await aiohttp_client(make_app(config, lambda s: FakeEngine(s)))


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_every_answer_names_its_server(aiohttp_client: ClientFactory) -> None:
    client = await serve(aiohttp_client, id="board-2")
    for response in (await client.get("/health"), await client.get("/v1/models"),
                     await client.get("/metrics"), await client.post("/api/nothing"),
                     await client.post("/v1/chat/completions", json=chat("hi")),
                     await client.post("/v1/chat/completions", data=b"not json")):
        assert response.headers["X-Rkstream-Server"] == "board-2", response.url
        assert KEY not in response.headers


async def test_the_conversation_key_is_echoed_on_http(aiohttp_client: ClientFactory) -> None:
    client = await serve(aiohttp_client, id="board-2")
    response = await client.post("/v1/chat/completions", json=chat("hi"),
                                 headers={KEY: "chat-7f3a"})
    assert response.status == 200 and response.headers[KEY] == "chat-7f3a"
    response = await client.post("/api/chat", json={**chat("hi"), "stream": False},
                                 headers={KEY: "chat-7f3a"})
    assert response.status == 200 and response.headers[KEY] == "chat-7f3a"


async def test_session_created_names_the_server_and_the_conversation(
        aiohttp_client: ClientFactory) -> None:
    client = await serve(aiohttp_client, id="board-3")
    ws = await client.ws_connect("/ws?conversation=c-1")
    assert ws._response.headers["X-Rkstream-Server"] == "board-3"
    assert ws._response.headers[KEY] == "c-1"
    created = await WSClient(ws).recv_type("session.created")
    assert created["server"]["id"] == "board-3" and created["conversation"] == "c-1"
    plain = await WSClient(await client.ws_connect("/ws")).recv_type("session.created")
    assert plain["conversation"] is None
    by_header = WSClient(await client.ws_connect("/ws", headers={KEY: "c-2"}))
    assert (await by_header.recv_type("session.created"))["conversation"] == "c-2"


@pytest.mark.parametrize("value, words", [
    ("", "1 to 128 letters, digits"),
    ("x" * 129, "has 129 characters"),
    ("two words", "' ' at 3"),
    ("user:42/chat", "':' at 4"),  # a balancer would pass it percent-encoded
])
async def test_a_malformed_key_is_refused_in_the_apis_shape(
        aiohttp_client: ClientFactory, value: str, words: str) -> None:
    client = await serve(aiohttp_client)
    response = await client.post("/v1/chat/completions", json=chat("hi"), headers={KEY: value})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_field" and words in error["message"]
    response = await client.post("/api/chat", json=chat("hi"), headers={KEY: value})
    assert response.status == 400 and words in (await response.json())["error"]
    response = await client.get("/ws", params={"conversation": value})
    assert response.status == 400 and words in (await response.json())["error"]


def test_a_key_is_the_same_percent_encoded_or_not() -> None:
    # A balancer copies ?conversation= into the header raw; the query is decoded:
    # a key the server takes must be one that encoding leaves as it is.
    for code in range(0x300):
        char = chr(code)
        assert (_KEY.fullmatch(char) is not None) == (quote(char, safe="") == char), repr(char)


async def test_header_and_query_must_agree_on_ws(aiohttp_client: ClientFactory) -> None:
    client = await serve(aiohttp_client)
    response = await client.get("/ws?conversation=a", headers={KEY: "b"})
    assert response.status == 400
    assert "different conversations" in (await response.json())["error"]
    same = await client.ws_connect("/ws?conversation=a", headers={KEY: "a"})
    assert (await WSClient(same).recv_type("session.created"))["conversation"] == "a"


def test_the_default_id_is_host_and_port() -> None:
    config = replace(Settings(), server=replace(ServerSettings(), port=8123))
    assert server_id(config) == f"{socket.gethostname()}:8123"
    assert server_id(load_settings(overrides={"server.id": "rk-1"}, environ={})) == "rk-1"
    assert server_id(load_settings(environ={"RKSTREAM_SERVER_ID": "rk-2"})) == "rk-2"


@pytest.mark.parametrize("value", ["board 1", "a/b", "x" * 65, "bøard"])
def test_a_bad_server_id_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"server.id": value}, environ={})
    assert "server.id" in str(caught.value) and "letters, digits" in str(caught.value)
