"""Frame to first token, with and without encode-ahead.

One client keeps the model busy (the stand-in at 20 tokens/s); a camera
client streams 1920x1080 JPEG frames at 30 fps and, while the model is still
busy, asks about the newest frame. The figure is the time from the moment
the model became free (the busy request's response.done) to the camera
request's first token: its vision step plus prefill. With encode-ahead the
newest frame is already encoded, so it should mostly be prefill.

The encoder is the test suite's tiny ONNX encoder at 448x448 (256 tokens);
on a board the RKNN encoder costs far more, which encode-ahead then hides.

    python bench/vision_latency.py [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from common import free_port, wait_ready  # noqa: E402
from tiny_encoder import build_tiny_encoder  # noqa: E402

LIB = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"


def photo(seed: int) -> bytes:
    """A 1920x1080 JPEG that compresses like a camera frame (gradient and noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1080, 0:1920]
    base = np.stack([x * 255 / 1920, y * 255 / 1080, (x + y) * 255 / 3000], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()



async def recv(ws: aiohttp.ClientWebSocketResponse[Any]) -> dict[str, object]:
    event: dict[str, object] = msgpack.unpackb((await ws.receive()).data)
    return event


async def trial(url: str, frames: list[bytes], index: int) -> float:
    async with aiohttp.ClientSession() as session:
        busy = await session.ws_connect(url)
        camera = await session.ws_connect(url, max_msg_size=0)
        await recv(busy)
        await recv(camera)
        await busy.send_bytes(msgpack.packb({
            "type": "response.create", "request_id": "busy",
            "input": [{"role": "user", "content": "x [[n_tokens=30]]"}]}))
        seq = 0
        started = time.perf_counter()
        while time.perf_counter() - started < 1.0:  # 30 fps for one second
            # Bytes after the JPEG end marker are ignored by decoders but make
            # every frame unique, so no frame is ever found in the cache by chance.
            data = frames[seq % len(frames)] + f"{index}:{seq}".encode()
            await camera.send_bytes(msgpack.packb({
                "type": "frame.append", "stream": "cam", "seq": seq, "data": data}))
            seq += 1
            await asyncio.sleep(1 / 30)
        await camera.send_bytes(msgpack.packb({
            "type": "response.create", "request_id": f"now{index}",
            "input": [{"role": "user", "content": [
                {"type": "frame", "stream": "cam"},
                {"type": "text", "text": "what do you see now? [[token_delay_us=0]]"}]}]}))
        while (await recv(busy))["type"] != "response.done":
            pass
        free_s = time.perf_counter()
        while True:
            event = await recv(camera)
            if event["type"] == "response.output_text.delta":
                first_s = time.perf_counter()
                break
            assert event["type"] != "response.done", event
        while (await recv(camera))["type"] != "response.done":
            pass
        await busy.close()
        await camera.close()
    return (first_s - free_s) * 1000


async def measure(encoder: Path, model: Path, encode_ahead: bool, frames: list[bytes],
                  trials: int) -> list[float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--set", "engine=rkllm", "--rkllm-lib", str(LIB), "--model", str(model),
         "--set", f"vision.encoder={encoder}", "--set", "vision.preset=smolvlm",
         "--set", f"vision.encode_ahead={'on_request' if encode_ahead else 'off'}",
         "--log-level", "warning"], cwd=REPO)
    try:
        await wait_ready(server, port)
        url = f"http://127.0.0.1:{port}/ws"
        return [await trial(url, frames, i) for i in range(trials)]
    finally:
        server.terminate()
        server.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    frames = [photo(seed) for seed in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_tiny_encoder(Path(tmp) / "tiny.onnx", size=448, patch=28, width=16)
        model = Path(tmp) / "m.rkllm"
        model.write_text("#rkstream-standin\ntoken_delay_us = 50000\nembed_width = 16\n")
        rows = []
        for ahead in (True, False):
            times = await measure(encoder, model, ahead, frames, args.trials)
            rows.append((ahead, statistics.median(times), max(times)))
    print(f"1920x1080 JPEG frames ({len(frames[0]) // 1024} KB) at 30 fps, tiny ONNX "
          f"encoder 448x448, {args.trials} trials")
    print("| encode-ahead | frame -> first token, median ms | max ms |")
    print("|---|---|---|")
    for ahead, median, worst in rows:
        print(f"| {'on_request' if ahead else 'off'} | {median:.1f} | {worst:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
