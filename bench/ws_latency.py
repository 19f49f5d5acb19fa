"""Per-token delivery latency over /ws, with the stand-in runtime.

The stand-in stamps every token with CLOCK_MONOTONIC just before its C
callback fires; the client reads the same clock when the delta arrives, so
the difference is what rkstream adds (callback, bridge, loop, encoding,
socket). The server runs as its own process; its CPU time per token comes
from /proc/<pid>/stat.

    python bench/ws_latency.py            # both scenarios
    python bench/ws_latency.py --quick    # shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"
STAMP = re.compile(rb"\[(\d+)\]")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    tokens: int
    seconds: float
    latencies_us: list[float]
    cpu_s: float
    messages: int

    def row(self) -> str:
        lat = sorted(self.latencies_us)
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"| {self.name} | {self.tokens} | {self.messages} | {p50:.0f} | {p99:.0f} | "
                f"{lat[-1]:.0f} | {self.tokens / self.seconds:,.0f} | "
                f"{self.cpu_s / self.tokens * 1e6:.1f} |")



def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def run_scenario(url: str, pid: int, name: str, tokens: int, delay_us: int) -> Result:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url, max_msg_size=0)
        first = msgpack.unpackb((await ws.receive()).data)
        assert first["type"] == "session.created", first
        prompt = f"bench [[n_tokens={tokens}]] [[token_delay_us={delay_us}]] [[stamp=1]]"
        request = {"type": "response.create", "request_id": name,
                   "input": [{"role": "user", "content": prompt}],
                   "params": {"max_tokens": tokens}}
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await ws.send_bytes(msgpack.packb(request))
        latencies: list[float] = []
        messages = 0
        while True:
            msg = await ws.receive()
            now = time.monotonic_ns()
            event = msgpack.unpackb(msg.data)
            if event["type"] == "response.output_text.delta":
                messages += 1
                for stamp in STAMP.findall(event["delta"].encode()):
                    latencies.append((now - int(stamp)) / 1000.0)
            elif event["type"] == "response.done":
                break
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        await ws.close()
    assert len(latencies) == tokens, (len(latencies), tokens)
    return Result(name, tokens, seconds, latencies, cpu, messages)



async def measure(command: list[str], port: int, label: str, slow_n: int, fast_n: int
                  ) -> list[Result]:
    server = subprocess.Popen(command, cwd=REPO)
    try:
        await wait_ready(server, port)
        url = f"http://127.0.0.1:{port}/ws"
        await run_scenario(url, server.pid, "warm-up", 200, 0)
        return [
            await run_scenario(url, server.pid, f"{label}, 20 tokens/s", slow_n, 50_000),
            await run_scenario(url, server.pid, f"{label}, full speed", fast_n, 0),
        ]
    finally:
        server.terminate()
        server.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    slow_n, fast_n = (100, 50_000) if args.quick else (400, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.rkllm"
        model.write_text("#rkstream-standin\n")
        port = free_port()
        results = await measure(
            [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--rkllm-lib", str(LIB), "--model", str(model),
             "--log-level", "warning", "--set", f"limits.max_tokens={fast_n}",
             "--set", f"rkllm.max_new_tokens={fast_n}"], port, "rkstream", slow_n, fast_n)
        port = free_port()
        results += await measure(
            [sys.executable, str(REPO / "bench" / "floor_server.py"), str(port)], port,
            "floor (bare thread + aiohttp)", slow_n, fast_n)
    print("| scenario | tokens | WS messages | p50 µs | p99 µs | max µs | tokens/s "
          "delivered | server CPU µs/token |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    asyncio.run(main())
