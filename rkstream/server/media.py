"""Images and camera frames of one connection, up to the embeddings a job needs.

- ``image.upload`` encodes once (through the shared cache) and remembers the
  id; a later ``{type: "image", image_id}`` part uses it.
- ``frame.append`` keeps the newest frame per stream; while the model is
  busy, that frame is encoded ahead, so a request that asks about it mostly
  finds it in the cache.
- A request's vision step (:meth:`Media.prepare`) runs once it holds a model
  instance: it takes each stream's newest frame at that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rkstream.core.embeddings import ImageEmbedding
from rkstream.core.messages import FramePart, ImagePart
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Job
from rkstream.engines.text import estimate_tokens
from rkstream.errors import RequestError, VisionError
from rkstream.log import ws_log
from rkstream.protocol.events import FrameAppend, ImageUpload
from rkstream.vision.frames import FrameStore, new_frame
from rkstream.vision.service import VisionService

MAX_UPLOADS = 256


@dataclass
class FrameUse:
    """Which frame a request used (``response.done.frame``)."""

    stream: str
    seq: int
    ts_ns: int | None
    superseded: int

    def as_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "seq": self.seq, "ts_ns": self.ts_ns,
                "superseded": self.superseded}


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

    def __init__(self, max_images: int, model_busy: Callable[[], bool],
                 on_frame: Callable[[bool], None] | None = None) -> None:
        self._on_frame = on_frame  # told whether each frame superseded another
        self.max_images = max_images
        self.frames = FrameStore()
        self.uploads: dict[str, str] = {}  # image_id -> cache key
        self._model_busy = model_busy
        self._ahead: dict[str, asyncio.Task[None]] = {}

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
        images: list[ImageEmbedding] = []
        for part in request.media:
            images.append(await self._embedding(vision, part, on_frame))
        needed = (estimate_text_tokens(job) + sum(i.embedding.shape[0] for i in images)
                  + job.sampling.max_tokens)
        if needed > context_length:
            raise VisionError(
                "context_overflow",
                f"text (about {estimate_text_tokens(job)} tokens) + images "
                f"({sum(i.embedding.shape[0] for i in images)} tokens) + max_tokens "
                f"({job.sampling.max_tokens}) need {needed} tokens; the context holds "
                f"{context_length}. Lower max_tokens or send fewer images")
        return replace(job, images=tuple(images), image_tags=vision.tags)

    async def _embedding(self, vision: VisionService, part: ImagePart | FramePart,
                         on_frame: Callable[[FrameUse], None]) -> ImageEmbedding:
        if isinstance(part, FramePart):
            frame = self.frames.newest(part.stream)
            if frame is None:
                raise VisionError("unknown_stream", f"stream {part.stream!r} has no frame")
            on_frame(FrameUse(frame.stream, frame.seq, frame.ts_ns,
                              self.frames.superseded.get(frame.stream, 0)))
            return (await vision.encode(frame.data, format=frame.format, width=frame.width,
                                        height=frame.height)).embedding
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
        if kept and vision is not None and vision.encode_ahead and self._model_busy():
            self._encode_ahead(event.stream, vision)

    def _encode_ahead(self, stream: str, vision: VisionService) -> None:
        if stream in self._ahead:  # one at a time; it picks the newest when it loops
            return
        self._ahead[stream] = asyncio.create_task(self._ahead_loop(stream, vision))

    async def _ahead_loop(self, stream: str, vision: VisionService) -> None:
        done_seq = -1
        try:
            while (frame := self.frames.newest(stream)) is not None and frame.seq > done_seq:
                done_seq = frame.seq
                try:
                    await vision.encode(frame.data, format=frame.format, width=frame.width,
                                        height=frame.height)
                except VisionError as exc:  # the request's own vision step will report it
                    ws_log.info("encode-ahead of %s seq %d failed: %s", stream, frame.seq,
                                exc.message)
        finally:
            self._ahead.pop(stream, None)

    async def close(self) -> None:
        for task in list(self._ahead.values()):
            task.cancel()
        await asyncio.gather(*self._ahead.values(), return_exceptions=True)
        self.frames.clear()
        self.uploads.clear()
