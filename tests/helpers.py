"""Shared test helpers: the timing unit, a protocol-v1 WebSocket client, a text sink,
the stand-in's context reply, and the names test servers serve their models under."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest
from PIL import Image

from rkstream.config import RKLLMSettings, Settings
from rkstream.models.pool import Resident
from rkstream.models.table import top_level_name
from rkstream.server.state import STATE, AppState

# One timing unit for every test timeout; raise RKSTREAM_TEST_TIMING on a slow machine.
MS = float(os.environ.get("RKSTREAM_TEST_TIMING", "1")) / 1000.0


class WSClient:
    """A small protocol client written from docs/protocol.md only."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Any], encoding: str = "msgpack"
                 ) -> None:
        self.ws = ws
        self.encoding = encoding
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any], *, as_text: bool | None = None) -> None:
        text = self.encoding == "json" if as_text is None else as_text
        if text:
            await self.ws.send_str(json.dumps(event))
        else:
            await self.ws.send_bytes(msgpack.packb(event, use_bin_type=True))

    async def recv(self, timeout: float = 5000 * MS) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            event: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(msg.data)
        else:
            raise ConnectionError(f"socket ended: {msg.type} {msg.data!r} {msg.extra!r}")
        self.events.append(event)
        return event

    async def recv_type(self, kind: str, timeout: float = 5000 * MS) -> dict[str, Any]:
        """Receive until an event of ``kind`` arrives."""
        async with asyncio.timeout(timeout) if hasattr(asyncio, "timeout") else _null():
            while True:
                event = await self.recv(timeout)
                if event["type"] == kind:
                    return event

    async def until_done(self, request_ids: set[str], timeout: float = 10000 * MS
                         ) -> dict[str, dict[str, Any]]:
        """Receive until each request in ``request_ids`` has its response.done."""
        done: dict[str, dict[str, Any]] = {}
        while set(done) != request_ids:
            event = await self.recv(timeout)
            if event["type"] == "response.done" and event["request_id"] in request_ids:
                assert event["request_id"] not in done, "two response.done for one request"
                done[event["request_id"]] = event
        return done

    def deltas(self, request_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["type"] == "response.output_text.delta" and e["request_id"] == request_id]

    def text(self, request_id: str) -> str:
        """The request's text; its numbered events (text, reasoning, tool calls)
        must carry seq 0, 1, 2, ... in the order they came."""
        numbered = [e["seq"] for e in self.events
                    if e.get("request_id") == request_id and "seq" in e]
        assert numbered == list(range(len(numbered))), "seq not 0,1,2,..."
        return "".join(d["delta"] for d in self.deltas(request_id))


class _null:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class Sink:
    """A text sink that records every piece it is given, in order."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def on_text(self, text: str) -> None:
        self.pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def create(request_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "response.create", "request_id": request_id,
            "input": [{"role": "user", "content": text}], **extra}


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A noisy JPEG: each seed gives other bytes, as camera frames do."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64, the digest the stand-in's ``reply_mode = context`` answers with."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def context_reply(text: str) -> str:
    """What ``reply_mode = context`` answers when the stand-in's cache holds ``text``."""
    data = text.encode()
    return f"ctx:{fnv1a64(data):016x} len:{len(data)}"


# -- the names the test servers serve their models under --------------------------------
def fake_settings(base: Settings | None = None, **changes: Any) -> Settings:
    """``base`` (default Settings()) with ``changes``, its top-level model file
    ``m.gguf``, so an app on tests/fakes.py's FakeEngine serves it as ``m``
    (the fake ignores the file: nothing loads from it)."""
    base = base or Settings()
    return replace(base, llamacpp=replace(base.llamacpp, model="m.gguf"), **changes)


def served(model: Path | str) -> str:
    """The name a model file is served under as the top-level model: its stem."""
    return Path(model).stem


def served_name(client: Any) -> str:
    """The name a test client's server serves its top-level (default) model under."""
    return top_level_name(client.app[STATE].settings)


def resident(client: Any) -> Resident:
    """The loaded default model of a test client's server."""
    state: AppState = client.app[STATE]
    pool = state.pool
    assert pool is not None, "the model pool is not up"
    model = pool.resident(None)
    assert model is not None, "the default model is not loaded"
    return model


# -- the stand-in runtime behind the HTTP APIs ------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def model_file(directory: Path, name: str, **keys: Any) -> Path:
    """A stand-in model file called ``name`` (which picks the chat family:
    ``qwen2.5-*`` is qwen2, ``qwen3-*`` is qwen3); ``keys`` are its settings."""
    path = directory / name
    lines = ["#rkstream-standin"] + [f"{k} = {v}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def standin_settings(library: Path, model: Path) -> Settings:
    return replace(Settings(), engine="rkllm",
                   rkllm=replace(RKLLMSettings(), library=str(library), model=str(model)))


def reply(text: str) -> str:
    """The directive that makes the stand-in answer ``text`` (its escapes applied)."""
    assert "]]" not in text
    return "[[reply=" + text.replace("\\", "\\\\").replace("\n", "\\n") + "]]"


def call(name: str, arguments: str) -> str:
    """A Hermes tool call as Qwen writes it; ``arguments`` is JSON text (or not)."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


NODE_DIR = REPO / "tests" / "node"


async def run_node_check(script: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run one of tests/node's AI SDK checks; its exit code and JSON summary line."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the AI SDK check needs Node 18.17 or later "
                    "(bash tests/setup_and_run installs it)")
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai-compatible").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm install --prefix tests/node`")
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    lines = out.decode().strip().splitlines()
    assert lines, f"no summary from {script}; stderr: {err.decode()}"
    assert process.returncode is not None
    return process.returncode, json.loads(lines[-1])


# -- clients that go away ------------------------------------------------------------------
async def post_and_leave(client: Any, path: str, body: dict[str, Any], *, stream: bool,
                         lines: int = 0, after_s: float = 0.0) -> int:
    """POST ``body`` and go away as a client does: a stream once it opened and
    ``lines`` lines came, a whole answer by cancelling; either no sooner than
    ``after_s`` after the post. Returns the CLOCK_MONOTONIC ns it left at."""
    started = time.monotonic()
    request = asyncio.ensure_future(client.post(path, json=body))
    response = None
    if stream:
        response = await request
        assert response.status == 200  # the stream opens before the first token
        for _ in range(lines):
            await response.content.readline()
    await asyncio.sleep(max(0.0, started + after_s - time.monotonic()))
    gone_ns = time.monotonic_ns()
    if response is not None:
        response.close()
    else:
        request.cancel()  # the client gives up: aiohttp closes the connection
    return gone_ns


async def eventually(check: Callable[[], object], tries: int = 200) -> None:
    """Wait (10 ms steps, scaled) until ``check()`` is true, or give up quietly."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(10 * MS)


async def aborted_in_prefill(records: Any, gone_ns: int) -> None:
    """The stand-in's run was aborted in its prefill, within 100 ms of ``gone_ns``.

    The stand-in may log run_end before the abort record that caused it (the
    flag is set first), so "running" in that record is not checked."""
    await eventually(lambda: records.all("run_end"))
    (abort,) = records.all("abort")
    (end,) = records.all("run_end")
    assert end["finish"] == "abort" and end["generated"] == 0
    assert (abort["t_ns"] - gone_ns) / 1e9 < 100 * MS
    assert 0 < (end["t_ns"] - gone_ns) / 1e9 < 100 * MS  # well before the 3 s prefill



# -- https ------------------------------------------------------------------------------
OPENSSL = "/usr/bin/openssl"  # tests/setup_and_run checks it is there


def self_signed(folder: Path, name: str = "cert", days: int = 30) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM)."""
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    return cert, key
