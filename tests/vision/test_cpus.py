"""vision.decode_cpus: parsing, the automatic choice, and the pinned decode threads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rkstream.vision.cpus import decode_cpus, is_rockchip, parse_cpus

from camera_frames import service

EIGHT = range(8)


@pytest.mark.parametrize("text, cpus", [
    ("auto", None), (" Auto ", None), ("", frozenset()), ("none", frozenset()),
    ("0-3", frozenset({0, 1, 2, 3})), ("0,2-3, 6", frozenset({0, 2, 3, 6})), ("5", {5}),
])
def test_parse(text: str, cpus: frozenset[int] | None) -> None:
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "x", "-1", "0-", "1,,2", "0-5000", "1.5"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpus(text)


def test_auto_takes_the_cpus_the_llm_leaves_on_a_rockchip_board() -> None:
    board = lambda: True  # noqa: E731
    assert decode_cpus("auto", 0xF0, online=EIGHT, rockchip=board) == {0, 1, 2, 3}
    assert decode_cpus("auto", 0x0F, online=EIGHT, rockchip=board) == {4, 5, 6, 7}
    assert decode_cpus("auto", 0xFF, online=EIGHT, rockchip=board) == frozenset()
    assert decode_cpus("auto", 0x00, online=EIGHT, rockchip=board) == frozenset()
    # Not a Rockchip board, or not 8 CPUs: no pinning.
    assert decode_cpus("auto", 0xF0, online=EIGHT, rockchip=lambda: False) == frozenset()
    assert decode_cpus("auto", 0xF0, online=range(4), rockchip=board) == frozenset()


def test_explicit_lists_keep_only_available_cpus() -> None:
    assert decode_cpus("0-3", 0xF0, online=range(2)) == {0, 1}
    assert decode_cpus("6-7", 0xF0, online=range(2)) == frozenset()
    assert decode_cpus("none", 0xF0, online=EIGHT) == frozenset()


def test_rockchip_from_the_device_tree(tmp_path: Path) -> None:
    assert not is_rockchip(tmp_path)
    tree = tmp_path / "proc" / "device-tree"
    tree.mkdir(parents=True)
    (tree / "compatible").write_bytes(b"radxa,rock-5b\x00rockchip,rk3588\x00")
    assert is_rockchip(tmp_path)
    (tree / "compatible").write_bytes(b"raspberrypi,5-model-b\x00brcm,bcm2712\x00")
    assert not is_rockchip(tmp_path)


async def test_decode_threads_are_pinned() -> None:
    one = frozenset({min(os.sched_getaffinity(0))})
    vision = service(decode_cpus=one)
    try:
        loop = asyncio.get_running_loop()
        seen = await asyncio.gather(*(loop.run_in_executor(
            vision._decoders, os.sched_getaffinity, 0) for _ in range(4)))
        assert all(cpus == one for cpus in seen)
        assert os.sched_getaffinity(0) != one or len(os.sched_getaffinity(0)) == 1
    finally:
        await vision.close()
