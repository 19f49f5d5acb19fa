"""Doctor check of what camera frames cost: the encode-ahead budget and the decode CPUs."""

from __future__ import annotations

from collections.abc import Iterable

from rkstream.board.report import Check
from rkstream.config import Settings
from rkstream.vision.cpus import decode_cpus
from rkstream.vision.policy import OFF, ON_REQUEST

UNLIMITED_FPS = 1.5
"""Looks a second above which encode-ahead is effectively unlimited on an RK3588:
its fastest published encoder (Qwen3.5-0.8B) takes 0.69 s an image, the
common 2-3B ones 2-3.3 s, so the encoder core would never rest."""

_FIX = ('set vision.encode_ahead_fps = 1 or lower (0.3 for a 3 s encoder), or '
        'vision.encode_ahead = "on_request" to encode only for a waiting frame question')


def _cpu_text(cpus: frozenset[int]) -> str:
    if not cpus:
        return "decoding is not pinned"
    return "decoding runs on CPUs " + ",".join(str(c) for c in sorted(cpus))


def check_encode_ahead(settings: Settings, rockchip: bool,
                       online: Iterable[int] | None = None) -> list[Check]:
    """How often camera frames are encoded ahead; WARN when that is effectively
    unlimited on a Rockchip board. Nothing when no model has a vision encoder.

    Args:
        settings: the effective settings.
        rockchip: whether the device tree names a Rockchip SoC.
        online: the CPUs rkstream may use (default: this process's).
    """
    vision = settings.vision
    if not vision.encoder and not any(e.vision_encoder for e in settings.models.values()):
        return []
    cpus = _cpu_text(decode_cpus(vision.decode_cpus, settings.rkllm.enabled_cpus_mask,
                                 online=online, rockchip=lambda: rockchip))
    fps = vision.encode_ahead_fps
    if vision.encode_ahead == OFF:
        return [Check("vision.encode_ahead", "OK",
                      f"off: frames are encoded only when a request takes them; {cpus}")]
    if vision.encode_ahead == ON_REQUEST:
        return [Check("vision.encode_ahead", "OK",
                      f"on_request: frames are encoded ahead only while a frame question "
                      f"waits, at most {fps:g} a second; {cpus}")]
    pause = vision.encode_ahead_pause_while_generating
    threshold = vision.frame_change_threshold
    detail = (f"rate: at most {fps:g} looks/s per camera stream, "
              + ("paused while a generation runs" if pause else "also while answers are "
                 "generated")
              + (f", frames within {threshold:g} of the last encoded one reuse it"
                 if threshold else ", every new frame is encoded (frame_change_threshold = 0)")
              + f"; {cpus}")
    if rockchip and fps > UNLIMITED_FPS:
        cost = ("the encoder core never rests (0.7-3.3 s an image on RK3588)"
                + ("" if pause else ", and it runs during answers, slowing every token"))
        return [Check("vision.encode_ahead", "WARN",
                      f"{detail}: effectively unlimited on this board: {cost}", _FIX)]
    return [Check("vision.encode_ahead", "OK", detail)]
