"""Camera streams: only the newest frame of each stream is kept (latest wins).

Storing a frame is O(1) and never decodes anything, so a 30 fps stream
cannot delay control events on the same socket. Superseded frames are only
counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Frame:
    stream: str
    seq: int
    ts_ns: int | None
    data: bytes
    format: str | None
    width: int | None
    height: int | None
    received_s: float


class FrameStore:
    """The newest frame per stream of one connection, and how many were dropped."""

    def __init__(self, max_streams: int = 16) -> None:
        self._frames: dict[str, Frame] = {}
        self.superseded: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.max_streams = max_streams

    def full_for(self, stream: str) -> bool:
        """True if ``stream`` is new and the store already holds max_streams."""
        return stream not in self._frames and len(self._frames) >= self.max_streams

    def append(self, frame: Frame) -> bool:
        """Keep ``frame`` if it is the stream's newest; False for an older seq."""
        current = self._frames.get(frame.stream)
        self.received[frame.stream] = self.received.get(frame.stream, 0) + 1
        if current is not None:
            if frame.seq <= current.seq:  # late or repeated: the newer one stays
                self.superseded[frame.stream] = self.superseded.get(frame.stream, 0) + 1
                return False
            self.superseded[frame.stream] = self.superseded.get(frame.stream, 0) + 1
        self._frames[frame.stream] = frame
        return True

    def newest(self, stream: str) -> Frame | None:
        return self._frames.get(stream)

    def has_stream(self, stream: str) -> bool:
        return stream in self._frames

    def streams(self) -> list[str]:
        return list(self._frames)

    def clear(self) -> None:
        self._frames.clear()


def new_frame(stream: str, seq: int, ts_ns: int | None, data: bytes, format: str | None,
              width: int | None, height: int | None) -> Frame:
    return Frame(stream, seq, ts_ns, data, format, width, height, time.perf_counter())
