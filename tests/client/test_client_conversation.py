"""Conversation keys and the server's name in the client: the key's rule is the
server's, it rides on every (re)connection as ``?conversation=``, a new conversation
takes a new socket, and each answer says which server gave it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from rkstream.client import (
    AsyncClient,
    Client,
    ConnectionLostError,
    check_conversation_key,
    new_conversation_key,
)
from rkstream.client.conversation import with_conversation
from rkstream.server.ops.affinity import _KEY as SERVER_KEY

from client_links import ServerMaker, url
from helpers import MS, eventually, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"
# Every character that needs percent-encoding in a query, and a few that do not.
TRICKY = "Chat-42_v1.2~x"  # every kind of character a key may have


def client_of(server: Any, **options: Any) -> AsyncClient:
    return AsyncClient(url(server), timeout_s=5000 * MS, **options)


def test_the_key_rule_is_the_servers() -> None:
    for code in range(0x2000):
        char = chr(code)
        for key in (char, "k" + char, char * 128):
            server_takes = SERVER_KEY.fullmatch(key) is not None
            try:
                check_conversation_key(key)
            except ValueError:
                assert not server_takes, repr(key)
            else:
                assert server_takes, repr(key)
    for key in ("", "x" * 129, "a b", "tab\there", "é", "user:42/chat", "a%41"):
        with pytest.raises(ValueError, match="1 to 128 URL-safe characters"):
            check_conversation_key(key)
    with pytest.raises(TypeError):
        check_conversation_key(42)  # type: ignore[arg-type]
    key = new_conversation_key()
    assert len(key) == 32 and check_conversation_key(key) == key
    assert new_conversation_key() != key


def test_the_key_goes_in_the_url() -> None:
    client = AsyncClient("board:8080", conversation="chat-1")
    assert client.url == "http://board:8080/ws?conversation=chat-1"
    assert client.conversation == "chat-1" and client.server_id is None
    # A key in the URL is taken; other parameters stay.
    client = AsyncClient("ws://board:8080/ws?token=t&conversation=c2")
    assert client.conversation == "c2" and "token=t" in client.url
    assert with_conversation(client.url, "c3").count("conversation=") == 1
    assert AsyncClient("board:8080").conversation is None
    with pytest.raises(ValueError, match="give one"):
        AsyncClient("ws://board:8080/ws?conversation=c2", conversation="other")
    with pytest.raises(ValueError, match="URL-safe"):
        AsyncClient("board:8080", conversation="has a space")


def test_a_bad_key_leaves_no_thread_behind() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="URL-safe"):
        Client("127.0.0.1:9", conversation="x" * 129)
    assert threading.active_count() == before


async def test_the_key_reaches_the_server_and_answers_name_it(
        client_server: ServerMaker) -> None:
    server = await client_server(server={"id": "board7"})
    async with client_of(server, conversation=TRICKY) as client:
        assert client.session is not None and client.session.conversation == TRICKY
        assert client.server_id == "board7" == client.session.server_id
        stream = client.stream(reply("one two"), max_tokens=20)
        answer = await stream.result()
        assert answer.text == "one two" and stream.server_id == "board7"
        assert answer.server_id == "board7" == answer.done.server_id
    async with client_of(server) as client:  # without a key, the server says null
        assert client.session is not None and client.session.conversation is None


async def test_a_reconnect_keeps_the_key(client_server: ServerMaker) -> None:
    first = await client_server(server={"id": "first"})
    port = first.port
    client = client_of(first, conversation="conv-9", min_delay_s=20 * MS,
                       max_delay_s=200 * MS)
    try:
        await client.connect()
        assert client.server_id == "first"
        await first.close()
        await client_server(port=port, server={"id": "second"})
        answer = await client.complete(reply("back"))  # waits for the reconnect
        assert client.generation == 2 and client.conversation == "conv-9"
        assert client.session is not None and client.session.conversation == "conv-9"
        # The socket's server changed with the reconnect, and the answer says so.
        assert client.server_id == "second" == answer.server_id
    finally:
        await client.close()


async def test_a_new_conversation_takes_a_new_socket(client_server: ServerMaker) -> None:
    server = await client_server(server={"id": "b1"})
    async with client_of(server, conversation="old") as client:
        await client.update_session(instructions="Be brief.")
        first = client.session
        open_request = client.stream(LONG)
        await open_request.start()
        await eventually(lambda: open_request.text)
        key = await client.new_conversation()
        with pytest.raises(ConnectionLostError) as lost:  # it was open on the old socket
            await open_request.result()
        assert "client closed its connection" in lost.value.message
        assert key != "old" and client.conversation == key
        assert client.session is not None and client.session is not first
        assert client.session.conversation == key and client.generation == 2
        assert (await client.complete(reply("fresh"))).text == "fresh"
        assert await client.new_conversation("mine") == "mine"
        assert client.session is not None and client.session.conversation == "mine"
        with pytest.raises(ValueError):
            await client.new_conversation("no spaces please")
        assert client.conversation == "mine"
    not_yet = AsyncClient(url(server))
    assert await not_yet.new_conversation("before") == "before"  # no socket: only the key
    await not_yet.close()


async def test_the_sync_client_names_the_server(client_server: ServerMaker) -> None:
    import asyncio

    server = await client_server(server={"id": "sync-board"})

    def run() -> tuple[Any, ...]:
        with Client(url(server), conversation="s1", timeout_s=5000 * MS) as client:
            stream = client.stream(reply("hi"))
            answer = stream.result(5000 * MS)
            key = client.new_conversation()
            assert client.session is not None
            return (client.conversation, client.server_id, stream.server_id, answer.server_id,
                    key, client.session.conversation, stream.started)

    conversation, server_id, stream_id, answer_id, key, echoed, started = \
        await asyncio.to_thread(run)
    assert conversation == key == echoed and server_id == stream_id == answer_id == "sync-board"
    assert started


async def test_closing_ends_a_switch(client_server: ServerMaker) -> None:
    async with client_of(await client_server()) as client:
        pass
    with pytest.raises(ConnectionLostError):
        await client.new_conversation()


async def test_a_new_conversation_reconnects_a_client_that_does_not(
        client_server: ServerMaker) -> None:
    first = await client_server()
    port = first.port
    async with client_of(first, reconnect=False) as client:
        await first.close()
        with pytest.raises(ConnectionLostError):
            await client.complete(reply("nobody there"))
        await client_server(port=port, server={"id": "again"})
        await client.new_conversation("c-again")
        assert client.connected and client.server_id == "again" and client.generation == 2
        assert (await client.complete(reply("here"))).text == "here"
