"""begin(): a coroutine runs here and now until it suspends."""

from __future__ import annotations

import asyncio

import pytest

from rkstream.core.eager import begin


async def test_a_coroutine_that_never_suspends_is_done_at_once() -> None:
    seen: list[str] = []

    async def write() -> None:
        seen.append("written")

    assert begin(write()) is None
    assert seen == ["written"]  # no loop iteration needed


async def test_one_that_suspends_is_finished_by_awaiting_what_begin_returns() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def write() -> None:
        seen.append("start")
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield too
        seen.append("end")

    rest = begin(write())
    assert rest is not None and seen == ["start"]
    asyncio.get_running_loop().call_soon(gate.set_result, 7)
    await rest
    assert seen == ["start", 7, "end"]


async def test_errors_come_out_where_they_happen() -> None:
    async def broken_now() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        begin(broken_now())
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def broken_later() -> None:
        await gate

    rest = begin(broken_later())
    assert rest is not None
    gate.set_exception(ConnectionResetError("gone later"))
    with pytest.raises(ConnectionResetError):
        await rest


async def test_cancelling_the_rest_stops_the_coroutine_where_it_waits() -> None:
    cleaned: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append("closed")

    rest = begin(stuck())
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["closed"]
