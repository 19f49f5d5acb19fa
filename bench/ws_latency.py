"""Per-token delivery latency over /ws, with the stand-in runtime.

The stand-in stamps every token with CLOCK_MONOTONIC just before its C
callback fires; the client reads the same clock when the delta arrives, so
the difference is what rkstream adds (callback, bridge, loop, encoding,
socket). Each server runs as its own process; its CPU time per token comes
from /proc/<pid>/stat, summed over the server and every process under it
(with rkllm.isolation = "process", the worker that holds the handle).

One run starts rkstream once per isolation mode ("process": the handle in a
worker process, tokens over a pipe; "thread": the handle in the server
process) and the floor server, all at once, then runs the trials in rounds:
each round runs every scenario on every server, in an order that rotates
from round to round, so machine noise falls on all of them alike. A row
pools the tokens of all its rounds.

    python bench/ws_latency.py                        # both modes, 6 rounds
    python bench/ws_latency.py --quick                # shorter runs, 2 rounds
    python bench/ws_latency.py --isolation thread     # one mode only
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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgpack

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"
STAMP = re.compile(rb"\[(\d+)\]")
TICKS = os.sysconf("SC_CLK_TCK")
MODES = ("process", "thread")
FLOOR = "floor (bare thread + aiohttp)"
SLOW_DELAY_US = 50_000  # 20 tokens/s


@dataclass
class Result:
    name: str
    tokens: int
    seconds: float
    latencies_us: list[float]
    cpu_s: float
    messages: int

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_us)

    def row(self) -> str:
        lat = sorted(self.latencies_us)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"| {self.name} | {self.tokens} | {self.messages} | {self.p50:.0f} | {p99:.0f} | "
                f"{lat[-1]:.0f} | {self.tokens / self.seconds:,.0f} | "
                f"{self.cpu_s / self.tokens * 1e6:.1f} |")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``: from /proc/<pid>/task/*/children where the
    kernel has it (CONFIG_PROC_CHILDREN), else by each process's parent id."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return [int(child) for task in tasks.iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass  # gone meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and every process under it, now (a process
    counts only while it lives: read this before a worker exits)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = _stat_fields(current)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
        pending.extend(_children(current))
    return total / TICKS


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


@dataclass
class Server:
    label: str
    command: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    trials: dict[str, list[Result]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def rkstream_server(mode: str, model: Path, max_tokens: int) -> Server:
    port = free_port()
    return Server(f"rkstream {mode}", [
        sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--set", "engine=rkllm", "--rkllm-lib", str(LIB), "--model", str(model),
        "--log-level", "warning", "--set", f"rkllm.isolation={mode}",
        "--set", f"limits.max_tokens={max_tokens}",
        "--set", f"rkllm.max_new_tokens={max_tokens}"], port)


def floor_server() -> Server:
    port = free_port()
    return Server(FLOOR, [sys.executable, str(REPO / "bench" / "floor_server.py"), str(port)],
                  port)


def pooled(name: str, trials: list[Result]) -> Result:
    return Result(name, sum(t.tokens for t in trials), sum(t.seconds for t in trials),
                  [lat for t in trials for lat in t.latencies_us],
                  sum(t.cpu_s for t in trials), sum(t.messages for t in trials))


async def measure(servers: list[Server], scenarios: list[tuple[str, int, int]],
                  rounds: int) -> None:
    """Run every scenario on every server, ``rounds`` times, rotating the order."""
    for server in servers:
        server.process = subprocess.Popen(server.command, cwd=REPO)
    for server in servers:
        assert server.process is not None
        await wait_ready(server.process, server.port)
        await run_scenario(server.url, server.pid, "warm-up", 200, 0)
    for r in range(rounds):
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        for scenario, tokens, delay_us in scenarios:
            for server in order:
                result = await run_scenario(server.url, server.pid,
                                            f"{server.label}, {scenario}", tokens, delay_us)
                server.trials.setdefault(scenario, []).append(result)
        print(f"round {r + 1}/{rounds} done, load average "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()), file=sys.stderr)


def stop(servers: list[Server]) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        if server.process is not None:
            server.process.wait(10)


def compare(process: Server, thread: Server, scenario: str) -> str:
    p, t = process.trials[scenario], thread.trials[scenario]
    added = pooled("", p).p50 - pooled("", t).p50
    per_round = ", ".join(f"{a.p50 - b.p50:+.0f}" for a, b in zip(p, t, strict=True))
    cpu = (sum(a.cpu_s for a in p) / sum(a.tokens for a in p)
           - sum(b.cpu_s for b in t) / sum(b.tokens for b in t)) * 1e6
    return (f"process adds {added:.0f} µs p50 over thread at {scenario} "
            f"(per round: {per_round}); server CPU {cpu:+.1f} µs/token")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 2 rounds")
    parser.add_argument("--isolation", choices=("both", *MODES), default="both",
                        help="which rkllm.isolation modes to run (default both)")
    parser.add_argument("--rounds", type=int, help="rounds (default 6, --quick 2)")
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    slow_n, fast_n, rounds = (50, 25_000, 2) if args.quick else (100, 100_000, 6)
    rounds = args.rounds or rounds
    scenarios = [("20 tokens/s", slow_n, SLOW_DELAY_US), ("full speed", fast_n, 0)]
    modes = MODES if args.isolation == "both" else (args.isolation,)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.rkllm"
        model.write_text("#rkstream-standin\n")
        servers = [rkstream_server(mode, model, fast_n) for mode in modes]
        servers.append(floor_server())
        try:
            await measure(servers, scenarios, rounds)
        finally:
            stop(servers)
    load_after = os.getloadavg()
    print(f"{rounds} rounds; per round and server: {slow_n} tokens at 20 tokens/s, "
          f"{fast_n} at full speed")
    print("| scenario | tokens | WS messages | p50 µs | p99 µs | max µs | tokens/s "
          "delivered | server CPU µs/token |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, _, _ in scenarios:
        for server in servers:
            print(pooled(f"{server.label}, {scenario}", server.trials[scenario]).row())
    if len(modes) == 2:
        print()
        for scenario, _, _ in scenarios:
            print(compare(servers[0], servers[1], scenario))
    print()
    print("load average before: " + " ".join(f"{v:.2f}" for v in load_before)
          + "; after: " + " ".join(f"{v:.2f}" for v in load_after))


if __name__ == "__main__":
    asyncio.run(main())
