"""The real thing: HAProxy on docs/deploy/haproxy.cfg in front of three
``rkstream serve --standin`` processes, all on 127.0.0.1.

Only the addresses, the ports and the health-check pace change from the
shipped file (inter 2 s becomes INTER_MS, fastinter and downinter in step),
and each board drains for as many check rounds as the shipped README asks.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from scaleout_clients import Turn, conversation, short, sse_turn, user, ws_turn
from scaleout_cluster import Board, HAProxy, client_address_is_forwarded, get_json
from yarl import URL

from helpers import MS

INTER_MS = max(40, int(400 * MS * 1000))
# The shipped ratio: drain_s >= inter + fall x fastinter (3.5 s at inter 2 s), with room.
DRAIN_S = 4 * INTER_MS / 1000
NAMES = ("board1", "board2", "board3")
# /admin/drain as sent, and spelt so that only a decoded match sees /admin/.
ADMIN_PATHS = ("/admin/drain", "/%61dmin/drain", "/%61%64%6D%69%6E/drain")


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.boards = [Board(name, directory, DRAIN_S) for name in NAMES]
        for board in self.boards:
            board.start()
        for board in self.boards:
            board.wait_healthy()
        self.haproxy = HAProxy(self.boards, directory, INTER_MS)
        for name in NAMES:
            self.haproxy.wait_status(name, "UP", 10000 * MS)

    @property
    def url(self) -> str:
        return self.haproxy.url

    def restart(self, board: Board) -> None:
        board.stop()
        board.start()
        board.wait_healthy()
        self.haproxy.wait_status(board.name, "UP", 20000 * MS)

    def stop(self) -> None:
        self.haproxy.stop()
        for board in self.boards:
            board.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = None
    try:
        running = Cluster(tmp_path_factory.mktemp("haproxy"))
        yield running
    finally:
        if running is not None:
            running.stop()


def failures(turns: list[Turn]) -> list[str]:
    return [f"{t.api} on {t.server or '?'}: {t.error}" for t in turns if not t.ok]


async def run_load(base: str, clients: int, total: int | None = None,
                   until: asyncio.Event | None = None) -> list[Turn]:
    """``clients`` concurrent clients, /ws and SSE in turn, each request checked."""
    counter = itertools.count()
    turns: list[Turn] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            i = next(counter)
            if (total is not None and i >= total) or (until is not None and until.is_set()):
                return
            turn = await (ws_turn if i % 2 else sse_turn)(session, base, short(i))
            if turn.ok and turn.text != f"pong {i}":
                turn.ok, turn.error = False, f"wrong text {turn.text!r}"
            turns.append(turn)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return turns


async def test_mixed_load_is_answered_by_all_three(cluster: Cluster) -> None:
    turns = await run_load(cluster.url, clients=12, total=200)
    assert len(turns) == 200 and not failures(turns)
    assert {t.api for t in turns} == {"ws", "sse"}
    served = {name: sum(t.server == name for t in turns) for name in NAMES}
    assert all(count >= 20 for count in served.values()), served


async def test_a_conversation_keeps_its_board_and_its_cache(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        homes = {}
        for n, over_ws in zip(range(6), itertools.cycle((False, True))):
            key = f"conv-{n}"
            turns = await conversation(session, cluster.url, key, 3, over_ws)
            assert not failures(turns) and len(turns) == 3
            assert len({t.server for t in turns}) == 1, [t.server for t in turns]
            # The follow-ups were prefilled from what the board's KV cache held.
            assert turns[0].cached == 0 and all(t.cached > 0 for t in turns[1:]), \
                [t.cached for t in turns]
            homes[key] = turns[0].server
        assert len(set(homes.values())) >= 2, homes  # the keys spread over the boards
        # Without a key, the next turn lands wherever leastconn says: the board
        # itself still reuses its cache when that is where it went.
        again = await conversation(session, cluster.url, "conv-0", 1, False)
        assert again[0].server == homes["conv-0"]


async def test_admin_drain_is_not_reachable_through_the_balancer(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        # Percent-encoded too: the boards decode the path before routing.
        for path in ADMIN_PATHS:
            async with session.post(URL(cluster.url + path, encoded=True)) as response:
                assert response.status == 403, path
                # Refused by the balancer itself, not by a board it let it through to.
                assert "X-Rkstream-Server" not in response.headers, path
    assert all(get_json(board.url + "/health")[0] == 200 for board in cluster.boards)


async def test_the_boards_read_the_client_address_haproxy_forwards(cluster: Cluster) -> None:
    await client_address_is_forwarded(cluster.url, cluster.boards)


async def test_sigterm_under_load_loses_no_request(cluster: Cluster) -> None:
    board = cluster.boards[1]
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(cluster.url, clients=8, until=stop))
    await asyncio.sleep(1000 * MS)
    board.signal(signal.SIGTERM)
    # /health says draining at once; the board keeps serving until it stops.
    status, body = get_json(board.url + "/health")
    assert status == 503 and body["status"] == "draining" and body["server"] == "board2"
    code = await asyncio.to_thread(board.wait, DRAIN_S + 15)
    await asyncio.sleep(500 * MS)
    stop.set()
    turns = await load
    assert code == 0
    assert not failures(turns), failures(turns)[:5]
    assert sum(t.server == "board2" for t in turns) > 0  # it did serve before it left
    assert "drained: every request has ended" in board.log.read_text()
    await asyncio.to_thread(cluster.restart, board)


async def key_for(session: aiohttp.ClientSession, base: str, board: str) -> str:
    """A conversation key that HAProxy sends to ``board``."""
    for n in range(40):
        turn = await sse_turn(session, base, short(n), key=f"find-{n}")
        if turn.server == board:
            return f"find-{n}"
    raise AssertionError(f"no key of 40 went to {board}")


async def test_kill_9_mid_stream(cluster: Cluster) -> None:
    board = cluster.boards[2]
    long = user("a long answer [[reply=word ]] [[n_tokens=60]]")  # 3 s at 20 tokens/s
    async with aiohttp.ClientSession() as session:
        key = await key_for(session, cluster.url, board.name)
        started: list[Turn] = []
        streams = [asyncio.create_task(api(session, cluster.url, long, k, started))
                   for api, k in ((sse_turn, None), (ws_turn, None), (sse_turn, key),
                                  (ws_turn, key), (sse_turn, None), (ws_turn, None))]
        # Each stream has reached its board (the keyed ones queue on one instance),
        # and the board's first one is generating.
        while len(started) < len(streams) or not all(t.server for t in started) \
                or not any(t.text for t in started if t.server == board.name):
            await asyncio.sleep(20 * MS)
        board.signal(signal.SIGKILL)
        killed_s = time.monotonic()
        turns = await asyncio.gather(*streams)
        board.wait(10)
        cut = [t for t in turns if t.server == board.name and not t.ok]
        assert len(cut) >= 2  # at least the keyed ones: generating, or queued behind
        for turn in cut:  # cut short, and the client is told so
            assert len(turn.text) < len("word ") * 60, turn
            # SSE: the chunked body ends unfinished (HAProxy closes it); /ws: the
            # socket ends without a close frame (1006), and no response.done came:
            # rkstream.client says connection_lost.
            assert ("ClientPayloadError" if turn.api == "sse" else
                    "connection_lost: the connection to") in turn.error, turn.error
            assert turn.api == "sse" or "without a close frame" in turn.error, turn.error
            assert all(when < killed_s + 0.5 for when in turn.times_s)
        assert not failures([t for t in turns if t.server != board.name])
        # New requests, before and after HAProxy has marked the board down.
        fresh = await run_load(cluster.url, clients=4, total=24)
        assert not failures(fresh) and board.name not in {t.server for t in fresh}
        assert (await sse_turn(session, cluster.url, short(99), key=key)).ok
        await asyncio.to_thread(cluster.restart, board)
        assert get_json(board.url + "/health")[0] == 200
        back = await sse_turn(session, cluster.url, short(100), key=key)
        assert back.ok and back.server == board.name  # its conversations come home
