"""Per-token delivery latency over /ws, with the stand-in runtime, beside two floors.

The stand-in stamps every token with CLOCK_MONOTONIC just before its C
callback fires; the client reads the same clock when the delta arrives, so
the difference is what the server adds (callback, bridge, loop, encoding,
socket). Each server runs as its own process; its CPU time per token comes
from /proc/<pid>/stat, summed over the server and every process under it
(with rkllm.isolation = "process", the worker that holds the handle).

One run starts every server at once, then runs the trials in rounds: each
round runs every scenario on every server, in an order that rotates from
round to round, so machine noise falls on all of them alike, and then
measures the time to first token (TTFT) on each. A row pools all its rounds.

The rows:

- ``rkstream process``: rkstream with ``rkllm.isolation = "process"`` (the
  handle in a worker process, tokens over a pipe).
- ``rkstream thread``: ``rkllm.isolation = "thread"`` (the handle in the
  server process). With ``--loop both`` each mode runs once per event loop
  (``server.event_loop``); rows name the loop unless it is plain asyncio only.
- the floors run the same stand-in runtime the way the peers run
  librkllmrt.so (bench/floor_runtime.py: one handle through ctypes, its
  result callback on the runtime's thread), so every row starts from the
  same C stamp, and add only their handoff and write:
  - ``floor: asyncio (runtime callback → call_soon_threadsafe → aiohttp)``:
    bench/floor_server.py; the callback hands each token to an aiohttp loop
    with one ``call_soon_threadsafe``; the least an asyncio server adds. It
    always runs on the standard asyncio loop.
  - ``floor: threads (runtime callback → queue.Queue → the request's
    thread)``: bench/floor_threaded.py, a thread per connection (as gunicorn
    gthread or Flask, the fastest peers' design): the callback puts each
    token in a ``queue.Queue`` and the connection's thread writes it to the
    socket with ``sendall``.
  - ``floor: asyncio + writer thread``: bench/floor_server.py
    ``--writer-thread``: aiohttp accepts the socket and writes everything but
    the deltas, which go from the callback through a ``queue.Queue`` to a
    thread that owns the socket's writes during the run (the threaded
    floor's handoff inside an asyncio server, safe there only because
    nothing else writes during a run). ``--no-writer-floor`` leaves it out.

Scenarios: "20 tokens/s" (one token every 50 ms, as a board generates) and
"full speed" (no delay: how many tokens per second the path delivers). TTFT:
short requests (``hi [[n_tokens=2]]``, no delay) on an open WebSocket, from
sending ``response.create`` to the first delta, 30 per round and server.

    python bench/ws_latency.py                        # both modes, 3 rounds
    python bench/ws_latency.py --quick                # shorter runs, 2 rounds
    python bench/ws_latency.py --isolation thread     # one mode only
    python bench/ws_latency.py --loop both            # rkstream on asyncio and uvloop
    python bench/ws_latency.py --baseline REV         # and rkstream as it was at REV
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
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
LOOPS = ("asyncio", "uvloop")
FLOOR_ASYNCIO = "floor: asyncio (runtime callback → call_soon_threadsafe → aiohttp)"
FLOOR_THREADS = "floor: threads (runtime callback → queue.Queue → the request's thread)"
FLOOR_WRITER = "floor: asyncio + writer thread (callback → queue.Queue → the socket's thread)"
SLOW_DELAY_US = 50_000  # 20 tokens/s
SLOW, FAST = "20 tokens/s", "full speed"
TTFT_PROMPT = "hi [[n_tokens=2]]"
TTFT_COUNT = 30  # per round and server


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


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

    @property
    def p99(self) -> float:
        return percentile(self.latencies_us, 0.99)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.tokens * 1e6

    def row(self) -> str:
        return (f"| {self.name} | {self.tokens} | {self.messages} | {self.p50:.0f} | "
                f"{self.p99:.0f} | {max(self.latencies_us):.0f} | {self.rate:,.0f} | "
                f"{self.cpu_us:.1f} |")


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
    """utime + stime of ``pid`` (all its threads) and every process under it,
    now (a process counts only while it lives: read this before a worker exits)."""
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


def stamped_prompt(tokens: int, delay_us: int) -> str:
    return f"bench [[n_tokens={tokens}]] [[token_delay_us={delay_us}]] [[stamp=1]]"


# -- the /ws client --------------------------------------------------------------------
async def _ws_event(ws: aiohttp.ClientWebSocketResponse[bool]) -> dict[str, object]:
    msg = await ws.receive()
    if msg.type != aiohttp.WSMsgType.BINARY:
        raise SystemExit(f"/ws: expected a binary message, got {msg.type!r} {msg.data!r}")
    event: dict[str, object] = msgpack.unpackb(msg.data)
    if event["type"] == "error":
        raise SystemExit(f"/ws: error event {event}")
    return event


async def _ws_open(session: aiohttp.ClientSession,
                   base: str) -> aiohttp.ClientWebSocketResponse[bool]:
    ws = await session.ws_connect(f"{base}/ws", max_msg_size=0)
    first = await _ws_event(ws)
    assert first["type"] == "session.created", first
    return ws


async def run_ws(base: str, pid: int, name: str, tokens: int, delay_us: int) -> Result:
    """One stamped request on /ws: every token's delivery latency."""
    async with aiohttp.ClientSession() as session:
        ws = await _ws_open(session, base)
        request = {"type": "response.create", "request_id": name,
                   "input": [{"role": "user", "content": stamped_prompt(tokens, delay_us)}],
                   "params": {"max_tokens": tokens}}
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await ws.send_bytes(msgpack.packb(request))
        latencies: list[float] = []
        messages = 0
        while True:
            msg = await ws.receive()
            now = time.monotonic_ns()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise SystemExit(f"/ws: the stream ended early: {msg.type!r} {msg.data!r}")
            event = msgpack.unpackb(msg.data)
            if event["type"] == "response.output_text.delta":
                messages += 1
                for stamp in STAMP.findall(event["delta"].encode()):
                    latencies.append((now - int(stamp)) / 1000.0)
            elif event["type"] == "response.done":
                break
            elif event["type"] == "error":
                raise SystemExit(f"/ws: error event {event}")
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        await ws.close()
    assert len(latencies) == tokens, (len(latencies), tokens)
    return Result(name, tokens, seconds, latencies, cpu, messages)


async def ttft_ws(base: str, count: int) -> list[float]:
    """Milliseconds from sending a short request on an open /ws to its first delta."""
    out = []
    async with aiohttp.ClientSession() as session:
        ws = await _ws_open(session, base)
        for i in range(count):
            started = time.perf_counter()
            await ws.send_bytes(msgpack.packb({
                "type": "response.create", "request_id": f"t{i}",
                "input": [{"role": "user", "content": TTFT_PROMPT}]}))
            first = None
            while True:
                event = await _ws_event(ws)
                if event["type"] == "response.output_text.delta" and first is None:
                    first = time.perf_counter()
                if event["type"] == "response.done":
                    break
            assert first is not None
            out.append((first - started) * 1000)
        await ws.close()
    return out


# -- servers, rounds and tables (bench/sse_latency.py uses these too) -----------------
Run = Callable[[str, int, str, int, int], Awaitable[Result]]
Ttft = Callable[[str, int], Awaitable[list[float]]]


@dataclass
class Server:
    """One server process."""
    label: str
    command: list[str]
    port: int
    suffix: str = ""  # ", <loop>" when rkstream runs on more than one loop
    process: subprocess.Popen[bytes] | None = None
    cwd: Path = REPO  # the checkout it runs from (--baseline: an older one)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class Target:
    """One row: a server reached through one client (a path)."""
    label: str
    server: Server
    run: Run
    ttft: Ttft
    trials: dict[str, list[Result]] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)

    def pooled(self, scenario: str) -> Result:
        return pooled(f"{self.label}, {scenario}", self.trials[scenario])


def build_standin() -> None:
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)


@contextmanager
def standin_model() -> Iterator[Path]:
    """A model file the stand-in accepts (served as "bench", the default model)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.rkllm"
        model.write_text("#rkstream-standin\n")
        yield model


@contextmanager
def baseline_tree(rev: str | None) -> Iterator[Path | None]:
    """A checkout of ``rev`` (a git worktree, removed afterwards), to run the
    rkstream of an earlier commit beside this one in the same run."""
    if rev is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=REPO,
                       check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           check=False)


def baseline_servers(tree: Path | None, rev: str | None, model: Path, max_tokens: int,
                     modes: tuple[str | None, ...]) -> list[Server]:
    """rkstream as it was at ``rev``, on its default event loop, labelled "@rev"."""
    if tree is None or rev is None:
        return []
    servers = []
    for mode in modes:
        server = rkstream_server(f"rkstream{f' {mode}' if mode else ''} @{rev}", model,
                                 max_tokens, mode)
        server.cwd = tree  # python -m rkstream imports the package from its cwd first
        servers.append(server)
    return servers


def add_baseline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", metavar="REV",
                        help="also run rkstream as it was at this git revision (a worktree), "
                             "to compare before and after in one run")


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--loop", choices=("both", *LOOPS), default="asyncio",
                        help="rkstream's server.event_loop (default asyncio; both = a server "
                             "per loop); the floors always run as they are")


def resolve_loops(choice: str) -> tuple[tuple[str, ...], bool]:
    """The loops to run rkstream on, and whether to pass ``server.event_loop``
    (False only for plain asyncio on an rkstream that predates the setting)."""
    loops = LOOPS if choice == "both" else (choice,)
    if "uvloop" in loops and importlib.util.find_spec("uvloop") is None:
        raise SystemExit(f"--loop {choice}: uvloop is not installed in {sys.executable} "
                         "(pip install uvloop), so rkstream cannot run on it")
    known = True
    for loop in loops:
        check = subprocess.run(
            [sys.executable, "-m", "rkstream", "config", "--set", f"server.event_loop={loop}"],
            cwd=REPO, capture_output=True, text=True)
        if check.returncode == 0:
            continue
        if "server.event_loop" in check.stderr and "unknown key" in check.stderr:
            if loops == ("asyncio",):
                print("note: this rkstream has no server.event_loop setting; it runs on its "
                      "default loop", file=sys.stderr)
                known = False
                continue
            raise SystemExit(f"--loop {choice}: this rkstream has no server.event_loop setting")
        raise SystemExit(f"rkstream refuses server.event_loop={loop}: {check.stderr.strip()}")
    return loops, known


def rkstream_server(label: str, model: Path, max_tokens: int, mode: str | None = None,
                    loop: str | None = None, suffix: str = "") -> Server:
    """rkstream on the stand-in; ``mode`` and ``loop`` set rkllm.isolation and
    server.event_loop (None: the default)."""
    port = free_port()
    command = [
        sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--set", "engine=rkllm", "--rkllm-lib", str(LIB), "--model", str(model),
        "--log-level", "warning",
        "--set", f"limits.max_tokens={max_tokens}", "--set", f"rkllm.max_new_tokens={max_tokens}"]
    if mode is not None:
        command += ["--set", f"rkllm.isolation={mode}"]
    if loop is not None:
        command += ["--set", f"server.event_loop={loop}"]
    return Server(label, command, port, suffix)


def rkstream_servers(model: Path, max_tokens: int, modes: tuple[str | None, ...],
                     loops: tuple[str, ...], pass_loop: bool) -> list[Server]:
    """One rkstream per mode and loop, labelled "rkstream <mode>", plus ", <loop>"
    unless the only loop is the default asyncio."""
    servers = []
    for loop in loops:
        for mode in modes:
            suffix = f", {loop}" if loops != ("asyncio",) else ""
            label = "rkstream" + (f" {mode}" if mode else "") + suffix
            servers.append(rkstream_server(label, model, max_tokens, mode,
                                           loop if pass_loop else None, suffix))
    return servers


def floor_servers(writer_thread: bool = False) -> list[Server]:
    """The asyncio floor and the threaded floor (and, for /ws, the asyncio server
    whose deltas a writer thread sends)."""
    bench = REPO / "bench"
    floors: list[tuple[str, str, list[str]]] = [
        (FLOOR_ASYNCIO, "floor_server.py", []), (FLOOR_THREADS, "floor_threaded.py", [])]
    if writer_thread:
        floors.append((FLOOR_WRITER, "floor_server.py", ["--writer-thread"]))
    out = []
    for label, script, extra in floors:
        port = free_port()
        out.append(Server(label, [sys.executable, str(bench / script), str(port), *extra],
                          port))
    return out


def pooled(name: str, trials: list[Result]) -> Result:
    return Result(name, sum(t.tokens for t in trials), sum(t.seconds for t in trials),
                  [lat for t in trials for lat in t.latencies_us],
                  sum(t.cpu_s for t in trials), sum(t.messages for t in trials))


async def measure(servers: list[Server], targets: list[Target],
                  scenarios: list[tuple[str, int, int]], rounds: int,
                  ttft_count: int = TTFT_COUNT) -> None:
    """Start the servers; run every scenario on every target, then TTFT on each,
    ``rounds`` times, rotating the order of the targets from round to round."""
    for server in servers:
        server.process = subprocess.Popen(server.command, cwd=server.cwd)
    for server in servers:
        assert server.process is not None
        await wait_ready(server.process, server.port)
    for target in targets:
        await target.run(target.server.base, target.server.pid, "warm-up", 200, 0)
        await target.ttft(target.server.base, 3)
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for scenario, tokens, delay_us in scenarios:
            for target in order:
                result = await target.run(target.server.base, target.server.pid,
                                          f"{target.label}, {scenario}", tokens, delay_us)
                target.trials.setdefault(scenario, []).append(result)
        for target in order:
            target.ttft_ms.extend(await target.ttft(target.server.base, ttft_count))
        print(f"round {r + 1}/{rounds} done, load average "
              + " ".join(f"{v:.2f}" for v in os.getloadavg()), file=sys.stderr)


def stop(servers: list[Server]) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        if server.process is not None:
            server.process.wait(10)


async def run_all(servers: list[Server], targets: list[Target],
                  scenarios: list[tuple[str, int, int]], rounds: int) -> None:
    try:
        await measure(servers, targets, scenarios, rounds)
    finally:
        stop(servers)


def print_tables(targets: list[Target], scenarios: list[tuple[str, int, int]],
                 messages: str, ttft_what: str) -> None:
    """Every scenario of every target, then one summary row per target."""
    print(f"| scenario | tokens | {messages} | p50 µs | p99 µs | max µs | tokens/s delivered "
          "| server CPU µs/token |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario, _, _ in scenarios:
        for target in targets:
            print(target.pooled(scenario).row())
    print()
    print(f"| server | {SLOW}: p50 µs | p99 µs | CPU µs/token | TTFT p50 ms | TTFT p99 ms | "
          f"{FAST}: tokens/s | CPU µs/token |")
    print("|---|---|---|---|---|---|---|---|")
    for target in targets:
        slow, fast = target.pooled(SLOW), target.pooled(FAST)
        print(f"| {target.label} | {slow.p50:.0f} | {slow.p99:.0f} | {slow.cpu_us:.1f} | "
              f"{statistics.median(target.ttft_ms):.2f} | "
              f"{percentile(target.ttft_ms, 0.99):.2f} | {fast.rate:,.0f} | "
              f"{fast.cpu_us:.1f} |")
    print()
    print(f"TTFT: {ttft_what}, {len(targets[0].ttft_ms)} per server")


def print_load(before: tuple[float, float, float], after: tuple[float, float, float]) -> None:
    print("load average before: " + " ".join(f"{v:.2f}" for v in before)
          + "; after: " + " ".join(f"{v:.2f}" for v in after))


def compare(process: Target, thread: Target, scenario: str) -> str:
    p, t = process.trials[scenario], thread.trials[scenario]
    added = pooled("", p).p50 - pooled("", t).p50
    per_round = ", ".join(f"{a.p50 - b.p50:+.0f}" for a, b in zip(p, t, strict=True))
    cpu = pooled("", p).cpu_us - pooled("", t).cpu_us
    return (f"{process.label} adds {added:.0f} µs p50 over {thread.label} at {scenario} "
            f"(per round: {per_round}); server CPU {cpu:+.1f} µs/token")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 2 rounds")
    parser.add_argument("--isolation", choices=("both", *MODES), default="both",
                        help="which rkllm.isolation modes to run (default both)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 2)")
    parser.add_argument("--no-writer-floor", action="store_true",
                        help="leave out the asyncio + writer thread floor")
    add_loop_argument(parser)
    add_baseline_argument(parser)
    args = parser.parse_args()
    loops, pass_loop = resolve_loops(args.loop)
    build_standin()
    slow_n, fast_n, rounds = (50, 25_000, 2) if args.quick else (100, 100_000, 3)
    rounds = args.rounds or rounds
    scenarios = [(SLOW, slow_n, SLOW_DELAY_US), (FAST, fast_n, 0)]
    modes: tuple[str, ...] = MODES if args.isolation == "both" else (args.isolation,)
    load_before = os.getloadavg()
    with standin_model() as model, baseline_tree(args.baseline) as tree:
        servers = (rkstream_servers(model, fast_n, modes, loops, pass_loop)
                   + baseline_servers(tree, args.baseline, model, fast_n, modes)
                   + floor_servers(writer_thread=not args.no_writer_floor))
        targets = [Target(server.label, server, run_ws, ttft_ws) for server in servers]
        await run_all(servers, targets, scenarios, rounds)
    load_after = os.getloadavg()
    print(f"{rounds} rounds; per round and server: {slow_n} tokens at {SLOW}, "
          f"{fast_n} at {FAST}, {TTFT_COUNT} TTFT requests")
    print_tables(targets, scenarios, "WS messages",
                 f"ms from sending '{TTFT_PROMPT}' on an open /ws to its first delta")
    if len(modes) == 2:
        print()
        for i in range(0, len(loops) * 2, 2):
            for scenario, _, _ in scenarios:
                print(compare(targets[i], targets[i + 1], scenario))
    print()
    print_load(load_before, load_after)


if __name__ == "__main__":
    asyncio.run(main())
