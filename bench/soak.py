"""Soak: 1,000 requests from 20 concurrent clients, with random cancels,
disconnects and malformed messages, against the stand-in runtime.

Afterwards it checks that nothing was lost or left behind:
- every request on a connection that stayed open got exactly one response.done;
- the queue is empty and no request is running (/metrics);
- every rkllm_run the runtime saw has ended (the stand-in's call records);
- the server's RSS grew by less than 20 MB after the warm-up.

    python bench/soak.py [--requests 1000] [--clients 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import msgpack

from common import free_port, wait_ready

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.done: Counter[str] = Counter()
        self.lost: list[str] = []
        self.duplicates: list[str] = []
        self.errors = 0
        self.dropped_with_socket = 0


async def client(url: str, index: int, quota: int, rng: random.Random, tally: Tally) -> None:
    remaining = quota
    while remaining > 0:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url)
            await ws.receive()  # session.created
            open_ids: set[str] = set()
            finished: set[str] = set()
            # A connection sends a handful of requests, then closes or drops.
            batch = min(remaining, rng.randint(1, 8))
            for n in range(batch):
                rid = f"c{index}-{remaining}-{n}"
                tokens = rng.randint(1, 40)
                delay = rng.choice((0, 0, 200, 1000))
                await ws.send_bytes(msgpack.packb({
                    "type": "response.create", "request_id": rid,
                    "input": [{"role": "user", "content":
                               f"soak [[n_tokens={tokens}]] [[token_delay_us={delay}]]"}]}))
                open_ids.add(rid)
                tally.sent += 1
                roll = rng.random()
                if roll < 0.15:
                    await ws.send_bytes(msgpack.packb({"type": "response.cancel",
                                                       "request_id": rid}))
                elif roll < 0.25:
                    await ws.send_bytes(rng.choice(
                        (b"\xc1", msgpack.packb([1]), msgpack.packb({"type": "nope"}))))
            remaining -= batch
            if rng.random() < 0.1:  # disconnect with requests still open
                await ws.close()
                tally.dropped_with_socket += len(open_ids)
                continue
            deadline = time.monotonic() + 60
            while open_ids - finished and time.monotonic() < deadline:
                msg = await ws.receive(timeout=60)
                event = msgpack.unpackb(msg.data)
                if event["type"] == "response.done":
                    rid = event["request_id"]
                    if rid in finished:
                        tally.duplicates.append(rid)
                    finished.add(rid)
                    tally.done[event["status"]] += 1
                elif event["type"] == "error":
                    tally.errors += 1
            tally.lost += sorted(open_ids - finished)
            await ws.close()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "calls.jsonl"
        model = Path(tmp) / "soak.rkllm"
        model.write_text(f"#rkstream-standin\nrecord = {records}\n")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--set", "engine=rkllm", "--rkllm-lib", str(LIB), "--model",
             str(model), "--log-level", "error", "--set", "limits.max_queue=1000"], cwd=REPO)
        try:
            await wait_ready(server, port)
            url = f"http://127.0.0.1:{port}/ws"
            warm = Tally()
            await client(url, 999, 50, random.Random(0), warm)
            rss_before = rss_mb(server.pid)
            tally = Tally()
            started = time.perf_counter()
            per_client = args.requests // args.clients
            await asyncio.gather(*(client(url, i, per_client, random.Random(rng.random()), tally)
                                   for i in range(args.clients)))
            elapsed = time.perf_counter() - started
            await asyncio.sleep(0.5)
            rss_after = rss_mb(server.pid)
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
        finally:
            server.terminate()
            server.wait(20)
        calls = [json.loads(line) for line in records.read_text().splitlines() if line]
    runs = sum(1 for c in calls if c["call"] == "run")
    ends = sum(1 for c in calls if c["call"] == "run_end")
    concurrent = sum(1 for c in calls if c["call"] == "run" and c["concurrent"])
    answered = sum(tally.done.values())
    checks = {
        "every request on an open socket got one response.done":
            not tally.lost and not tally.duplicates,
        "queue empty and nothing running":
            metric(metrics, "rkstream_queue_depth") == 0
            and metric(metrics, "rkstream_running_requests") == 0,
        "every rkllm_run ended, never two at once": runs == ends and concurrent == 0,
        "RSS grew by less than 20 MB": rss_after - rss_before < 20,
    }
    print(f"{tally.sent} requests from {args.clients} clients in {elapsed:.1f} s: "
          f"{answered} response.done {dict(tally.done)}, "
          f"{tally.dropped_with_socket} dropped with their socket, {tally.errors} errors for "
          f"malformed messages; runtime saw {runs} runs; RSS {rss_before:.1f} -> "
          f"{rss_after:.1f} MB")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if tally.lost:
        print("lost:", tally.lost[:10])
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    asyncio.run(main())
