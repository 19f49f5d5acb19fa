"""Token delivery through SSE (/v1/chat/completions): rkstream beside two floors.

The same stamped stand-in tokens, servers, rounds and tables as
bench/ws_latency.py (see there), through ``POST /v1/chat/completions`` with
``"stream": true`` (no model named: the default model): per-token delivery
latency at 20 tokens/s and at full speed, server CPU per token, and time to
first token. Every server starts once; each round runs every scenario on
every row, in an order that rotates from round to round, then the TTFT
requests; a row pools all its rounds.

The rows:

- ``rkstream SSE``: rkstream (default ``rkllm.isolation``, "process")
  through /v1/chat/completions. With ``--loop both``, one server per event
  loop (``server.event_loop``); rows name the loop unless it is plain asyncio
  only.
- ``rkstream /ws (reference)``: the same rkstream server through /ws.
- ``floor: asyncio (runtime callback → call_soon_threadsafe → aiohttp)``:
  the SSE endpoint of bench/floor_server.py (the stand-in's callback hands
  each token to the loop, which awaits ``response.write`` in order).
- ``floor: threads (runtime callback → queue.Queue → the request's thread)``:
  the SSE endpoint of bench/floor_threaded.py (the callback puts each token
  in a ``queue.Queue``; the connection's own thread writes each chunk).
  Both floors run the stand-in through ctypes as the peers run the runtime
  (bench/floor_runtime.py), so every row starts from the same C stamp.

TTFT: short requests (``hi [[n_tokens=2]]``, no delay), 30 per round and
row, from sending the request to the first content delta; SSE requests go
over a kept-alive connection (one untimed request opens it), /ws over an open
WebSocket.

    python bench/sse_latency.py                 # 3 rounds
    python bench/sse_latency.py --quick         # shorter runs, 2 rounds
    python bench/sse_latency.py --loop both     # rkstream on asyncio and uvloop
    python bench/sse_latency.py --baseline REV  # and rkstream as it was at REV
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aiohttp

from ws_latency import (
    FAST,
    SLOW,
    SLOW_DELAY_US,
    STAMP,
    TTFT_COUNT,
    TTFT_PROMPT,
    Result,
    Target,
    add_baseline_argument,
    add_loop_argument,
    baseline_servers,
    baseline_tree,
    build_standin,
    cpu_seconds,
    floor_servers,
    print_load,
    print_tables,
    resolve_loops,
    rkstream_servers,
    run_all,
    run_ws,
    stamped_prompt,
    standin_model,
    ttft_ws,
)


def _chat_body(content: str, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"stream": True, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _content(line: bytes) -> str:
    """The delta text of one SSE line ('' for anything else)."""
    if not line.startswith(b"data: {"):
        return ""
    chunk = json.loads(line[6:])
    if "error" in chunk:
        raise SystemExit(f"SSE: error {chunk['error']}")
    return "".join(choice["delta"].get("content") or ""
                   for choice in chunk.get("choices") or ())


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status != 200:
        raise SystemExit(f"SSE: HTTP {response.status}: {(await response.text())[:300]}")


async def run_sse(base: str, pid: int, name: str, tokens: int, delay_us: int) -> Result:
    """One stamped streamed chat completion: every token's delivery latency."""
    body = _chat_body(stamped_prompt(tokens, delay_us), tokens)
    latencies: list[float] = []
    messages = 0
    async with aiohttp.ClientSession() as session:
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        async with session.post(f"{base}/v1/chat/completions", json=body) as response:
            await _check(response)
            async for line in response.content:
                now = time.monotonic_ns()
                text = _content(line)
                if text:
                    messages += 1
                for stamp in STAMP.findall(text.encode()):
                    latencies.append((now - int(stamp)) / 1000.0)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    assert len(latencies) == tokens, (len(latencies), tokens)
    return Result(name, tokens, seconds, latencies, cpu, messages)


async def _first_token(session: aiohttp.ClientSession, base: str) -> float:
    """Seconds from sending a short streamed request to its first content delta."""
    started = time.perf_counter()
    first = None
    async with session.post(f"{base}/v1/chat/completions",
                            json=_chat_body(TTFT_PROMPT)) as response:
        await _check(response)
        async for line in response.content:
            if first is None and _content(line):
                first = time.perf_counter()
    assert first is not None
    return first - started


async def ttft_sse(base: str, count: int) -> list[float]:
    """Milliseconds to the first delta of ``count`` short SSE requests, on one
    kept-alive connection (an untimed request opens it)."""
    async with aiohttp.ClientSession() as session:
        await _first_token(session, base)
        return [await _first_token(session, base) * 1000 for _ in range(count)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 2 rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 2)")
    add_loop_argument(parser)
    add_baseline_argument(parser)
    args = parser.parse_args()
    loops, pass_loop = resolve_loops(args.loop)
    build_standin()
    slow_n, fast_n, rounds = (50, 20_000, 2) if args.quick else (100, 100_000, 3)
    rounds = args.rounds or rounds
    scenarios = [(SLOW, slow_n, SLOW_DELAY_US), (FAST, fast_n, 0)]
    load_before = os.getloadavg()
    with standin_model() as model, baseline_tree(args.baseline) as tree:
        rkstreams = rkstream_servers(model, fast_n, (None,), loops, pass_loop)
        for server in baseline_servers(tree, args.baseline, model, fast_n, (None,)):
            server.suffix = f" @{args.baseline}"
            rkstreams.append(server)
        floors = floor_servers()
        targets = []
        for server in rkstreams:
            targets.append(Target(f"rkstream SSE{server.suffix}", server, run_sse, ttft_sse))
            targets.append(Target(f"rkstream /ws (reference){server.suffix}", server, run_ws,
                                  ttft_ws))
        targets += [Target(server.label, server, run_sse, ttft_sse) for server in floors]
        await run_all(rkstreams + floors, targets, scenarios, rounds)
    load_after = os.getloadavg()
    print(f"{rounds} rounds; per round and row: {slow_n} tokens at {SLOW}, "
          f"{fast_n} at {FAST}, {TTFT_COUNT} TTFT requests")
    print_tables(targets, scenarios, "messages",
                 f"ms from sending '{TTFT_PROMPT}' to its first content delta "
                 "(SSE on a kept-alive connection; /ws on an open WebSocket)")
    print()
    print_load(load_before, load_after)


if __name__ == "__main__":
    asyncio.run(main())
