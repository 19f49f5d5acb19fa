"""Closing a client ends every call still open, with ConnectionLostError code
``closed``: the synchronous client's calls in other threads (also those waiting for
a reconnect) and the asyncio client's open requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from rkstream.client import AsyncClient, Client, ConnectionLostError, Created

from client_links import ServerMaker, url
from helpers import MS, jpeg, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``call`` in a daemon thread (a hung one cannot hold up the tests); the
    list gets what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - looked at by the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def closing_ends_calls_waiting_for_a_connection(address: str) -> list[str]:
    """Calls in five threads wait for a server that is gone; close() from this one."""
    client = Client(address, connect=False, timeout_s=30000 * MS, min_delay_s=20 * MS,
                    max_delay_s=50 * MS)
    first = in_thread(client.connect)  # starts the reconnecting
    time.sleep(30 * MS)
    calls = [first] + [in_thread(call) for call in (
        lambda: client.complete("hi"), client.ping,
        lambda: client.update_session(instructions="Be brief."),
        lambda: client.upload_image(jpeg(1)))]
    time.sleep(100 * MS)
    client.close()
    codes = []
    for thread, raised in calls:
        thread.join(3000 * MS)
        assert not thread.is_alive(), "a call still blocked after close()"
        (error,) = raised
        assert isinstance(error, ConnectionLostError), repr(error)
        codes.append(error.code)
    return codes


async def test_sync_close_ends_calls_waiting_in_other_threads(client_server: ServerMaker
                                                              ) -> None:
    server = await client_server()
    address = url(server)
    await server.close()  # nothing listens there now: every call waits for a reconnect
    for _ in range(3):  # it was a race close() lost most of the time
        codes = await asyncio.to_thread(closing_ends_calls_waiting_for_a_connection, address)
        assert codes == ["closed"] * 5


async def test_sync_close_ends_a_running_answer_with_closed(client_server: ServerMaker
                                                            ) -> None:
    server = await client_server()

    def work() -> BaseException:
        client = Client(url(server), timeout_s=5000 * MS)
        stream = client.stream(LONG)
        assert isinstance(stream.next(5000 * MS), Created)  # it is on the server
        thread, raised = in_thread(lambda: client.complete(LONG))
        time.sleep(100 * MS)
        client.close()
        thread.join(3000 * MS)
        assert not thread.is_alive()
        with pytest.raises(ConnectionLostError) as streamed:
            stream.result(3000 * MS)
        assert streamed.value.code == "closed"
        return raised[0]

    error = await asyncio.to_thread(work)
    assert isinstance(error, ConnectionLostError) and error.code == "closed"


async def test_async_close_ends_open_requests_with_closed(client_server: ServerMaker) -> None:
    client = AsyncClient(url(await client_server()), timeout_s=5000 * MS)
    await client.connect()
    stream = client.stream(LONG)
    events = stream.__aiter__()
    await events.__anext__()  # it runs
    await client.close()
    with pytest.raises(ConnectionLostError) as ended:
        async for _ in events:
            pass
    assert ended.value.code == "closed"  # the caller closed it: not a lost link
    assert "closed" in ended.value.message
