"""Token delivery through SSE (/v1/chat/completions) beside /ws, same stand-in.

The same server and the same stamped stand-in tokens as bench/ws_latency.py:
per-token delivery latency at 20 tokens/s and at full speed, then time to
first token for 50 short requests on each path.

    python bench/sse_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgpack

from common import free_port, wait_ready
from ws_latency import LIB, REPO, STAMP, Result, cpu_seconds, run_scenario


async def run_sse(base: str, pid: int, name: str, tokens: int, delay_us: int) -> Result:
    prompt = f"bench [[n_tokens={tokens}]] [[token_delay_us={delay_us}]] [[stamp=1]]"
    body = {"model": "x", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": prompt}]}
    latencies: list[float] = []
    messages = 0
    async with aiohttp.ClientSession() as session:
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        async with session.post(f"{base}/v1/chat/completions", json=body) as response:
            async for line in response.content:
                now = time.monotonic_ns()
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    text = choice["delta"].get("content") or ""
                    if text:
                        messages += 1
                    for stamp in STAMP.findall(text.encode()):
                        latencies.append((now - int(stamp)) / 1000.0)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    assert len(latencies) == tokens, (len(latencies), tokens)
    return Result(name, tokens, seconds, latencies, cpu, messages)


async def ttft_ws(base: str, count: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{base}/ws")
        await ws.receive()
        for i in range(count):
            started = time.perf_counter()
            await ws.send_bytes(msgpack.packb({
                "type": "response.create", "request_id": f"t{i}",
                "input": [{"role": "user", "content": "hi [[n_tokens=2]]"}]}))
            first = None
            while True:
                event = msgpack.unpackb((await ws.receive()).data)
                if event["type"] == "response.output_text.delta" and first is None:
                    first = time.perf_counter()
                if event["type"] == "response.done":
                    break
            assert first is not None
            out.append((first - started) * 1000)
        await ws.close()
    return out


async def ttft_sse(base: str, count: int) -> list[float]:
    out = []
    body = {"model": "x", "stream": True,
            "messages": [{"role": "user", "content": "hi [[n_tokens=2]]"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            first = None
            async with session.post(f"{base}/v1/chat/completions", json=body) as response:
                async for line in response.content:
                    if first is None and line.startswith(b"data: {") and b'"content":"' in line \
                            and b'"content":""' not in line:
                        first = time.perf_counter()
            assert first is not None
            out.append((first - started) * 1000)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    slow_n, fast_n = (100, 20_000) if args.quick else (400, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.rkllm"
        model.write_text("#rkstream-standin\n")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--set", "engine=rkllm", "--rkllm-lib", str(LIB),
             "--model", str(model), "--log-level", "warning",
             "--set", f"limits.max_tokens={fast_n}", "--set", f"rkllm.max_new_tokens={fast_n}"],
            cwd=REPO)
        try:
            await wait_ready(server, port)
            base = f"http://127.0.0.1:{port}"
            await run_scenario(f"{base}/ws", server.pid, "warm-up", 200, 0)
            results = [
                await run_scenario(f"{base}/ws", server.pid, "/ws, 20 tokens/s", slow_n, 50_000),
                await run_sse(base, server.pid, "SSE, 20 tokens/s", slow_n, 50_000),
                await run_scenario(f"{base}/ws", server.pid, "/ws, full speed", fast_n, 0),
                await run_sse(base, server.pid, "SSE, full speed", fast_n, 0),
            ]
            ws_ttft = await ttft_ws(base, 50)
            sse_ttft = await ttft_sse(base, 50)
        finally:
            server.terminate()
            server.wait(10)
    print("| path | tokens | messages | p50 µs | p99 µs | max µs | tokens/s delivered | "
          "server CPU µs/token |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        print(result.row())
    print()
    print("| path | TTFT p50 ms | TTFT p99 ms (50 requests, stand-in with no delay) |")
    print("|---|---|---|")
    for name, values in (("/ws", ws_ttft), ("SSE", sse_ttft)):
        values.sort()
        print(f"| {name} | {statistics.median(values):.2f} | {values[-1]:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
