"""One generation for an HTTP handler: submit, stream the text, watch the client.

The HTTP APIs (OpenAI, Ollama, the official demo's /rkllm_chat) share the
scheduler and engines with /ws. :func:`generate` submits a job and yields
its text as it arrives, then the outcome. While it waits, it looks at the
connection every 50 ms, so a client that goes away, even during a long
prefill when nothing is being written, cancels its request at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from ..engines.base import Job, Outcome, SamplingSettings
from ..errors import RequestError
from ..protocol.events import Message, Params, ResponseCreate
from ..scheduler import Ticket
from .media import Media
from .sampling import effective_sampling
from .state import AppState

DISCONNECT_POLL_S = 0.05


class _QueueSink:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def on_text(self, text: str) -> None:
        self.queue.put_nowait(text)


@dataclass
class Generation:
    """What an HTTP handler gets back: the text pieces, then ``outcome``."""

    request_id: str
    ticket: Ticket
    started_s: float = field(default_factory=time.perf_counter)
    first_text_s: float | None = None
    outcome: Outcome | None = None


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def sampling_for(state: AppState, params: Params) -> SamplingSettings:
    """Server defaults under ``params``; raises ProtocolError for max_tokens over the cap."""
    return effective_sampling(state.settings, params)


def start(state: AppState, messages: tuple[Message, ...], sampling: SamplingSettings,
          *, instructions: str | None = None, prefix: str = "http",
          fim: tuple[str, str] | None = None) -> tuple[Generation, _QueueSink]:
    """Submit a job for ``messages``; images in them go through the vision step.

    Raises:
        RequestError: the model is not loaded (``model_loading``), the queue is
            full (``queue_full``), or an image cannot be taken (vision codes).
    """
    if state.scheduler is None or state.engine is None:
        raise RequestError("model_loading", "the model is still loading; retry shortly")
    request_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
    if fim is not None and not state.engine.info.fim:
        raise RequestError("fim_unsupported",
                           f"the loaded model ({state.engine.info.id}) defines no FIM tokens "
                           "(fill-in-the-middle), so suffix cannot be used; send the prompt "
                           "alone, or load a code model whose GGUF has FIM tokens")
    job = Job(request_id=request_id, messages=messages, instructions=instructions,
              sampling=sampling, fim=fim)
    sink = _QueueSink()
    event = ResponseCreate(request_id=request_id, input=messages)
    prepare = None
    if event.has_media:
        media = Media(state.vision, state.engine.info.context_length,
                      state.settings.limits.max_images_per_request, lambda: False)
        media.check(event)

        async def prepare() -> Job:
            return await media.prepare(job, event, lambda frame: None)

    ticket = state.scheduler.submit(job, sink, prepare)
    return Generation(request_id, ticket), sink


async def generate(request: web.Request, state: AppState, messages: tuple[Message, ...],
                   sampling: SamplingSettings, *, instructions: str | None = None,
                   prefix: str = "http", fim: tuple[str, str] | None = None
                   ) -> AsyncIterator[str | Generation]:
    """Yield text pieces, then the finished :class:`Generation` (with its outcome).

    If the client disconnects, or the consumer stops iterating, the request is
    cancelled (queued: removed; running: rkllm_abort) before this returns.

    Raises:
        RequestError: as :func:`start`, before anything is yielded.
    """
    gen, sink = start(state, messages, sampling, instructions=instructions, prefix=prefix,
                      fim=fim)
    scheduler = state.scheduler
    assert scheduler is not None
    finished = False
    try:
        while True:
            if gen.ticket.outcome.done() and sink.queue.empty():
                break
            try:
                text = await asyncio.wait_for(sink.queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if client_gone(request):
                    scheduler.cancel(gen.ticket)
                    await asyncio.shield(gen.ticket.outcome)
                    return
                continue
            # Pieces that piled up while the client was being written to go out
            # as one, so a slow socket costs fewer, larger writes.
            while not sink.queue.empty():
                text += sink.queue.get_nowait()
            if gen.first_text_s is None:
                gen.first_text_s = time.perf_counter()
            yield text
        gen.outcome = gen.ticket.outcome.result()
        finished = True
        yield gen
    finally:
        if not finished:
            scheduler.cancel(gen.ticket)
