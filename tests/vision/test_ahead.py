"""Encode-ahead and frame reuse of one connection, on an encoder with a set delay.

Every time is a multiple of MS, so a slower machine (RKSTREAM_TEST_TIMING)
stretches the frame rate and the budget alike and the counts stay the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from rkstream.errors import VisionError
from rkstream.vision.ahead import FrameEncoder
from rkstream.vision.frames import Frame, FrameStore, new_frame
from rkstream.vision.policy import AheadPolicy
from rkstream.vision.service import VisionService

from camera_frames import scene, service
from helpers import MS, eventually, jpeg

FRAME_S = 33 * MS  # 30 fps


@dataclass
class Camera:
    """One connection's frames and encoder, and a client that sends frames."""

    vision: VisionService
    frames: FrameStore = field(default_factory=FrameStore)
    generating: bool = False
    seq: int = 0
    sent: dict[int, bytes] = field(default_factory=dict)
    encoder: FrameEncoder | None = None

    def use(self, policy: AheadPolicy) -> FrameEncoder:
        self.encoder = FrameEncoder(self.frames, policy, lambda: self.generating)
        return self.encoder

    def send(self, data: bytes, stream: str = "cam") -> int:
        assert self.encoder is not None
        seq, self.seq = self.seq, self.seq + 1
        self.sent[seq] = data
        self.frames.append(new_frame(stream, seq, seq * 1000, data, None, None, None))
        self.encoder.frame_added(stream, self.vision)
        return seq

    async def stream(self, frames: Callable[[int], bytes], seconds: float) -> None:
        """Send ``frames(n)`` at 30 fps for ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            self.send(frames(n))
            n += 1
            await asyncio.sleep(FRAME_S)


def rate(fps: float, threshold: float = 0.0, pause: bool = False) -> AheadPolicy:
    return AheadPolicy("rate", fps, pause, threshold)


@pytest_asyncio.fixture
async def camera() -> AsyncIterator[Camera]:
    cam = Camera(service(delay_s=20 * MS))
    yield cam
    if cam.encoder is not None:
        await cam.encoder.close()
    await cam.vision.close()


async def test_rate_holds_the_budget_at_30fps(camera: Camera) -> None:
    camera.use(rate(1 / (250 * MS)))  # 4 looks a second; every frame differs
    await camera.stream(lambda n: jpeg(n), 1000 * MS)
    assert 2 <= camera.vision.ahead_encodes <= 5  # 1000 / 250 + the first at once
    assert camera.vision.encodes == camera.vision.ahead_encodes


async def test_off_encodes_nothing_ahead(camera: Camera) -> None:
    encoder = camera.use(AheadPolicy("off", 100.0, False, 0.0))
    await camera.stream(lambda n: jpeg(n), 300 * MS)
    encoder.wait("cam", camera.vision)  # not even for a waiting question
    await asyncio.sleep(100 * MS)
    assert camera.vision.encodes == 0


async def test_on_request_waits_for_a_queued_frame_question(camera: Camera) -> None:
    encoder = camera.use(AheadPolicy("on_request", 1 / (50 * MS), False, 0.0))
    await camera.stream(lambda n: jpeg(n), 400 * MS)
    assert camera.vision.encodes == 0  # nobody asked
    encoder.wait("cam", camera.vision)  # a request with a frame part is queued
    await eventually(lambda: camera.vision.ahead_encodes == 1)
    assert camera.vision.ahead_encodes == 1
    newest = camera.frames.newest("cam")
    assert newest is not None
    frame, used = await encoder.embedding("cam", camera.vision)  # its vision step
    assert used.seq == frame.seq == newest.seq and used.unchanged == 0
    assert camera.vision.encodes == 1  # found encoded
    encoder.unwait("cam")
    await camera.stream(lambda n: jpeg(1000 + n), 200 * MS)
    assert camera.vision.encodes == 1  # nobody waits any more


async def test_a_static_scene_encodes_once(camera: Camera) -> None:
    encoder = camera.use(rate(1 / (50 * MS), threshold=2.0))
    await camera.stream(lambda n: scene(1, shot=n), 600 * MS)  # new bytes, same scene
    assert camera.vision.encodes == 1
    assert camera.vision.unchanged >= 5
    frame, used = await encoder.embedding("cam", camera.vision)
    assert frame.seq == camera.seq - 1  # the newest frame was taken...
    assert (used.seq, used.ts_ns) == (0, 0)  # ...and judged unchanged from the first
    assert used.unchanged == camera.vision.unchanged  # every check, the request's too
    assert camera.vision.encodes == 1


async def test_a_changed_scene_encodes_again(camera: Camera) -> None:
    encoder = camera.use(rate(1 / (50 * MS), threshold=2.0))
    await camera.stream(lambda n: scene(1, shot=n), 300 * MS)
    changed_at = camera.seq
    await camera.stream(lambda n: scene(2, shot=n), 300 * MS)
    assert camera.vision.encodes == 2
    _, used = await encoder.embedding("cam", camera.vision)
    assert used.seq >= changed_at  # a frame of the new scene
    assert float(used.embedding.embedding[0, 0]) == pytest.approx(
        float((await camera.vision.encode(camera.sent[used.seq])).embedding.embedding[0, 0]))


async def test_without_a_threshold_only_identical_bytes_are_reused(camera: Camera) -> None:
    encoder = camera.use(rate(1 / (30 * MS)))
    same = scene(1)
    await camera.stream(lambda n: same, 200 * MS)  # one frame resent: the cache
    assert camera.vision.encodes == 1
    frame, used = await encoder.embedding("cam", camera.vision)
    assert used.seq == frame.seq and used.unchanged == 0  # its own embedding, exactly
    camera.send(scene(1, shot=1))  # other bytes of the same scene: encoded
    frame, used = await encoder.embedding("cam", camera.vision)
    assert used.seq == frame.seq and camera.vision.encodes == 2
    assert camera.vision.unchanged == 0


async def test_pause_while_generating(camera: Camera) -> None:
    encoder = camera.use(rate(1 / (30 * MS), pause=True))
    camera.generating = True
    await camera.stream(lambda n: jpeg(n), 300 * MS)
    assert camera.vision.encodes == 0  # speculative looks wait for the answer
    encoder.wait("cam", camera.vision)  # a queued frame question is served anyway
    await eventually(lambda: camera.vision.encodes == 1)
    encoder.unwait("cam")
    camera.send(jpeg(999))
    await asyncio.sleep(150 * MS)
    assert camera.vision.encodes == 1
    camera.generating = False  # the answer ended: looks resume
    await eventually(lambda: camera.vision.encodes == 2)
    assert camera.vision.encodes == 2


async def test_a_request_during_an_ahead_encode_waits_and_compares() -> None:
    cam = Camera(service(delay_s=300 * MS))  # a slow encoder, as on the board
    encoder = cam.use(rate(1 / (50 * MS), threshold=2.0))
    try:
        cam.send(scene(1))
        await asyncio.sleep(50 * MS)  # the look began: seq 0 is being encoded
        cam.send(scene(1, shot=1))
        frame, used = await encoder.embedding("cam", cam.vision)
        # It waited for that encode and reused it, instead of queueing a second one.
        assert (frame.seq, used.seq, used.unchanged) == (1, 0, 1)
        assert cam.vision.encodes == 1
    finally:
        await encoder.close()
        await cam.vision.close()


async def test_a_bad_frame(camera: Camera, caplog: pytest.LogCaptureFixture) -> None:
    encoder = camera.use(rate(1 / (20 * MS)))
    with caplog.at_level(logging.INFO, "rkstream.ws"):
        camera.send(b"\xff\xd8\xff broken")
        await asyncio.sleep(50 * MS)
    assert "encode-ahead of stream cam failed" in caplog.text
    taken: list[Frame] = []
    with pytest.raises(VisionError) as info:
        await encoder.embedding("cam", camera.vision, taken.append)
    assert info.value.code == "invalid_image"
    assert [f.seq for f in taken] == [0]  # the frame is still reported
    with pytest.raises(VisionError) as unknown:
        await encoder.embedding("other", camera.vision)
    assert unknown.value.code == "unknown_stream"


async def test_another_encoder_never_gets_this_ones_embedding(camera: Camera) -> None:
    encoder = camera.use(rate(1 / (20 * MS), threshold=2.0))
    camera.send(scene(1))
    _, first = await encoder.embedding("cam", camera.vision)
    other = service()
    try:
        camera.send(scene(1, shot=1))  # unchanged, but for another model's encoder
        _, used = await encoder.embedding("cam", other)
        assert used.seq == 1 and other.encodes == 1
    finally:
        await other.close()
    assert first.seq == 0


async def test_an_unloaded_encoder_stops_the_look_ahead() -> None:
    cam = Camera(service(delay_s=100 * MS))
    encoder = cam.use(rate(1 / (20 * MS)))
    try:
        cam.send(jpeg(1))
        await asyncio.sleep(20 * MS)  # its encode is under way
        await cam.vision.close()  # the model was unloaded (keep_alive)
        cam.send(jpeg(2))
        await asyncio.sleep(100 * MS)
        assert cam.encoder is not None
        with pytest.raises(VisionError) as info:  # refused at once, never stuck
            await asyncio.wait_for(encoder.embedding("cam", cam.vision), 1000 * MS)
        assert info.value.code == "encoder_error"
        await eventually(lambda: all(s.task is None for s in encoder._streams.values()))
        assert all(s.task is None for s in encoder._streams.values())
    finally:
        await encoder.close()
