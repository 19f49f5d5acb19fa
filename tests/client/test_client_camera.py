"""The camera helper: newest-frame-wins over a slow link, numpy frames, and asking
about the newest frame, against the stand-in runtime with a tiny ONNX encoder."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from rkstream.client import AsyncClient, ImageError
from rkstream.client.camera import to_wire

from client_links import ServerMaker, SlowLink, url
from helpers import MS, jpeg

pytest_plugins = ["client_servers"]  # the fixtures client_server, client_encoder


async def test_a_slow_link_drops_old_frames_and_the_answer_names_the_newest(
        client_server: ServerMaker) -> None:
    server = await client_server(vision=True)
    frames = [jpeg(seed, (320, 240)) for seed in range(60)]
    size = sum(map(len, frames)) / len(frames)
    assert server.port is not None
    link = SlowLink(server.port, rate=size * 4)  # room for about 4 frames a second
    await link.start()
    try:
        async with AsyncClient(f"127.0.0.1:{link.port}", timeout_s=10000 * MS) as client:
            camera = client.camera("front", max_fps=None)
            slowest = 0.0
            for frame in frames:  # 100 frames a second, far more than the link carries
                started = time.perf_counter()
                camera.send(frame)
                slowest = max(slowest, time.perf_counter() - started)
                await asyncio.sleep(10 * MS)
            assert slowest < 20 * MS  # send() never waits for the network
            answer = await camera.ask("What is in front of me?")
            assert answer.status == "completed"
            assert answer.frame is not None and answer.frame.stream == "front"
            assert answer.frame.seq == len(frames)  # the newest frame, sent before the question
            assert answer.image == frames[-1]
            assert camera.given == len(frames)
            # older frames were dropped here, not queued behind the slow link
            assert camera.sent <= len(frames) // 2 and camera.dropped >= len(frames) // 2
            assert camera.sent + camera.dropped == camera.given
            assert answer.frame.superseded < camera.sent
    finally:
        await link.close()


async def test_numpy_frames_as_jpeg_and_raw(client_server: ServerMaker, records: Any) -> None:
    server = await client_server(vision=True)
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    async with AsyncClient(url(server), timeout_s=5000 * MS) as client:
        jpeg_camera = client.camera("jpeg")
        jpeg_camera.send(bgr)
        answer = await jpeg_camera.ask("What is it?")
        assert answer.status == "completed" and answer.frame is not None
        assert answer.image is not bgr and np.array_equal(answer.image, bgr)  # a copy
        raw = client.camera("raw", encoding="raw")
        raw.send(bgr)
        first = await raw.ask("What is it?")
        raw.send(np.ascontiguousarray(bgr[:, :, ::-1]), color="rgb")
        second = await raw.ask("What is it?")
        assert first.status == second.status == "completed"
        sums = [run["embed_sum"] for run in records.all("run")[-2:]]
        assert sums[0] == pytest.approx(sums[1])  # the same picture, told its channel order
    assert to_wire(bgr, "bgr", "raw", 80)["format"] == "bgr"
    grey = to_wire(bgr[:, :, 0], "bgr", "raw", 80)
    assert (grey["width"], grey["height"], len(grey["data"])) == (64, 48, 64 * 48 * 3)
    with pytest.raises(TypeError):
        to_wire(bgr.astype(np.float32), "bgr", "jpeg", 80)


async def test_asking_without_a_frame_or_an_encoder_is_an_image_error(
        client_server: ServerMaker) -> None:
    async with AsyncClient(url(await client_server()), timeout_s=5000 * MS) as client:
        camera = client.camera()
        with pytest.raises(ImageError) as nothing:
            await camera.ask("What now?")
        assert nothing.value.code == "unknown_stream"
        camera.send(jpeg(1))
        with pytest.raises(ImageError) as no_encoder:
            await camera.ask("What now?")
        assert no_encoder.value.code == "vision_unavailable"


async def test_the_camera_carries_on_after_a_server_restart(client_server: ServerMaker) -> None:
    first = await client_server(vision=True)
    port = first.port
    async with AsyncClient(url(first), timeout_s=5000 * MS, min_delay_s=20 * MS,
                           max_delay_s=200 * MS) as client:
        camera = client.camera("front", max_fps=None)
        camera.send(jpeg(1))
        assert (await camera.ask("Before?")).frame is not None
        await first.close()
        camera.send(jpeg(2))  # while the server is down: kept, not lost
        second = await client_server(vision=True, port=port)
        answer = await camera.ask("After?")  # waits for the reconnect, then resends
        assert answer.frame is not None and answer.frame.seq == 2
        assert answer.image == jpeg(2) and client.generation == 2
        camera.send(jpeg(3))
        later = await camera.ask("And now?")
        assert later.frame is not None and later.frame.seq == 3
        await second.close()


async def test_a_frame_too_large_to_send_fails_the_ask_at_once(client_server: ServerMaker
                                                               ) -> None:
    server = await client_server(vision=True, limits={"max_message_bytes": 20000})
    async with AsyncClient(url(server), timeout_s=3000 * MS) as client:
        camera = client.camera("front", max_fps=None)
        camera.send(b"\xff" * 30000)
        started = time.monotonic()
        with pytest.raises(ImageError) as refused:
            await camera.ask("What is it?")
        assert refused.value.code == "image_too_large"  # not a timeout's not_connected
        assert time.monotonic() - started < 1000 * MS
        assert camera.error is None  # raised once
        camera.send(jpeg(1))
        assert (await camera.ask("And this one?")).status == "completed"


async def test_an_encoders_own_error_reaches_the_ask_and_the_camera_goes_on(
        client_server: ServerMaker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import rkstream.client.camera as camera_module

    encode = camera_module.to_wire
    calls = 0

    def flaky(*args: Any) -> dict[str, Any]:  # as cv2.error or Pillow's OSError, once
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("broken encoder")
        return encode(*args)

    monkeypatch.setattr(camera_module, "to_wire", flaky)
    frame = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    async with AsyncClient(url(await client_server(vision=True)),
                           timeout_s=3000 * MS) as client:
        camera = client.camera("front", max_fps=None)
        camera.send(frame)
        with pytest.raises(ImageError) as failed:
            await camera.ask("What is it?")
        assert failed.value.code == "invalid_image" and "broken encoder" in str(failed.value)
        assert "broken encoder" in caplog.text  # logged too, for send() alone
        camera.send(frame)  # the sender lives on
        assert (await camera.ask("And now?")).status == "completed"
