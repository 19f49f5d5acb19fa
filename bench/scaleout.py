"""Aggregate tokens/s through HAProxy with one, two and three stand-in boards,
and the latency HAProxy adds to each token.

Three ``rkstream serve --standin`` processes (about 20 tokens/s each, one
instance) run on 127.0.0.1 behind HAProxy on docs/deploy/haproxy.cfg, with
only the addresses, the ports and the boards not in use taken out. For one,
two and three boards, ``--clients-per-board`` clients per board (enough to
keep each board's queue from running dry) send 40-token requests, /ws and
OpenAI SSE in turn, for ``--seconds``; every token that arrives in the window
counts. The scaling factor is three boards' tokens/s over one board's.

Latency per token: the stand-in stamps each token with CLOCK_MONOTONIC just
before its callback (``[[stamp=1]]``); the client reads the same clock when
the token arrives. The same requests go straight to a board and through
HAProxy, in alternating rounds, one client at a time; the difference of the
medians is what HAProxy adds.

The load for the tokens/s goes over /ws through ``rkstream.client``. The
latency rounds read /ws with a hand-written loop instead: the client hands each
event from its reader task to the caller through a queue, one more turn of the
event loop, which cost 0.05 to 0.13 ms per token at the median here (more at
p99), as much as HAProxy adds on /ws. The last row measures that cost: the same
requests straight to a board through ``rkstream.client``.

    python bench/scaleout.py                 # 20 s per board count
    python bench/scaleout.py --seconds 8     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgpack

from rkstream.client import AsyncClient, TextDelta

from common import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
HAPROXY_CFG = REPO / "docs" / "deploy" / "haproxy.cfg"
ANSWER = "go [[reply=w ]] [[n_tokens=40]]"  # 40 tokens, 2 s at 20 tokens/s
STAMPED = "go [[stamp=1]] [[n_tokens=40]]"
STAMP = re.compile(r"\[(\d+)\]")


def start_board(name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rkstream", "serve", "--standin", "--host", "127.0.0.1",
             "--port", str(port), "--set", f"server.id={name}", "--set", "log_level=warning",
             "--set", "limits.max_queue=256", "--set",
             "limits.max_connections_per_address=256"], stdout=out, stderr=subprocess.STDOUT)


def haproxy_config(ports: list[int], port: int, stats: Path) -> str:
    """The shipped config with these boards only (the others' lines taken out)."""
    text = HAPROXY_CFG.read_text().replace("bind :8080", f"bind 127.0.0.1:{port}")
    text = text.replace("/run/haproxy/admin.sock", str(stats))
    for index in (1, 2, 3):
        pattern = rf"(server board{index}) 192\.168\.1\.1{index}:8080"
        if index <= len(ports):
            text = re.sub(pattern, rf"\1 127.0.0.1:{ports[index - 1]}", text)
        else:
            text = re.sub(rf"\n\s*{pattern}[^\n]*", "", text)
    return text


async def sse(session: aiohttp.ClientSession, base: str, prompt: str,
              arrived: list[tuple[int, str]]) -> None:
    body = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    async with session.post(base + "/v1/chat/completions", json=body) as response:
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or []:
                    text = choice["delta"].get("content")
                    if text:
                        arrived.append((time.monotonic_ns(), text))


async def ws(_session: aiohttp.ClientSession, base: str, prompt: str,
             arrived: list[tuple[int, str]]) -> None:
    """One request on a new socket through rkstream.client (its own HTTP session)."""
    async with AsyncClient(base, reconnect=False) as client:
        async for event in client.stream(prompt):
            if isinstance(event, TextDelta):
                arrived.append((time.monotonic_ns(), event.text))


async def ws_raw(session: aiohttp.ClientSession, base: str, prompt: str,
                 arrived: list[tuple[int, str]]) -> None:
    """The same by hand: each token's time read as its message is decoded, with no
    hand-over between tasks (see the module's notes)."""
    async with session.ws_connect(base.replace("http", "ws", 1) + "/ws") as sock:
        await sock.receive()  # session.created
        await sock.send_bytes(msgpack.packb({"type": "response.create", "request_id": "r",
                                             "input": [{"role": "user", "content": prompt}]}))
        while True:
            event = msgpack.unpackb((await sock.receive()).data)
            if event["type"] == "response.output_text.delta":
                arrived.append((time.monotonic_ns(), event["delta"]))
            elif event["type"] == "response.done":
                return


async def throughput(base: str, clients: int, seconds: float) -> float:
    """Tokens/s that arrived at ``clients`` clients within the window."""
    arrived: list[tuple[int, str]] = []
    start = time.monotonic_ns() + 2_500_000_000  # after every board has a full queue
    end = start + int(seconds * 1e9)

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        while time.monotonic_ns() < end:
            await (ws if n % 2 else sse)(session, base, ANSWER, arrived)
            n += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(n, session) for n in range(clients)))
    tokens = sum(text.count("w ") for at, text in arrived if start <= at < end)
    return tokens / seconds


async def latency_us(base: str, api: str, requests: int) -> list[float]:
    """Per token: arrival minus the stand-in's stamp, in µs (``api``: ws, sse, or
    client: /ws through rkstream.client)."""
    out: list[float] = []
    read = {"ws": ws_raw, "sse": sse, "client": ws}[api]
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            arrived: list[tuple[int, str]] = []
            await read(session, base, STAMPED, arrived)
            for at, text in arrived:
                stamps = STAMP.findall(text)
                if len(stamps) == 1:  # a merged delta waited for its neighbour: skip it
                    out.append((at - int(stamps[0])) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="window per board count")
    parser.add_argument("--clients-per-board", type=int, default=3)
    parser.add_argument("--latency-rounds", type=int, default=3)
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    work = Path(tempfile.mkdtemp(prefix="rkstream-scaleout-"))
    ports = [free_port() for _ in range(3)]
    boards = [start_board(f"board{i + 1}", port, work / f"board{i + 1}.log")
              for i, port in enumerate(ports)]
    proxy: subprocess.Popen[bytes] | None = None
    rates: dict[int, float] = {}
    try:
        for board, port in zip(boards, ports, strict=True):
            await wait_ready(board, port)
        for count in (1, 2, 3):
            port = free_port()
            config = work / f"haproxy-{count}.cfg"
            config.write_text(haproxy_config(ports[:count], port, work / f"stats-{count}"))
            proxy = subprocess.Popen([haproxy, "-db", "-f", str(config)],  # no log lines
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(3.0)  # the first health checks mark the boards up
            rates[count] = await throughput(f"http://127.0.0.1:{port}",
                                            args.clients_per_board * count, args.seconds)
            print(f"{count} board(s): {rates[count]:.1f} tokens/s", flush=True)
            if count < 3:
                proxy.terminate()
                proxy.wait()
                proxy = None
        direct = f"http://127.0.0.1:{ports[0]}"
        balanced = f"http://127.0.0.1:{port}"
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.latency_rounds):
            for api in ("ws", "sse"):
                for label, base in (("direct", direct), ("haproxy", balanced)):
                    samples.setdefault((api, label), []).extend(
                        await latency_us(base, api, 3))
            samples.setdefault(("client", "direct"), []).extend(
                await latency_us(direct, "client", 3))
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        for board in boards:
            board.terminate()
            board.wait()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| boards | clients | tokens/s | per board | vs one board |")
    print("|---|---|---|---|---|")
    for count, rate in rates.items():
        print(f"| {count} | {args.clients_per_board * count} | {rate:.1f} | "
              f"{rate / count:.1f} | {rate / rates[1]:.2f}x |")
    print()
    print("| API | path | tokens | p50 µs | p99 µs | adds (p50) |")
    print("|---|---|---|---|---|---|")
    for api in ("ws", "sse"):
        direct_us = statistics.median(samples[(api, "direct")])
        for label in ("direct", "haproxy"):
            values = samples[(api, label)]
            added = "" if label == "direct" else \
                f"HAProxy {statistics.median(values) - direct_us:.0f} µs"
            print(f"| {api} | {label} | {len(values)} | {statistics.median(values):.0f} | "
                  f"{pct(values, 99):.0f} | {added} |")
    values = samples[("client", "direct")]
    cost = statistics.median(values) - statistics.median(samples[("ws", "direct")])
    print(f"| ws, rkstream.client | direct | {len(values)} | {statistics.median(values):.0f} | "
          f"{pct(values, 99):.0f} | the client {cost:.0f} µs |")
    print()
    print(f"{args.seconds:g} s window per row, 40-token answers at about 20 tokens/s per "
          "board (the stand-in), one instance per board, /ws and SSE in turn")


if __name__ == "__main__":
    asyncio.run(main())
