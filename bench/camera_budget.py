"""What a 30 fps camera costs beside a text answer, per encode-ahead policy.

For each policy a fresh server runs on the stand-in (two instances, so a
frame question runs beside the answer) with the test suite's tiny ONNX
encoder at 448x448. During one window:

- a text client streams an answer at 50 tokens/s (the stand-in's delay);
- a camera client sends 1920x1080 JPEG frames at 30 fps: four scenes in
  turn, each held for one second (a robot that moves, then stops), or one
  scene throughout (the "static scene" rows: a fixed camera); every frame is
  a new shot with its own sensor noise and unique bytes, so nothing is ever
  found in the cache by its bytes;
- the camera client asks "what do you see now?" about its stream three
  times (in the middle of a scene).

Printed per policy: the server's CPU (server and worker processes, % of one
core), encodes per second (of which ahead), frames reused as unchanged per
second, the encoder's busy share, the answer's tokens/s and inter-token p99,
and the frame questions' median time to first token. The first row has no
camera, for reference.

    python bench/camera_budget.py [--window 8] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from prometheus_client.parser import text_string_to_metric_families

from common import free_port, wait_ready  # noqa: E402
from ws_latency import cpu_seconds, percentile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from camera_frames import scene  # noqa: E402
from tiny_encoder import build_tiny_encoder  # noqa: E402

LIB = REPO / "lib" / "build" / "librkllmrt-standin-1.3.so"
SCENES, SHOTS = 4, 6
TOKEN_DELAY_US = 20_000  # 50 tokens/s, a 1.5B model's pace on the board
UNLIMITED = {"encode_ahead": "rate", "encode_ahead_fps": "120",
             "encode_ahead_pause_while_generating": "false", "frame_change_threshold": "0"}
NOT_PAUSED = {"encode_ahead_pause_while_generating": "false"}
# (label, [vision] keys or None for no camera, whether the scene stays the same)
POLICIES: list[tuple[str, dict[str, str] | None, bool]] = [
    ("no camera", None, False),
    ("off", {"encode_ahead": "off"}, False),
    ("on_request", {"encode_ahead": "on_request"}, False),
    ("rate 1 fps, paused, threshold 2 (default)", {}, False),
    ("rate 1 fps, not paused, threshold 2", NOT_PAUSED, False),
    ("rate 2 fps, not paused, threshold 0",
     NOT_PAUSED | {"encode_ahead_fps": "2", "frame_change_threshold": "0"}, False),
    ("rate 120 fps, not paused, threshold 0 (as before)", UNLIMITED, False),
    ("static scene: rate 1 fps, not paused, threshold 2", NOT_PAUSED, True),
    ("static scene: rate 120 fps, not paused, threshold 0 (as before)", UNLIMITED, True),
]


@dataclass
class Row:
    label: str
    cpu: list[float] = field(default_factory=list)  # % of one core
    encodes: list[float] = field(default_factory=list)  # per second
    ahead: list[float] = field(default_factory=list)
    reused: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # % of the window
    rate: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    def line(self) -> str:
        def mean(values: list[float]) -> float:
            return statistics.fmean(values) if values else 0.0

        ttft = f"{statistics.median(self.ttft_ms):.1f}" if self.ttft_ms else "-"
        return (f"| {self.label} | {mean(self.cpu):.0f} | {mean(self.encodes):.1f} "
                f"({mean(self.ahead):.1f}) | {mean(self.reused):.1f} | {mean(self.busy):.1f} | "
                f"{mean(self.rate):.1f} | {percentile(self.gaps_ms, 0.99):.1f} | {ttft} |")


async def recv(ws: aiohttp.ClientWebSocketResponse[Any]) -> dict[str, Any]:
    event: dict[str, Any] = msgpack.unpackb((await ws.receive()).data)
    if event["type"] == "error":
        raise SystemExit(f"error event: {event}")
    return event


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # summed over labels, and by reason apart
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
            if "reason" in sample.labels:
                out[f"{sample.name}:{sample.labels['reason']}"] = sample.value
    return out


async def answer(ws: aiohttp.ClientWebSocketResponse[Any], tokens: int
                 ) -> tuple[float, list[float]]:
    """Stream one answer; its tokens/s and the gaps between deltas (ms)."""
    await ws.send_bytes(msgpack.packb({
        "type": "response.create", "request_id": "text", "params": {"max_tokens": tokens},
        "input": [{"role": "user", "content":
                   f"talk [[n_tokens={tokens}]] [[token_delay_us={TOKEN_DELAY_US}]]"}]}))
    arrivals: list[float] = []
    while (event := await recv(ws))["type"] != "response.done":
        if event["type"] == "response.output_text.delta":
            arrivals.append(time.perf_counter())
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), gaps


class Camera:
    """Sends frames at 30 fps and asks about them on the same connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Any], frames: list[list[bytes]],
                 static: bool) -> None:
        self.ws = ws
        self.frames = frames
        self.static = static
        self.first: dict[str, asyncio.Future[float]] = {}
        self.ttft_ms: list[float] = []

    async def stream(self, seconds: float) -> None:
        started = time.perf_counter()
        seq = 0
        while (now := time.perf_counter()) - started < seconds:
            shots = self.frames[0 if self.static else int(now - started) % SCENES]
            data = shots[seq % SHOTS] + seq.to_bytes(4, "big")  # after the end: unique
            await self.ws.send_bytes(msgpack.packb({
                "type": "frame.append", "stream": "cam", "seq": seq, "data": data}))
            seq += 1
            await asyncio.sleep(max(0.0, started + seq / 30 - time.perf_counter()))

    async def read(self) -> None:
        while True:
            event = await recv(self.ws)
            first = self.first.get(event.get("request_id", ""))
            if event["type"] == "response.output_text.delta" and first and not first.done():
                first.set_result(time.perf_counter())

    async def ask(self, rid: str) -> None:
        self.first[rid] = asyncio.get_running_loop().create_future()
        sent = time.perf_counter()
        await self.ws.send_bytes(msgpack.packb({
            "type": "response.create", "request_id": rid, "input": [{"role": "user", "content": [
                {"type": "frame", "stream": "cam"},
                {"type": "text", "text": "what do you see now? [[n_tokens=4]] "
                                         "[[token_delay_us=0]]"}]}]}))
        self.ttft_ms.append((await self.first[rid] - sent) * 1000)


async def window(base: str, pid: int, frames: list[list[bytes]] | None, static: bool,
                 seconds: float, row: Row) -> None:
    tokens = int(seconds * 1_000_000 / TOKEN_DELAY_US)
    async with aiohttp.ClientSession() as session:
        text = await session.ws_connect(f"{base}/ws")
        camera_ws = await session.ws_connect(f"{base}/ws", max_msg_size=0)
        await recv(text)
        await recv(camera_ws)
        before, cpu_before, started = await metrics(session, base), cpu_seconds(pid), \
            time.perf_counter()
        talk = asyncio.create_task(answer(text, tokens))
        if frames is not None:
            camera = Camera(camera_ws, frames, static)
            reader = asyncio.create_task(camera.read())
            sending = asyncio.create_task(camera.stream(seconds))
            for n in range(3):  # mid-scene, 2.5 s apart
                await asyncio.sleep(max(0.0, started + 1.5 + 2.5 * n - time.perf_counter()))
                await camera.ask(f"q{n}")
            await sending
            row.ttft_ms += camera.ttft_ms
        rate, gaps = await talk
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        after = await metrics(session, base)
        if frames is not None:
            reader.cancel()
        await text.close()
        await camera_ws.close()

    def per_s(name: str) -> float:
        return (after.get(name, 0.0) - before.get(name, 0.0)) / elapsed

    row.cpu.append(cpu / elapsed * 100)
    row.encodes.append(per_s("rkstream_vision_encodes_total"))
    row.ahead.append(per_s("rkstream_vision_encodes_total:ahead"))
    row.reused.append(per_s("rkstream_frames_unchanged_total"))
    row.busy.append(per_s("rkstream_vision_encoder_busy_seconds_total") * 100)
    row.rate.append(rate)
    row.gaps_ms += gaps


def serve(encoder: Path, model: Path, keys: dict[str, str]) -> tuple[subprocess.Popen[bytes],
                                                                     int]:
    port = free_port()
    command = [sys.executable, "-m", "rkstream", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--set", "engine=rkllm", "--rkllm-lib", str(LIB), "--model",
               str(model), "--set", "instances=2", "--set", f"vision.encoder={encoder}",
               "--set", "vision.preset=qwen2-vl", "--log-level", "warning"]
    for key, value in keys.items():
        command += ["--set", f"vision.{key}={value}"]
    return subprocess.Popen(command, cwd=REPO), port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=8.0, help="seconds per policy")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(REPO / "lib")], check=True)
    frames = [[scene(100 + s, shot, size=(1920, 1080)) for shot in range(SHOTS)]
              for s in range(SCENES)]
    rows = [Row(label) for label, _, _ in POLICIES]
    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_tiny_encoder(Path(tmp) / "tiny.onnx", size=448, patch=28, width=16)
        model = Path(tmp) / "qwen2-vl-bench.rkllm"  # a name with a chat family
        model.write_text("#rkstream-standin\nembed_width = 16\n")
        for _ in range(args.rounds):
            for row, (_, keys, static) in zip(rows, POLICIES, strict=True):
                server, port = serve(encoder, model, keys or {})
                try:
                    await wait_ready(server, port)
                    await window(f"http://127.0.0.1:{port}", server.pid,
                                 None if keys is None else frames, static, args.window, row)
                finally:
                    server.terminate()
                    server.wait(10)
    kb = sum(len(f) for shots in frames for f in shots) // (SCENES * SHOTS * 1024)
    print(f"1920x1080 JPEG frames ({kb} KB) at 30 fps, {SCENES} scenes held 1 s each; an "
          f"answer at {1_000_000 // TOKEN_DELAY_US} tokens/s beside it; tiny ONNX encoder "
          f"448x448; {args.window:g} s window, {args.rounds} round(s)")
    print("| policy | server CPU % | encodes/s (ahead) | reused/s | encoder busy % | "
          "answer tokens/s | inter-token p99 ms | frame question TTFT median ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    asyncio.run(main())
