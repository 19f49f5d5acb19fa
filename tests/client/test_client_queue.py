"""The queue and start events and the frame's age, from a server on the stand-in
runtime (one instance): a waiting request hears its place move, then its start."""

from __future__ import annotations

import asyncio
from typing import Any

from rkstream.client import AsyncClient, Created, Done, Queued, Started, TextDelta

from client_links import ServerMaker, url
from helpers import MS, eventually, jpeg, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


async def test_a_waiting_request_counts_down_then_starts(client_server: ServerMaker) -> None:
    async with AsyncClient(url(await client_server()), timeout_s=5000 * MS) as client:
        running, next_up = client.stream(LONG), client.stream(LONG)
        await running.start()
        await eventually(lambda: running.text)
        await next_up.start()
        await eventually(lambda: next_up.queue_position == 0)
        mine = client.stream(reply("at last"))
        events: list[Any] = []

        async def read() -> None:
            async for event in mine:
                events.append(event)

        reader = asyncio.ensure_future(read())
        await eventually(lambda: mine.queue_position == 1)
        assert not mine.started
        await running.cancel()  # next_up starts: mine is next
        await eventually(lambda: mine.queue_position == 0)
        assert not mine.started
        await next_up.cancel()
        await asyncio.wait_for(reader, 5000 * MS)
    kinds = [type(e) for e in events if not isinstance(e, TextDelta)]
    assert kinds == [Created, Queued, Started, Done], events
    assert [e.queue_position for e in events if isinstance(e, (Created, Queued))] == [1, 0]
    assert mine.started and mine.text == "at last"
    assert running.started and next_up.started  # next_up ran before it was cancelled


async def test_the_answer_says_how_old_its_frame_was(client_server: ServerMaker) -> None:
    async with AsyncClient(url(await client_server(vision=True)),
                           timeout_s=5000 * MS) as client:
        camera = client.camera("front", max_fps=None)
        camera.send(jpeg(1))
        await camera.flush()
        await asyncio.sleep(100 * MS)
        answer = await camera.ask("What is it?")
    assert answer.frame is not None and answer.frame.age_ms is not None
    assert answer.frame.taken_age_ms is not None
    assert 100 * MS * 1000 * 0.9 <= answer.frame.age_ms < 10000 * MS * 1000
