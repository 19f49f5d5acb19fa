"""Images and camera frames of one connection, up to the embeddings a job needs.

- ``image.upload`` encodes once (through the shared cache) and remembers the
  id; a later ``{type: "image", image_id}`` part uses it.
- ``frame.append`` keeps the newest frame per stream; the encode-ahead
  policy (``[vision]``, :class:`~rkstream.vision.policy.AheadPolicy`) decides
  when that frame is encoded before a request asks for it.
- A request's vision step (:meth:`Media.prepare`) runs once it holds a model
  instance: it takes each stream's newest frame at that moment, and uses the
  last encoded frame's embedding when the newest was judged unchanged from it
  (``response.done.frame`` says which frame was encoded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rkstream.config import VisionSettings
from rkstream.core.embeddings import ImageEmbedding
from rkstream.core.messages import FramePart, ImagePart
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Job
from rkstream.engines.text import estimate_tokens
from rkstream.errors import RequestError, VisionError
from rkstream.protocol.events import FrameAppend, ImageUpload
from rkstream.vision.ahead import FrameEncoder
from rkstream.vision.frames import Frame, FrameStore, new_frame
from rkstream.vision.policy import AheadPolicy
from rkstream.vision.service import VisionService

MAX_UPLOADS = 256


@dataclass
class FrameUse:
    """Which frame a request took, and whose embedding it used (``response.done.frame``).

    ``seq``/``ts_ns`` name the newest frame when the vision step ran;
    ``encoded_seq``/``encoded_ts_ns`` the frame whose embedding the model got
    (the same one unless it was judged unchanged; None when no embedding was
    made, as when the frame could not be decoded); ``unchanged`` how many
    frames newer than the encoded one were judged unchanged from it.
    ``age_ms``/``taken_age_ms``: how old the encoded / the taken frame was at
    the end of the vision step (server clock, from its arrival); None until then.
    """

    stream: str
    seq: int
    ts_ns: int | None
    superseded: int
    received_s: float
    encoded_seq: int | None = None
    encoded_ts_ns: int | None = None
    unchanged: int = 0
    encoded_received_s: float | None = None
    age_ms: float | None = None
    taken_age_ms: float | None = None

    def stamp(self, now_s: float) -> None:
        """The vision step ended at ``now_s`` (``time.perf_counter``): the model gets
        the embedding now."""
        self.taken_age_ms = round((now_s - self.received_s) * 1000.0, 3)
        if self.encoded_received_s is not None:
            self.age_ms = round((now_s - self.encoded_received_s) * 1000.0, 3)

    def as_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "seq": self.seq, "ts_ns": self.ts_ns,
                "superseded": self.superseded, "encoded_seq": self.encoded_seq,
                "encoded_ts_ns": self.encoded_ts_ns, "unchanged": self.unchanged,
                "age_ms": self.age_ms, "taken_age_ms": self.taken_age_ms}


def ahead_policy(vision: VisionSettings) -> AheadPolicy:
    """The ``[vision]`` encode-ahead keys as one policy."""
    return AheadPolicy(vision.encode_ahead, vision.encode_ahead_fps,
                       vision.encode_ahead_pause_while_generating,
                       vision.frame_change_threshold)


def _unavailable() -> VisionError:
    return VisionError("vision_unavailable",
                       "this server has no vision encoder configured (vision.encoder), so "
                       "images and frames cannot be taken; send text parts only")


def estimate_text_tokens(job: Job) -> int:
    """The job's text in tokens, counted as every context check counts it."""
    if job.prompt is not None:
        return estimate_tokens(job.prompt.text)
    text = (job.instructions or "") + "".join(m.text for m in job.messages)
    return estimate_tokens(text)


class Media:
    """Per-connection image and frame state. Each call names the vision service
    of the model it is for (None: that model has no encoder)."""

    def __init__(self, max_images: int, generating: Callable[[], bool],
                 on_frame: Callable[[bool], None] | None = None,
                 policy: AheadPolicy | None = None) -> None:
        self._on_frame = on_frame  # told whether each frame superseded another
        self.max_images = max_images
        self.frames = FrameStore()
        self.uploads: dict[str, str] = {}  # image_id -> cache key
        self.encoding = FrameEncoder(self.frames, policy or AheadPolicy(), generating)
        self._waiting: dict[int, tuple[str, ...]] = {}  # id(request) -> its frame streams

    # -- checks at response.create -------------------------------------------------
    def check(self, request: GenerationRequest, has_vision: bool) -> None:
        """Refuse at once what the vision step could never take."""
        media = request.media
        if not media:
            return
        if not has_vision:
            raise _unavailable()
        if len(media) > self.max_images:
            raise VisionError(
                "too_many_images",
                f"the request has {len(media)} images or frames; the most is "
                f"{self.max_images} (limits.max_images_per_request)")
        for part in media:
            if isinstance(part, ImagePart) and part.image_id is not None \
                    and part.image_id not in self.uploads:
                raise VisionError("unknown_image",
                                  f"no image {part.image_id!r} was uploaded on this "
                                  "connection; send image.upload first")
            if isinstance(part, FramePart) and not self.frames.has_stream(part.stream):
                raise VisionError("unknown_stream",
                                  f"no frame has arrived on stream {part.stream!r}; send "
                                  "frame.append first")

    # -- the vision step -------------------------------------------------------------
    async def prepare(self, job: Job, request: GenerationRequest,
                      on_frame: Callable[[FrameUse], None], vision: VisionService | None,
                      context_length: int) -> Job:
        """Encode the request's images in order and return the job to run.

        Raises:
            VisionError: an image is unusable, or text + image tokens +
                max_tokens do not fit the context (``context_overflow``).
        """
        if vision is None:
            raise _unavailable()
        self.done_waiting(request)  # it holds an instance now
        images: list[ImageEmbedding] = []
        used: list[FrameUse] = []

        def note(frame: FrameUse) -> None:
            used.append(frame)
            on_frame(frame)

        for part in request.media:
            images.append(await self._embedding(vision, part, note))
        needed = (estimate_text_tokens(job) + sum(i.embedding.shape[0] for i in images)
                  + job.sampling.max_tokens)
        if needed > context_length:
            raise VisionError(
                "context_overflow",
                f"text (about {estimate_text_tokens(job)} tokens) + images "
                f"({sum(i.embedding.shape[0] for i in images)} tokens) + max_tokens "
                f"({job.sampling.max_tokens}) need {needed} tokens; the context holds "
                f"{context_length}. Lower max_tokens or send fewer images")
        end_s = time.perf_counter()  # the prefill starts now
        for frame in used:
            frame.stamp(end_s)
        return replace(job, images=tuple(images), image_tags=vision.tags)

    async def _embedding(self, vision: VisionService, part: ImagePart | FramePart,
                         on_frame: Callable[[FrameUse], None]) -> ImageEmbedding:
        if isinstance(part, FramePart):
            def taken(frame: Frame) -> None:  # reported even if its encode then fails
                on_frame(FrameUse(frame.stream, frame.seq, frame.ts_ns,
                                  self.frames.superseded.get(frame.stream, 0),
                                  frame.received_s))

            frame, used = await self.encoding.embedding(part.stream, vision, taken)
            on_frame(FrameUse(frame.stream, frame.seq, frame.ts_ns,
                              self.frames.superseded.get(frame.stream, 0), frame.received_s,
                              used.seq, used.ts_ns, used.unchanged, used.received_s))
            return used.embedding
        if part.image_id is not None:
            cached = vision.cache.get(self.uploads.get(part.image_id, ""))
            if cached is None:
                raise VisionError("unknown_image",
                                  f"image {part.image_id!r} is no longer cached; upload it "
                                  "again")
            return cached
        assert part.data is not None
        return (await vision.encode(part.data, format=part.format, width=part.width,
                                    height=part.height)).embedding

    # -- image.upload and frame.append -------------------------------------------------
    async def upload(self, event: ImageUpload, vision: VisionService | None) -> dict[str, Any]:
        """Encode an uploaded image; returns the ``image.stored`` event."""
        if vision is None:
            raise _unavailable()
        if event.image_id is None and len(self.uploads) >= MAX_UPLOADS:
            raise RequestError("too_many_images",
                               f"this connection already uploaded {MAX_UPLOADS} images")
        encoded = await vision.encode(event.data, format=event.format, width=event.width,
                                      height=event.height)
        image_id = event.image_id or f"img_{encoded.key[:16]}"
        self.uploads[image_id] = encoded.key
        return {"type": "image.stored", "image_id": image_id,
                "tokens": int(encoded.embedding.embedding.shape[0]),
                "encode_ms": round(encoded.encode_ms, 3)}

    def append_frame(self, event: FrameAppend, has_vision: bool,
                     vision: VisionService | None) -> None:
        """Keep the frame if it is the newest; start encoding ahead if useful
        (with ``vision``, the encoder of the session's model when it is loaded)."""
        if not has_vision:
            raise _unavailable()
        if self.frames.full_for(event.stream):
            raise VisionError("too_many_streams",
                              f"this connection already sends {self.frames.max_streams} "
                              "camera streams, the most allowed; reuse a stream name")
        before = self.frames.superseded.get(event.stream, 0)
        kept = self.frames.append(new_frame(event.stream, event.seq, event.ts_ns, event.data,
                                            event.format, event.width, event.height))
        if self._on_frame is not None:
            self._on_frame(self.frames.superseded.get(event.stream, 0) > before)
        if kept:
            self.encoding.frame_added(event.stream, vision)

    # -- frame questions waiting for an instance (encode_ahead = on_request) -----------
    def waiting(self, request: GenerationRequest, vision: VisionService | None) -> None:
        """``request`` is queued for an instance; its frame streams may be encoded ahead."""
        streams = tuple(p.stream for p in request.media if isinstance(p, FramePart))
        if streams and id(request) not in self._waiting:
            self._waiting[id(request)] = streams
            for stream in streams:
                self.encoding.wait(stream, vision)

    def done_waiting(self, request: GenerationRequest) -> None:
        """``request`` got its instance or ended (safe to call more than once)."""
        for stream in self._waiting.pop(id(request), ()):
            self.encoding.unwait(stream)

    async def close(self) -> None:
        await self.encoding.close()
        self._waiting.clear()
        self.frames.clear()
        self.uploads.clear()
