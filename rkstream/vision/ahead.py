"""Per connection: which embedding a camera frame gets, and when frames are encoded ahead.

Each stream keeps an *anchor*: the last frame whose embedding is at hand,
with its thumbnail. A newer frame gets, in this order:

1. the anchor's embedding, when it is the anchor;
2. the cached embedding of identical bytes (the frame's own, exactly);
3. the anchor's embedding, when its thumbnail differs from the anchor's by
   less than ``change_threshold`` (counted in ``unchanged``);
4. a new encode, which becomes the anchor.

Encode-ahead runs those same steps before a request asks, for the newest
frame, at most ``fps`` times a second per stream (see :class:`AheadPolicy`).
A request's vision step and the look ahead share a lock per stream, so a
request that arrives during an ahead encode waits for it and then compares
with it, rather than queueing a second encode behind it on the encoder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from rkstream.core.embeddings import ImageEmbedding
from rkstream.errors import VisionError
from rkstream.log import ws_log
from rkstream.vision.change import Thumb
from rkstream.vision.frames import Frame, FrameStore
from rkstream.vision.policy import OFF, RATE, AheadPolicy
from rkstream.vision.service import VisionService

# While paused, how often a stream looks whether the generation ended.
PAUSE_POLL_S = 0.25


@dataclass(frozen=True)
class FrameEmbedding:
    """The embedding a frame part used and whose it is.

    Attributes:
        seq: the frame that was encoded (the newest one's own seq, unless it
            was judged unchanged).
        ts_ns: that frame's ``ts_ns``.
        unchanged: frames newer than it that were judged unchanged from it.
        received_s: when that frame arrived (``Frame.received_s``).
    """

    embedding: ImageEmbedding
    seq: int
    ts_ns: int | None
    unchanged: int
    received_s: float


@dataclass
class _Anchor:
    vision: VisionService  # an embedding belongs to its encoder
    seq: int
    ts_ns: int | None
    thumb: Thumb | None
    embedding: ImageEmbedding
    received_s: float
    unchanged: int = 0

    def use(self) -> FrameEmbedding:
        return FrameEmbedding(self.embedding, self.seq, self.ts_ns, self.unchanged,
                              self.received_s)


class _Stream:
    def __init__(self) -> None:
        self.anchor: _Anchor | None = None
        self.lock = asyncio.Lock()
        self.looked_seq = -1  # the newest frame already looked at
        self.next_s = 0.0  # loop time of the next look the budget allows
        self.waiting = 0  # requests with a frame part of this stream, queued
        self.task: asyncio.Task[None] | None = None


class FrameEncoder:
    """Frame embeddings and encode-ahead of one connection's streams.

    Args:
        frames: the connection's newest frames.
        policy: when to encode ahead, and the change threshold.
        generating: whether a generation runs now on the NPU (or the CPU
            model generates), for ``pause_while_generating``.
    """

    def __init__(self, frames: FrameStore, policy: AheadPolicy,
                 generating: Callable[[], bool]) -> None:
        self.frames = frames
        self.policy = policy
        self._generating = generating
        self._streams: dict[str, _Stream] = {}

    def _state(self, stream: str) -> _Stream:
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream()
        return state

    # -- a request's vision step ---------------------------------------------------------
    async def embedding(self, stream: str, vision: VisionService,
                        taken: Callable[[Frame], None] | None = None
                        ) -> tuple[Frame, FrameEmbedding]:
        """The newest frame of ``stream`` and the embedding it gets.

        Args:
            taken: told the frame as soon as it is taken, before any encode.

        Raises:
            VisionError: no frame yet (``unknown_stream``), or the frame is
                not a usable image.
        """
        state = self._state(stream)
        async with state.lock:  # after a look ahead in progress, never beside it
            return await self._refresh(stream, state, vision, ahead=False, taken=taken)

    async def _refresh(self, stream: str, state: _Stream, vision: VisionService, *,
                       ahead: bool, taken: Callable[[Frame], None] | None = None
                       ) -> tuple[Frame, FrameEmbedding]:
        frame = self.frames.newest(stream)
        if frame is None:
            raise VisionError("unknown_stream", f"stream {stream!r} has no frame")
        if taken is not None:
            taken(frame)
        state.looked_seq = max(state.looked_seq, frame.seq)
        anchor = state.anchor if state.anchor is not None and state.anchor.vision is vision \
            else None
        if anchor is not None and anchor.seq == frame.seq:
            return frame, anchor.use()
        key = await vision.key(frame.data, frame.format, frame.width, frame.height)
        embedding = vision.cache.get(key)  # identical bytes: this frame's own embedding
        threshold = self.policy.change_threshold
        thumb: Thumb | None = None
        if embedding is None and threshold > 0 and anchor is not None \
                and anchor.thumb is not None:
            thumb, diff = await vision.compare(frame.data, anchor.thumb, format=frame.format,
                                               width=frame.width, height=frame.height)
            if diff is not None and diff < threshold:
                anchor.unchanged += 1
                vision.note_unchanged()
                return frame, anchor.use()
        if embedding is None:
            embedding = (await vision.encode(frame.data, format=frame.format,
                                             width=frame.width, height=frame.height, key=key,
                                             ahead=ahead)).embedding
        if thumb is None and threshold > 0:
            thumb, _ = await vision.compare(frame.data, None, format=frame.format,
                                            width=frame.width, height=frame.height)
        state.anchor = _Anchor(vision, frame.seq, frame.ts_ns, thumb, embedding,
                               frame.received_s)
        return frame, state.anchor.use()

    # -- encode-ahead --------------------------------------------------------------------
    def frame_added(self, stream: str, vision: VisionService | None) -> None:
        """A newer frame of ``stream`` was kept; ``vision`` is the session model's
        encoder when that model is loaded."""
        if vision is not None and self._wanted(self._state(stream)):
            self._start(stream, vision)

    def wait(self, stream: str, vision: VisionService | None) -> None:
        """A request with a frame part of ``stream`` is queued for an instance."""
        state = self._state(stream)
        state.waiting += 1
        if vision is not None:
            self._start(stream, vision)

    def unwait(self, stream: str) -> None:
        """That request got its instance, or ended."""
        state = self._streams.get(stream)
        if state is not None:
            state.waiting = max(0, state.waiting - 1)

    def _wanted(self, state: _Stream) -> bool:
        """Whether the policy looks ahead at this stream now (the pause aside)."""
        return self.policy.mode != OFF and (state.waiting > 0 or self.policy.mode == RATE)

    def _paused(self, state: _Stream) -> bool:
        # A waiting frame question needs the encoding anyway: only speculative
        # looks are paused.
        return (state.waiting == 0 and self.policy.pause_while_generating
                and self._generating())

    def _start(self, stream: str, vision: VisionService) -> None:
        state = self._state(stream)
        if state.task is None:  # one loop per stream; it takes the newest frame each time
            state.task = asyncio.create_task(self._ahead(stream, state, vision))

    async def _ahead(self, stream: str, state: _Stream, vision: VisionService) -> None:
        loop = asyncio.get_running_loop()
        interval = self.policy.interval_s
        try:
            while True:
                frame = self.frames.newest(stream)
                if frame is None or frame.seq <= state.looked_seq or not self._wanted(state) \
                        or vision.closed:
                    return  # the next frame or queued question starts it again
                if self._paused(state):
                    await asyncio.sleep(min(interval, PAUSE_POLL_S))
                    continue
                delay = state.next_s - loop.time()
                if delay > 0:  # the budget: at most one look per interval
                    await asyncio.sleep(delay)
                    continue
                state.next_s = loop.time() + interval
                try:
                    async with state.lock:
                        if self._paused(state):  # a generation began while we waited
                            continue
                        await self._refresh(stream, state, vision, ahead=True)
                except VisionError as exc:  # the request's own vision step will report it
                    ws_log.info("encode-ahead of stream %s failed: %s", stream, exc.message)
        finally:
            state.task = None

    async def close(self) -> None:
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._streams.clear()
