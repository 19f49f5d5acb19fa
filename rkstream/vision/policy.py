"""When camera frames are encoded ahead, and when a new frame counts as unchanged.

The policy only decides *when* encoding happens before a request asks; a
request still gets the newest frame of its stream (or, when that frame was
judged unchanged, the embedding of the frame it was compared with, and
``response.done.frame`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OFF, ON_REQUEST, RATE = "off", "on_request", "rate"
MODES = (OFF, ON_REQUEST, RATE)

#: Shown by ``vision.encode_ahead``'s refusal: what the old true/false became.
MODES_ALLOWED = ('one of "off", "on_request", "rate" (older versions took true or false: '
                 'true is now "rate", false is "off")')


@dataclass(frozen=True)
class AheadPolicy:
    """The ``[vision]`` encode-ahead keys, as one value.

    Attributes:
        mode: ``off``: never ahead; ``on_request``: only while a request with a
            frame part of that stream waits for an instance; ``rate``: the
            newest frame of each stream at most ``fps`` times a second.
        fps: looks (a change check, and an encode when it changed) per second
            and connection-stream, for both ahead modes.
        pause_while_generating: ``rate`` looks nothing while a generation runs
            on the NPU (or the CPU model generates), unless a frame question
            waits: that one needs the encoding anyway.
        change_threshold: mean absolute difference (0-255) of 32x32 grey
            thumbnails below which a frame reuses the last encoded one's
            embedding; 0 = only identical bytes are reused (the cache).
    """

    mode: str = RATE
    fps: float = 1.0
    pause_while_generating: bool = True
    change_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"encode-ahead mode {self.mode!r} is not one of {MODES}")
        if self.fps <= 0:
            raise ValueError("encode-ahead fps must be above 0")

    @property
    def interval_s(self) -> float:
        """The least time between two looks at one stream."""
        return 1.0 / self.fps

    def as_dict(self) -> dict[str, Any]:
        """What ``session.created.vision`` announces."""
        return {"encode_ahead": self.mode, "encode_ahead_fps": self.fps,
                "pause_while_generating": self.pause_while_generating,
                "frame_change_threshold": self.change_threshold}
