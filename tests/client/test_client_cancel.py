"""Cancelling a request around its sending: a cancel before the request went out (not
started yet, or waiting for a reconnect) keeps it from the server, and a task
cancelled while the request is on its way (a timeout) still cancels it there."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from rkstream.client import AsyncClient, Client

from client_links import ServerMaker, url
from helpers import MS, eventually, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


def client_of(address: str, **options: Any) -> AsyncClient:
    return AsyncClient(address, timeout_s=5000 * MS, min_delay_s=20 * MS,
                       max_delay_s=100 * MS, **options)


async def test_a_stream_cancelled_before_it_starts_is_never_sent(
        client_server: ServerMaker, records: Any) -> None:
    async with client_of(url(await client_server())) as client:
        stream = client.stream(LONG)
        await stream.cancel()
        answer = await asyncio.wait_for(stream.result(), 1000 * MS)
        assert answer.status == "cancelled" and answer.text == ""
        assert (await client.complete(reply("next"))).text == "next"
    assert len(records.all("run")) == 1  # only "next" ran


async def test_a_cancel_while_reconnecting_ends_the_stream_and_nothing_is_sent(
        client_server: ServerMaker, records: Any) -> None:
    first = await client_server()
    port = first.port
    async with client_of(url(first)) as client:
        await first.close()
        await eventually(lambda: not client.connected)
        stream = client.stream(reply("all of it"))
        result = asyncio.create_task(stream.result())
        await asyncio.sleep(50 * MS)  # it waits for the connection
        await stream.cancel()
        answer = await asyncio.wait_for(result, 1000 * MS)  # at once, not after timeout_s
        assert answer.status == "cancelled" and answer.text == ""
        second = await client_server(port=port)
        await client.connect()
        assert (await client.complete(reply("later"))).text == "later"
        assert len(records.all("run")) == 1  # only "later" ran
        await second.close()


async def test_a_sync_cancel_while_reconnecting(client_server: ServerMaker) -> None:
    server = await client_server()
    client = await asyncio.to_thread(Client, url(server), timeout_s=5000 * MS,
                                     min_delay_s=20 * MS, max_delay_s=100 * MS)
    try:
        await server.close()
        await eventually(lambda: not client.connected)

        def work() -> str:
            stream = client.stream(reply("all of it"))
            stream.cancel()  # as rkstream chat on Ctrl-C
            return stream.result(1000 * MS).status

        assert await asyncio.to_thread(work) == "cancelled"
    finally:
        await asyncio.to_thread(client.close)


async def test_a_timeout_while_sending_still_cancels_on_the_server(
        client_server: ServerMaker, records: Any) -> None:
    async with client_of(url(await client_server())) as client:
        send = client._send

        async def slow_send(event: Mapping[str, Any]) -> None:
            await send(event)
            if event["type"] == "response.create":  # as a large request on a slow link:
                await asyncio.sleep(60)  # on its way, the sender waiting in drain()

        client._send = slow_send  # type: ignore[method-assign]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.complete(LONG), 300 * MS)
        await eventually(lambda: records.all("run_end") and not client._requests)
        assert [r["running"] for r in records.all("abort")] == [True]
        assert not client._requests  # its cancelled Done came
