"""rkstream.client.Client, the synchronous client on its own loop thread: calls from
several threads at once, leaving a stream early, the camera from another thread.

The server runs on the test's loop, so the synchronous calls run in threads
(asyncio.to_thread) while the loop serves them."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rkstream.client import Client, ConnectionLostError, TextDelta

from client_links import ServerMaker, url
from helpers import MS, eventually, jpeg, reply

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder

LONG = reply("w ") + "[[n_tokens=2000]][[token_delay_us=20000]]"


async def test_two_threads_share_one_client(client_server: ServerMaker) -> None:
    server = await client_server()

    def work() -> list[str]:
        with Client(url(server), timeout_s=5000 * MS) as client:
            def ask(n: int) -> str:
                prompt = reply(f"thread {n} says hi") + "[[token_delay_us=10000]]"
                if n:  # the text alone, piece by piece
                    return "".join(client.stream(prompt).texts())
                return str(client.complete(prompt))  # an Answer prints as its text

            with ThreadPoolExecutor(2) as pool:
                texts = list(pool.map(ask, range(2)))
            assert client.session is not None and client.model is not None
            assert threading.active_count() >= 2  # the client's own loop thread
            return texts

    assert await asyncio.to_thread(work) == ["thread 0 says hi", "thread 1 says hi"]


async def test_leaving_a_sync_stream_cancels(client_server: ServerMaker, records: Any) -> None:
    server = await client_server()

    def work() -> tuple[int, str]:
        client = Client(url(server), timeout_s=5000 * MS)
        try:
            deltas = 0
            for event in client.stream(LONG):
                if isinstance(event, TextDelta):
                    deltas += 1
                    if deltas == 3:
                        break
            with client.stream(LONG) as stream:  # cancel(), then read to the end
                for event in stream:
                    if isinstance(event, TextDelta):
                        stream.cancel()
                status = stream.result().status
            return deltas, status
        finally:
            client.close()

    deltas, status = await asyncio.to_thread(work)
    assert deltas == 3 and status == "cancelled"
    await eventually(lambda: len(records.all("abort")) == 2)
    assert [r["running"] for r in records.all("abort")] == [True, True]


async def test_camera_send_from_another_thread_never_blocks(client_server: ServerMaker
                                                            ) -> None:
    server = await client_server(vision=True)
    frames = [jpeg(seed) for seed in range(20)]

    def work() -> tuple[Any, float, int]:
        with Client(url(server), timeout_s=5000 * MS) as client:
            camera = client.camera("front", max_fps=10)
            slowest = 0.0

            def produce() -> None:  # a camera callback on its own thread
                nonlocal slowest
                for frame in frames:
                    started = time.perf_counter()
                    camera.send(frame)
                    slowest = max(slowest, time.perf_counter() - started)
                    time.sleep(5 * MS)

            producer = threading.Thread(target=produce)
            producer.start()
            producer.join()
            pending = camera.submit("What is in front of me?")  # returns at once
            answer = pending.result(5000 * MS)
            return answer, slowest, camera.dropped

    answer, slowest, dropped = await asyncio.to_thread(work)
    assert answer.status == "completed" and answer.frame.seq == len(frames)
    assert answer.image == frames[-1]
    assert slowest < 20 * MS and dropped > 0  # 200 fps given, 10 fps sent


async def test_calls_after_close_and_from_the_clients_thread(client_server: ServerMaker
                                                              ) -> None:
    server = await client_server()

    def work() -> None:
        client = Client(url(server), timeout_s=5000 * MS)
        called_back: list[BaseException] = []

        def on_loop() -> None:
            try:
                client.ping()
            except RuntimeError as exc:
                called_back.append(exc)

        client.loop.call_soon_threadsafe(on_loop)
        time.sleep(50 * MS)
        assert called_back and "own thread" in str(called_back[0])
        client.close()
        client.close()
        with pytest.raises((ConnectionLostError, RuntimeError)):
            client.complete("hi")

    await asyncio.to_thread(work)
