"""The frame-change check: thumbnails, their difference, and that they are made
in the decode pool, never on the event loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rkstream.errors import VisionError
from rkstream.vision import service as service_module
from rkstream.vision.change import THUMB_SIDE, Thumb, compare_sync, difference, thumbnail_sync
from rkstream.vision.policy import AheadPolicy

from camera_frames import scene, service

DEFAULT_THRESHOLD = AheadPolicy().change_threshold


def thumb(data: bytes) -> Thumb:
    return thumbnail_sync(data, format=None, width=None, height=None, max_pixels=1 << 24)


def test_thumbnail_is_small_and_grey() -> None:
    small = thumb(scene(1))
    big = thumb(scene(1, size=(1920, 1080)))  # decoded in draft mode at 1/8
    assert small.shape == big.shape == (THUMB_SIDE, THUMB_SIDE)
    assert small.dtype == np.uint8
    raw = thumbnail_sync(b"\x40" * (64 * 48 * 3), format="rgb", width=64, height=48,
                         max_pixels=1 << 24)
    assert raw.shape == (THUMB_SIDE, THUMB_SIDE) and int(raw.min()) == int(raw.max()) == 64


def test_shots_of_one_scene_are_unchanged_and_scenes_differ() -> None:
    first = thumb(scene(1, shot=0, size=(1280, 720)))
    assert difference(first, first) == 0.0
    for shot in range(1, 4):  # sensor noise only: well under the default threshold
        assert difference(first, thumb(scene(1, shot=shot, size=(1280, 720)))) \
            < DEFAULT_THRESHOLD / 2
    for other in range(2, 5):
        assert difference(first, thumb(scene(other, size=(1280, 720)))) > 10 * DEFAULT_THRESHOLD


def test_difference_of_other_shapes_is_the_most() -> None:
    assert difference(np.zeros((32, 32), np.uint8), np.zeros((16, 16), np.uint8)) == 255.0


def test_compare_without_a_reference() -> None:
    made, diff = compare_sync(scene(3), None, format=None, width=None, height=None,
                              max_pixels=1 << 24)
    assert diff is None and made.shape == (THUMB_SIDE, THUMB_SIDE)
    with pytest.raises(VisionError) as info:
        compare_sync(b"not an image", made, format=None, width=None, height=None,
                     max_pixels=1 << 24)
    assert info.value.code == "unsupported_image_format"


class Seen:
    def __init__(self) -> None:
        self.decoded: list[str] = []
        self.unchanged = 0

    def vision_encoded(self, seconds: float, encoder_s: float, ahead: bool) -> None:
        pass

    def vision_decoded(self, seconds: float, step: str) -> None:
        assert seconds >= 0
        self.decoded.append(step)

    def frame_unchanged(self) -> None:
        self.unchanged += 1


async def test_the_check_runs_in_the_decode_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []

    def spy(*args: object, **kwargs: object) -> tuple[Thumb, float | None]:
        threads.append(threading.current_thread().name)
        return compare_sync(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service_module, "compare_sync", spy)
    seen = Seen()
    vision = service(observer=seen)
    try:
        reference, _ = await vision.compare(scene(1), None)
        _, diff = await vision.compare(scene(1, shot=1), reference)
        assert diff is not None and diff < DEFAULT_THRESHOLD
        await vision.encode(scene(2))
        vision.note_unchanged()
    finally:
        await vision.close()
    assert len(threads) == 2 and all(t.startswith("vision-decode") for t in threads)
    assert seen.decoded == ["thumbnail", "thumbnail", "prepare"]
    assert seen.unchanged == 1 and vision.unchanged == 1
