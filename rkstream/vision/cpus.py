"""Which CPUs the decode pool runs on (``vision.decode_cpus``).

On an RK3588 the LLM's CPU threads use the A76 cores (CPUs 4-7,
``rkllm.enabled_cpus_mask = 0xF0``), so JPEG decoding there slows every
token; the A55 cores (0-3) are otherwise idle. ``auto`` therefore pins the
decode threads to the CPUs outside that mask on a Rockchip board with 8 CPUs,
and leaves them unpinned anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from rkstream.log import engine_log

AUTO = "auto"
CPUS_ALLOWED = ('"auto" (the CPUs outside rkllm.enabled_cpus_mask on an 8-CPU Rockchip '
                'board, else none), "none" or "" (no pinning), or CPU numbers and ranges '
                'such as "0-3" or "0,1,4-5"')
_MAX_CPU = 1023
_DEVICE_TREE = ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible")


def parse_cpus(text: str) -> frozenset[int] | None:
    """``"0-3,6"`` -> {0, 1, 2, 3, 6}; ``""``/``"none"`` -> {} (no pinning); ``"auto"`` -> None.

    Raises:
        ValueError: saying which part is not a CPU number or range.
    """
    text = text.strip().lower()
    if text == AUTO:
        return None
    if text in ("", "none"):
        return frozenset()
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last > _MAX_CPU:
            raise ValueError(f"{part!r} is not a range of CPU numbers")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def is_rockchip(root: Path = Path("/")) -> bool:
    """Whether the device tree names a Rockchip SoC. rkstream.board has the same
    test, but the board package depends on config, which depends on vision."""
    for rel in _DEVICE_TREE:
        try:
            words = (root / rel).read_bytes().split(b"\x00")
        except OSError:
            continue
        return any(w.startswith(b"rockchip,") for w in words)
    return False


def _online() -> frozenset[int]:
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def decode_cpus(text: str, rkllm_mask: int, *, online: Iterable[int] | None = None,
                rockchip: Callable[[], bool] = is_rockchip) -> frozenset[int]:
    """The CPUs to pin the decode threads to; empty = no pinning.

    Args:
        text: the ``vision.decode_cpus`` setting.
        rkllm_mask: ``rkllm.enabled_cpus_mask`` (bit n = CPU n).
        online: the CPUs this process may use (default: its affinity).
        rockchip: tells whether this is a Rockchip board.

    Raises:
        ValueError: ``text`` is not a CPU list (load_settings refused it already).
    """
    wanted = parse_cpus(text)
    available = frozenset(online) if online is not None else _online()
    if wanted is None:
        if len(available) != 8 or not rockchip():
            return frozenset()
        wanted = frozenset(cpu for cpu in available if not rkllm_mask >> cpu & 1)
        return wanted if wanted != available else frozenset()
    usable = wanted & available
    if wanted and not usable:
        engine_log.warning("vision.decode_cpus %s names no CPU this process may use (%s); "
                           "decoding is not pinned", text, sorted(available))
    elif usable != wanted:
        engine_log.warning("vision.decode_cpus: CPUs %s are not available; decoding uses %s",
                           sorted(wanted - available), sorted(usable))
    return usable


def pin_thread(cpus: frozenset[int]) -> None:
    """Pin the calling thread (pid 0 = this thread on Linux) to ``cpus``; a
    thread pool's initializer, so it never raises: a refusal only logs."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        engine_log.warning("cannot pin a vision decode thread to CPUs %s: %s", sorted(cpus),
                           exc)
