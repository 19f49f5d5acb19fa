"""Time to first token when the request must load its model, against one already loaded.

One server process with two [models.<name>] entries on the same GGUF (the
bundled SmolLM2-135M-Instruct, or --model) on the CPU engine: "warm" is the
default model, loaded at start and kept; "cold" has keep_alive 0, so every
request for it loads it, answers, and unloads it. Each round asks both the
same short question over /ws and reads, from the client's clock, the time to
the first text, and from response.done the server's load_ms (the wait for the
model to load).

    python bench/model_load.py [--rounds 10] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rkstream.client import AsyncClient, Done, TextDelta
from rkstream.engines.llamacpp.model import resolve_model

from common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Question {}: name a colour."


def config(model: Path) -> str:
    return f"""
[pool]
default_model = "warm"

[models.warm]
model = "{model}"
context = 1024

[models.cold]
model = "{model}"
context = 1024
keep_alive = "0"
"""


async def ask(client: AsyncClient, model: str, text: str, tokens: int
              ) -> tuple[float, Done]:
    """(client TTFT in ms, the response.done event)."""
    started = time.perf_counter()
    first = None
    async for event in client.stream(text, model=model, max_tokens=tokens, temperature=0,
                                     top_k=1):
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter()
        elif isinstance(event, Done):
            assert first is not None, event
            return (first - started) * 1000.0, event
    raise AssertionError("the stream ended without its response.done")


async def measure(model: Path, rounds: int, tokens: int
                  ) -> dict[str, list[tuple[float, float, float]]]:
    """(client TTFT ms, server load_ms, server prefill ms) per round, for warm and cold."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(config(model), encoding="utf-8")
        server = subprocess.Popen(
            [sys.executable, "-m", "rkstream", "serve", "--config", str(path), "--host",
             "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=REPO)
        out: dict[str, list[tuple[float, float, float]]] = {"warm": [], "cold": []}
        try:
            await wait_ready(server, port, 120)
            async with AsyncClient(f"127.0.0.1:{port}") as client:
                for n in range(rounds + 1):  # the first round warms up both paths
                    for name in ("warm", "cold"):
                        ttft, done = await ask(client, name, PROMPT.format(n), tokens)
                        if n:
                            timings = done.timings
                            out[name].append((ttft, timings.load_ms or 0.0,
                                              timings.prompt_ms or 0.0))
                    await asyncio.sleep(0.2)  # the cold model's unload ends
        finally:
            server.terminate()
            server.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    model = resolve_model(args.model)
    runs = asyncio.run(measure(model, args.rounds, args.tokens))
    print(f"model {model.name} ({model.stat().st_size / 2**20:.0f} MiB), CPU engine, "
          f"median of {args.rounds} rounds")
    print("| request | TTFT ms (client) | TTFT p90 ms | load_ms (server) | prefill ms (server) |")
    print("|---|---|---|---|---|")
    for name, label in (("warm", "model loaded"), ("cold", "model loads first")):
        ttfts = sorted(t for t, _, _ in runs[name])
        loads = [load for _, load, _ in runs[name]]
        prefills = [prefill for _, _, prefill in runs[name]]
        p90 = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))]
        print(f"| {label} | {statistics.median(ttfts):.1f} | {p90:.1f} | "
              f"{statistics.median(loads):.1f} | {statistics.median(prefills):.1f} |")
    cold = statistics.median(t for t, _, _ in runs["cold"])
    warm = statistics.median(t for t, _, _ in runs["warm"])
    print(f"\nloading costs {cold - warm:.0f} ms of time to first token ({cold / warm:.1f}x)")


if __name__ == "__main__":
    main()
