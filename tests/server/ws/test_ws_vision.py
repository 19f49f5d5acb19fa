"""Images and camera frames end to end: /ws, the vision service, a real tiny ONNX
encoder built by the test suite, the RKLLM binding and the stand-in runtime.

The stand-in records what rkllm_run received (n_image, n_image_tokens, the
size, the tag strings and the sum of the embedding floats); the tests check
those against the encoder run directly on the same image.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from rkstream.config import LimitSettings, RKLLMSettings, Settings, VisionSettings
from rkstream.server.app import make_app
from rkstream.server.state import STATE
from rkstream.vision.onnx_encoder import OnnxEncoder
from rkstream.vision.preprocess import background_from, prepare_image_sync
from rkstream.vision.presets import PRESETS
from rkstream.vision.service import VisionService

from camera_frames import scene
from conftest import ModelFactory, Records
from helpers import MS, WSClient, create, eventually, jpeg, resident
from tiny_encoder import build_tiny_encoder

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
QWEN = PRESETS["qwen2-vl"]


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_qwen2.onnx", size=32,
                              patch=8, width=16)


def expected_sum(encoder_path: Path, data: bytes) -> float:
    encoder = OnnxEncoder(encoder_path, QWEN)
    tensor = prepare_image_sync(data, format=None, width=None, height=None, size=(32, 32),
                                background=background_from(QWEN.background),
                                max_pixels=1 << 24)
    total = float(encoder.encode_sync(tensor).astype(np.float64).sum())
    encoder.close()
    return total


@pytest.fixture(params=["1.3", "1.2"])
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(aiohttp_client: ClientFactory, standin_libs: dict[str, Path],
           standin_model: ModelFactory, records: Records, line: str, encoder_path: Path
           ) -> Callable[..., Awaitable[TestClient[Any, Any]]]:
    async def make(vision: bool = True, max_images: int = 4,
                   ahead: dict[str, Any] | None = None, encoder: Path | None = None,
                   **keys: Any) -> TestClient[Any, Any]:
        """``ahead``: [vision] keys (the encode-ahead policy); ``encoder``: another file."""
        model = standin_model(record=records.path, embed_width=16, **keys)
        settings = replace(
            Settings(), engine="rkllm",
            rkllm=replace(RKLLMSettings(), library=str(standin_libs[line]), model=str(model),
                          runtime=line),
            vision=replace(VisionSettings(),
                           encoder=str(encoder or encoder_path) if vision else "",
                           **(ahead or {})),
            limits=replace(LimitSettings(), max_images_per_request=max_images))
        return await aiohttp_client(make_app(settings))
    return make


async def connect(client: TestClient[Any, Any]) -> WSClient:
    conn = WSClient(await client.ws_connect("/ws"))
    assert (await conn.recv())["type"] == "session.created"
    return conn


def image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image", "data": data}


async def test_photo_and_question(server: Any, records: Records, line: str,
                                  encoder_path: Path) -> None:
    conn = await connect(await server())
    assert conn.events[0]["model"]["vision"] is True
    photo = jpeg(1)
    await conn.send(create("a", "", input=[{"role": "user", "content": [
        image_part(photo), {"type": "text", "text": "What is this?"}]}]))
    done = (await conn.until_done({"a"}))["a"]
    assert done["status"] == "completed", done
    assert done["timings"]["vision_ms"] > 0
    run = records.all("run")[0]
    assert run["input_type"] == "multimodal"
    assert run["prompt"] == "<image>What is this?"
    assert (run["n_image"], run["n_image_tokens"]) == (1, 16)
    assert (run["image_width"], run["image_height"]) == (32, 32)
    assert (run["image_start"], run["image_end"], run["image_content"]) == (
        QWEN.image_start, QWEN.image_end, QWEN.image_content)
    assert run["embed_floats"] == 16 * 16
    assert run["embed_sum"] == pytest.approx(expected_sum(encoder_path, photo), rel=1e-5)
    init = records.all("init")[0]
    assert init["extend_param"]["base_domain_id"] == 1  # auto: the encoder shares the NPU
    if line == "1.2":  # tags travel at init on 1.2
        assert init["img_start"] == QWEN.image_start


async def test_several_images_in_order(server: Any, records: Records,
                                       encoder_path: Path) -> None:
    conn = await connect(await server())
    first, second = jpeg(2), jpeg(3, (30, 70))
    await conn.send(create("a", "", input=[{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, image_part(first), {"type": "text", "text": " and "},
        image_part(second)]}]))
    done = (await conn.until_done({"a"}))["a"]
    assert done["status"] == "completed"
    run = records.all("run")[0]
    assert run["prompt"] == "Compare <image> and <image>"
    assert run["n_image"] == 2 and run["embed_floats"] == 2 * 16 * 16
    expected = expected_sum(encoder_path, first) + expected_sum(encoder_path, second)
    assert run["embed_sum"] == pytest.approx(expected, rel=1e-5)


async def test_upload_once_and_cache(server: Any, records: Records) -> None:
    client = await server()
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    photo = jpeg(4)
    await conn.send({"type": "image.upload", "data": photo, "image_id": "cat", "event_id": "u"})
    stored = await conn.recv_type("image.stored")
    assert stored["image_id"] == "cat" and stored["tokens"] == 16 and stored["encode_ms"] > 0
    for rid in ("a", "b"):
        await conn.send(create(rid, "", input=[{"role": "user", "content": [
            {"type": "image", "image_id": "cat"}, {"type": "text", "text": "again?"}]}]))
        await conn.until_done({rid})
    await conn.send(create("c", "", input=[{"role": "user", "content": [image_part(photo)]}]))
    await conn.until_done({"c"})
    assert vision.encodes == 1  # the same photo every turn: encoded once
    sums = {r["embed_sum"] for r in records.all("run")}
    assert len(sums) == 1


# As before issue 16: every new frame encoded ahead, also during answers.
UNLIMITED = {"encode_ahead": "rate", "encode_ahead_fps": 120.0,
             "encode_ahead_pause_while_generating": False, "frame_change_threshold": 0.0}


async def test_latest_frame_wins_while_busy(server: Any, records: Records) -> None:
    client = await server(ahead=UNLIMITED)
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    # Keep the model busy so frames are encoded ahead.
    await conn.send(create("busy", "x [[n_tokens=200]] [[token_delay_us=5000]]"))
    await conn.recv_type("response.output_text.delta")
    for seq in range(30):  # a 30 fps burst
        await conn.send({"type": "frame.append", "stream": "cam", "seq": seq,
                         "ts_ns": 1_000_000 * seq, "data": jpeg(100 + seq)})
        await asyncio.sleep(33 * MS)
    await asyncio.sleep(50 * MS)  # let encode-ahead finish the newest frame
    encodes_before = vision.encodes
    await conn.send(create("now", "", input=[{"role": "user", "content": [
        {"type": "frame", "stream": "cam"}, {"type": "text", "text": "what do you see now?"}]}]))
    done = await conn.until_done({"busy", "now"})
    frame = done["now"]["frame"]
    age_ms, taken_age_ms = frame.pop("age_ms"), frame.pop("taken_age_ms")
    assert frame == {"stream": "cam", "seq": 29, "ts_ns": 29_000_000, "superseded": 29,
                     "encoded_seq": 29, "encoded_ts_ns": 29_000_000, "unchanged": 0}
    # The newest frame was encoded: both ages are its age, at least the wait before asking.
    assert age_ms == taken_age_ms and age_ms >= 50
    # The newest frame was encoded ahead, so the request's vision step was a cache hit.
    assert vision.encodes == encodes_before
    runs = [r for r in records.all("run") if r["input_type"] == "multimodal"]
    assert len(runs) == 1


async def test_burst_faster_than_encoding_skips_superseded_frames(server: Any) -> None:
    client = await server()
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    await conn.send(create("busy", "x [[n_tokens=200]] [[token_delay_us=5000]]"))
    await conn.recv_type("response.output_text.delta")
    frames = [jpeg(200 + seq, (640, 480)) for seq in range(30)]
    for seq, data in enumerate(frames):  # all at once: faster than any encoder
        await conn.send({"type": "frame.append", "stream": "cam", "seq": seq, "data": data})
    await conn.send(create("now", "", input=[{"role": "user", "content": [
        {"type": "frame", "stream": "cam"}]}]))
    done = await conn.until_done({"busy", "now"})
    assert done["now"]["frame"]["seq"] == 29
    assert vision.encodes < 30


async def test_ping_is_not_delayed_by_frames(server: Any) -> None:
    conn = await connect(await server())
    big = jpeg(7, (1280, 720))
    for seq in range(20):
        await conn.send({"type": "frame.append", "stream": "cam", "seq": seq, "data": big})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await conn.send({"type": "ping"})
    await conn.recv_type("pong")
    assert loop.time() - started < 500 * MS


def raw(width: int, height: int, extra: int = 0) -> dict[str, Any]:
    return {"type": "image", "data": b"\x10" * (width * height * 3 + extra), "format": "rgb",
            "width": width, "height": height}


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("1", (6000, 6000)).save(out, "PNG")  # tiny file, 36 M pixels
    return out.getvalue()


@pytest.mark.parametrize("parts, code", [
    ([image_part(jpeg(5)[:200])], "invalid_image"),
    ([image_part(b"GIF89a" + b"\x00" * 50)], "unsupported_image_format"),
    ([raw(10, 10, extra=5)], "image_size_mismatch"),
    ([image_part(bomb())], "image_too_large"),
    ([image_part(jpeg(1))] * 5, "too_many_images"),
    ([{"type": "image", "image_id": "never"}], "unknown_image"),
    ([{"type": "frame", "stream": "nothing"}], "unknown_stream"),
])
async def test_bad_images_fail_the_request_only(server: Any, parts: list[dict[str, Any]],
                                                code: str) -> None:
    client = await server()
    conn = await connect(client)
    await conn.send(create("bad", "", input=[{"role": "user", "content": parts}]))
    done = (await conn.until_done({"bad"}))["bad"]
    assert done["status"] == "failed" and done["error"]["code"] == code, done
    assert done["error"]["message"]
    await conn.send(create("ok", "", input=[{"role": "user", "content": [
        raw(8, 8), {"type": "text", "text": "fine"}]}]))
    assert (await conn.until_done({"ok"}))["ok"]["status"] == "completed"


async def test_bad_upload_is_an_error_event(server: Any) -> None:
    conn = await connect(await server())
    await conn.send({"type": "image.upload", "data": b"not an image", "event_id": "u1"})
    error = await conn.recv_type("error")
    assert error["error"]["code"] == "unsupported_image_format"
    assert error["error"]["event_id"] == "u1"


async def test_context_overflow(server: Any) -> None:
    conn = await connect(await server())
    await conn.send(create("big", "", params={"max_tokens": 4090}, input=[
        {"role": "user", "content": [image_part(jpeg(1)), {"type": "text", "text": "hi"}]}]))
    done = (await conn.until_done({"big"}))["big"]
    assert done["error"]["code"] == "context_overflow"
    assert "4090" in done["error"]["message"]


async def test_no_encoder_configured(server: Any) -> None:
    conn = await connect(await server(vision=False))
    assert conn.events[0]["model"]["vision"] is False
    await conn.send(create("a", "", input=[{"role": "user", "content": [image_part(jpeg(1))]}]))
    done = (await conn.until_done({"a"}))["a"]
    assert done["error"]["code"] == "vision_unavailable"


async def test_frames_are_dropped_on_close(server: Any) -> None:
    client = await server()
    conn = await connect(client)
    await conn.send({"type": "frame.append", "stream": "cam", "seq": 0, "data": jpeg(9)})
    await conn.send({"type": "ping"})
    await conn.recv_type("pong")
    state = client.server.app[STATE]
    media = [c.media for c in state.connections]
    assert media and media[0].frames.newest("cam") is not None
    await conn.ws.close()
    for _ in range(100):
        if media[0].frames.newest("cam") is None:
            break
        await asyncio.sleep(5 * MS)
    assert media[0].frames.newest("cam") is None


async def test_stream_limit(server: Any) -> None:
    conn = await connect(await server())
    for n in range(17):
        await conn.send({"type": "frame.append", "stream": f"s{n}", "seq": 0,
                         "data": b"\xff\xd8\xff", "event_id": f"f{n}"})
    error = await conn.recv_type("error")
    assert error["error"]["code"] == "too_many_streams"
    assert error["error"]["event_id"] == "f16"


# -- what camera frames cost (issue 16): the encode-ahead budget, reuse, provenance ------
BUSY = "x [[n_tokens=300]] [[token_delay_us=5000]]"  # 1.5 s of answer
FRAME = {"type": "frame", "stream": "cam"}


def slow_down(vision: VisionService, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    """Make the encoder take ``delay_s`` more per image, as an NPU core would."""
    real = vision.encoder.encode_sync

    def slow(tensor: np.ndarray) -> npt.NDArray[np.float32]:
        time.sleep(delay_s)
        return real(tensor)

    monkeypatch.setattr(vision.encoder, "encode_sync", slow)


class Camera:
    """Sends frames on one connection at 30 fps, remembering each one's bytes."""

    def __init__(self, conn: WSClient) -> None:
        self.conn = conn
        self.sent: list[bytes] = []

    async def stream(self, frames: Callable[[int], bytes], seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end, n = loop.time() + seconds, 0
        while loop.time() < end:
            data = frames(n)
            seq = len(self.sent)
            self.sent.append(data)
            await self.conn.send({"type": "frame.append", "stream": "cam", "seq": seq,
                                  "ts_ns": 1000 * seq, "data": data})
            n += 1
            await asyncio.sleep(33 * MS)

    @property
    def last(self) -> int:
        return len(self.sent) - 1


async def ask(conn: WSClient, rid: str) -> None:
    await conn.send(create(rid, "", input=[{"role": "user", "content": [
        FRAME, {"type": "text", "text": "what do you see now? [[token_delay_us=0]]"}]}]))


async def samples(client: TestClient[Any, Any]) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    return {sample.name + str(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_rate_holds_the_budget_at_30fps(server: Any, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    policy = {"encode_ahead": "rate", "encode_ahead_fps": 1 / (250 * MS),
              "encode_ahead_pause_while_generating": False, "frame_change_threshold": 0.0}
    client = await server(ahead=policy)
    conn = await connect(client)
    assert conn.events[0]["vision"] == {
        "encode_ahead": "rate", "encode_ahead_fps": policy["encode_ahead_fps"],
        "pause_while_generating": False, "frame_change_threshold": 0.0}
    vision = resident(client).vision
    assert vision is not None
    slow_down(vision, monkeypatch, 20 * MS)
    await conn.send(create("busy", BUSY))
    await conn.recv_type("response.output_text.delta")
    camera = Camera(conn)
    await camera.stream(lambda n: jpeg(300 + n), 1000 * MS)  # every frame differs
    assert 2 <= vision.ahead_encodes <= 5  # 4 looks a second, not 30 encodes
    await ask(conn, "now")
    done = await conn.until_done({"busy", "now"})
    frame = done["now"]["frame"]
    assert (frame["seq"], frame["encoded_seq"], frame["unchanged"]) == (camera.last,) * 2 + (0,)
    assert frame["encoded_ts_ns"] == frame["ts_ns"] == 1000 * camera.last
    seen = await samples(client)
    assert seen["rkstream_vision_encodes_total[('reason', 'ahead')]"] == vision.ahead_encodes
    assert seen["rkstream_vision_encodes_total[('reason', 'request')]"] == \
        vision.encodes - vision.ahead_encodes
    busy_s = seen["rkstream_vision_encoder_busy_seconds_total[]"]
    assert busy_s >= vision.encodes * 20 * MS and busy_s == pytest.approx(vision.encoder_busy_s)
    assert seen["rkstream_vision_decode_seconds_count[('step', 'prepare')]"] >= vision.encodes
    assert seen["rkstream_frames_unchanged_total[]"] == 0


async def test_on_request_encodes_only_for_a_queued_frame_question(server: Any) -> None:
    client = await server(ahead={"encode_ahead": "on_request",
                                 "encode_ahead_fps": 1 / (20 * MS)})
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    await conn.send(create("busy", BUSY))
    await conn.recv_type("response.output_text.delta")
    camera = Camera(conn)
    await camera.stream(lambda n: jpeg(400 + n), 400 * MS)
    assert vision.encodes == 0  # frames, but no question
    await ask(conn, "now")  # queued behind the answer: its frame is encoded meanwhile
    await eventually(lambda: vision.ahead_encodes == 1)
    assert vision.ahead_encodes == 1
    done = await conn.until_done({"busy", "now"})
    assert done["now"]["timings"]["queued_ms"] > 0
    frame = done["now"]["frame"]
    assert frame["seq"] == frame["encoded_seq"] == camera.last
    assert vision.encodes == 1  # the vision step found it encoded


async def test_a_static_scene_encodes_once_and_a_change_again(
        server: Any, records: Records, encoder_path: Path) -> None:
    client = await server(ahead={"encode_ahead_fps": 1 / (50 * MS)})  # threshold 2, paused
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    camera = Camera(conn)
    await camera.stream(lambda n: scene(1, shot=n), 500 * MS)  # new bytes, one scene
    assert vision.encodes == 1 and vision.unchanged >= 5
    await ask(conn, "a")
    frame = (await conn.until_done({"a"}))["a"]["frame"]
    assert frame["seq"] == camera.last  # the newest frame was taken...
    assert (frame["encoded_seq"], frame["encoded_ts_ns"]) == (0, 0)  # ...the first one seen
    assert frame["unchanged"] == vision.unchanged
    # The model got frame 0's embedding, which arrived before the whole burst of
    # frames; the newest frame is younger by the time between them.
    streamed_ms = (camera.last * 33 * MS) * 1000.0
    assert frame["age_ms"] >= streamed_ms
    assert frame["age_ms"] - frame["taken_age_ms"] >= streamed_ms * 0.9
    assert vision.encodes == 1
    changed_at = len(camera.sent)
    await camera.stream(lambda n: scene(2, shot=n), 300 * MS)
    assert vision.encodes == 2
    await ask(conn, "b")
    frame = (await conn.until_done({"b"}))["b"]["frame"]
    assert changed_at <= frame["encoded_seq"] <= frame["seq"] == camera.last
    # What the model got is the embedding of the frame response.done names.
    first, second = [r for r in records.all("run") if r["input_type"] == "multimodal"]
    assert first["embed_sum"] == pytest.approx(expected_sum(encoder_path, camera.sent[0]),
                                               rel=1e-5)
    assert second["embed_sum"] == pytest.approx(
        expected_sum(encoder_path, camera.sent[frame["encoded_seq"]]), rel=1e-5)
    seen = await samples(client)
    assert seen["rkstream_frames_unchanged_total[]"] == vision.unchanged
    assert seen["rkstream_vision_decode_seconds_count[('step', 'thumbnail')]"] > 5


async def test_rate_pauses_while_an_answer_runs(server: Any) -> None:
    client = await server(ahead={"encode_ahead_fps": 1 / (30 * MS),
                                 "frame_change_threshold": 0.0})
    conn = await connect(client)
    vision = resident(client).vision
    assert vision is not None
    await conn.send(create("busy", BUSY))
    await conn.recv_type("response.output_text.delta")
    await Camera(conn).stream(lambda n: jpeg(500 + n), 400 * MS)
    assert vision.encodes == 0  # the answer has the NPU to itself
    await conn.until_done({"busy"})
    await eventually(lambda: vision.encodes == 1)  # then the newest frame is looked at
    assert vision.ahead_encodes == 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def delivery_ms(conn: WSClient, rid: str) -> list[float]:
    """Each token's delivery time: from the stand-in's stamp to its arrival here."""
    await conn.send(create(rid, "t [[n_tokens=100]] [[token_delay_us=10000]] [[stamp=1]]",
                           params={"max_tokens": 100}))
    out: list[float] = []
    while True:
        event = await conn.recv()
        now = time.monotonic_ns()
        if event["type"] == "response.output_text.delta":
            out += [(now - int(s)) / 1e6 for s in re.findall(r"\[(\d+)\]", event["delta"])]
        elif event["type"] == "response.done":
            return out


async def test_a_text_stream_stays_smooth_while_frames_pour_in(
        server: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A real encoder's input size, so each 1080p frame costs a real decode (at 1/2).
    big = build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny448.onnx", size=448,
                             patch=28, width=16)
    # The worst case: every frame encoded ahead, during the answer.
    client = await server(ahead=UNLIMITED | {"threads": 1}, encoder=big)
    text = await connect(client)
    quiet = await delivery_ms(text, "quiet")
    camera = Camera(await connect(client))
    frames = [scene(seed, size=(1920, 1080)) for seed in range(4)]
    # Unique bytes after the JPEG's end: every frame misses the cache.
    pouring = asyncio.create_task(camera.stream(
        lambda n: frames[n % 4] + n.to_bytes(4, "big"), 1300 * MS))
    busy = await delivery_ms(text, "busy")
    await pouring
    vision = resident(client).vision
    assert vision is not None and vision.encodes >= 10  # the pool and encoder were busy
    assert len(quiet) == len(busy) == 100
    # Decoding these frames on the loop (4-8 ms each here) adds ~3.5 ms to the p90;
    # the max only catches a long stall (two cores: a thread may take one token's turn).
    assert percentile(busy, 0.9) < percentile(quiet, 0.9) + 3 * MS * 1000, sorted(busy)
    assert max(busy) < 100 * MS * 1000, sorted(busy)[-5:]
