"""How fast an HTTP client's disconnect reaches rkllm_abort, during a long prefill.

The server runs the RKLLM engine on the 1.3 stand-in with a 3 s prefill and
writes the stand-in's call records. Each trial posts a chat completion,
waits 200 ms, closes the connection, and reads when the stand-in saw
``rkllm_abort`` (CLOCK_MONOTONIC, the same clock as ``time.monotonic_ns``).

    python bench/http_disconnect.py [--trials 20] [--handler-cancellation on|off|both]

It imports ``rkstream`` from the path it is run with, so an older checkout
can be measured with ``PYTHONPATH=/path/to/checkout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from aiohttp import web

from rkstream.config import RKLLMSettings, Settings
from rkstream.server.app import make_app

from common import free_port

REPO = Path(__file__).resolve().parent.parent
STANDIN = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"


def _aborts(path: Path) -> list[int]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r["t_ns"] for r in rows if r["call"] == "abort"]


async def _trial(session: aiohttp.ClientSession, url: str, records: Path, streamed: bool
                 ) -> float:
    before = len(_aborts(records))
    body = {"messages": [{"role": "user", "content": "slow"}], "stream": streamed}
    request = asyncio.ensure_future(session.post(url, json=body))
    await asyncio.sleep(0.2)
    gone_ns = time.monotonic_ns()
    if request.done():  # a streamed answer's headers came: close the response
        request.result().close()
    else:
        request.cancel()  # aiohttp closes the connection
        await asyncio.gather(request, return_exceptions=True)
    for _ in range(400):
        aborts = _aborts(records)
        if len(aborts) > before:
            return (aborts[-1] - gone_ns) / 1e6
        await asyncio.sleep(0.005)
    raise SystemExit("no rkllm_abort within 2 s of the disconnect")


async def measure(cancellation: bool, trials: int, streamed: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "calls.jsonl"
        model = Path(tmp) / "slow.rkllm"
        model.write_text(f"#rkstream-standin\nrecord = {records}\n"
                         "prefill_delay_us = 3000000\n")
        settings = replace(Settings(), engine="rkllm", rkllm=replace(
            RKLLMSettings(), library=str(STANDIN), model=str(model)))
        runner = web.AppRunner(make_app(settings), handler_cancellation=cancellation)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            out = []
            async with aiohttp.ClientSession() as session:
                for _ in range(trials):
                    out.append(await _trial(session, url, records, streamed))
                    await asyncio.sleep(0.05)  # the aborted run ends and frees the model
            return out
        finally:
            await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--handler-cancellation", choices=("on", "off", "both"),
                        default="both")
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.handler_cancellation]
    print("| handler_cancellation | answer | trials | p50 ms | max ms |")
    print("|---|---|---|---|---|")
    for cancellation in modes:
        for streamed in (False, True):
            ms = await measure(cancellation, args.trials, streamed)
            print(f"| {'on' if cancellation else 'off'} | "
                  f"{'streamed' if streamed else 'whole'} | {len(ms)} | "
                  f"{statistics.median(ms):.1f} | {max(ms):.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
