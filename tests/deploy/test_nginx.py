"""nginx on docs/deploy/nginx.conf in front of two ``rkstream serve --standin``
processes on 127.0.0.1: streamed answers are not buffered, /ws upgrades, a
conversation keeps its board, and a board that stops hands its requests on."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from scaleout_clients import conversation, short, sse_turn, user, ws_turn
from scaleout_cluster import Board, Nginx, client_address_is_forwarded
from yarl import URL

from helpers import MS

DRAIN_S = 0.3  # nginx never reads /health: the drain's window does not matter here


class Pair:
    def __init__(self, directory: Path) -> None:
        self.boards = [Board(name, directory, DRAIN_S) for name in ("board1", "board2")]
        for board in self.boards:
            board.start()
        for board in self.boards:
            board.wait_healthy()
        self.nginx = Nginx(self.boards, directory)

    def stop(self) -> None:
        self.nginx.stop()
        for board in self.boards:
            board.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    running = None
    try:
        running = Pair(tmp_path_factory.mktemp("nginx"))
        yield running
    finally:
        if running is not None:
            running.stop()


async def test_a_stream_is_passed_on_as_it_is_generated(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        # 20 tokens at 20 tokens/s: about a second from the first to the last.
        turn = await sse_turn(session, pair.nginx.url,
                              user("stream [[reply=word ]] [[n_tokens=20]]"))
    assert turn.ok and turn.text == "word " * 20 and turn.server in ("board1", "board2")
    # Buffered, the pieces would all arrive together at the end.
    assert len(turn.times_s) >= 10
    assert turn.times_s[-1] - turn.times_s[0] > 0.5


async def test_websockets_and_conversations_pass(pair: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        turn = await ws_turn(session, pair.nginx.url, short(1))
        assert turn.ok and turn.text == "pong 1"
        for over_ws in (True, False):
            turns = await conversation(session, pair.nginx.url, f"nginx-{over_ws}", 3, over_ws)
            assert all(t.ok for t in turns) and len({t.server for t in turns}) == 1
            assert all(t.cached > 0 for t in turns[1:])
        # Never through the balancer, percent-encoded or not (nginx matches
        # locations on the decoded path, as the boards route).
        for path in ("/admin/drain", "/%61dmin/drain", "/%61%64%6D%69%6E/drain"):
            async with session.post(URL(pair.nginx.url + path, encoded=True)) as response:
                assert response.status == 403, path
                # Refused by the balancer itself, not by a board it let it through to.
                assert "X-Rkstream-Server" not in response.headers, path


async def test_the_boards_read_the_client_address_nginx_forwards(pair: Pair) -> None:
    await client_address_is_forwarded(pair.nginx.url, pair.boards)


async def test_a_board_that_stops_hands_its_requests_on(pair: Pair) -> None:
    board = pair.boards[0]
    async with aiohttp.ClientSession() as session:
        async with session.post(board.url + "/admin/drain") as response:
            assert response.status == 202
        code = await asyncio.to_thread(board.wait, 10)
        assert code == 0
        turns = await asyncio.gather(*(sse_turn(session, pair.nginx.url, short(i))
                                       for i in range(8)))
    assert all(t.ok and t.server == "board2" for t in turns), [t.error for t in turns]
    await asyncio.to_thread(board.stop)
    board.start()
    await asyncio.to_thread(board.wait_healthy)


def requests_run(boards: list[Board]) -> float:
    """Requests the boards have ended, whatever the API or the outcome."""
    total = 0.0
    for board in boards:
        with urllib.request.urlopen(board.url + "/metrics", timeout=2) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("rkstream_requests_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_slow_non_streamed_answer_is_not_run_again(pair: Pair, tmp_path: Path
                                                          ) -> None:
    # nginx waits for a non-streamed answer's header until the answer is done;
    # past proxy_read_timeout (cut to 0.5 s here) it must give up, not send
    # the POST to the other board too.
    read_ms = int(500 * MS * 1000)
    nginx = Nginx(pair.boards, tmp_path, {"proxy_read_timeout 610s;":
                                          f"proxy_read_timeout {read_ms}ms;"})
    try:
        before = requests_run(pair.boards)
        delay_us = int(150_000 * MS * 1000)  # 10 tokens: three read timeouts long
        async with aiohttp.ClientSession() as session, session.post(
                nginx.url + "/v1/chat/completions",
                json={"messages": user(f"slow [[reply=x ]] [[n_tokens=10]] "
                                       f"[[token_delay_us={delay_us}]]")}) as response:
            assert response.status == 504
        await asyncio.sleep(2000 * MS)  # every run that began has ended (cancelled)
        assert requests_run(pair.boards) - before == 1
    finally:
        nginx.stop()
