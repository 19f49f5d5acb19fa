"""nginx on docs/deploy/nginx.conf in front of two ``rkstream serve --standin``
processes on 127.0.0.1: streamed answers are not buffered, /ws upgrades, a
conversation keeps its board, and a board that stops hands its requests on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from scaleout_clients import conversation, short, sse_turn, user, ws_turn
from scaleout_cluster import Board, Nginx, client_address_is_forwarded

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
        async with session.post(pair.nginx.url + "/admin/drain") as response:
            assert response.status == 403  # never through the balancer


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
