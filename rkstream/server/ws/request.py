"""One open /ws request: the sink its text goes to, and its one response.done."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from rkstream.core.messages import ToolCall
from rkstream.engines.base import STATUS_OF, Outcome
from rkstream.errors import RequestError
from rkstream.protocol import server_events as ev
from rkstream.protocol.events import ResponseCreate
from rkstream.scheduler import Scheduler, Ticket
from rkstream.server.media import FrameUse
from rkstream.server.output import ParsingSink
from rkstream.server.ws.outbox import Outbox


@dataclass
class _Timing:
    accepted_s: float
    first_text_s: float | None = None


class RequestStream:
    """One open request: the engine's text sink and its response.done."""

    def __init__(self, outbox: Outbox, event: ResponseCreate, model: str) -> None:
        self.outbox = outbox
        self.request_id = event.request_id
        self.stream = event.request.stream
        self.model = model
        self.timing = _Timing(time.perf_counter())
        self.ticket: Ticket | None = None
        self.scheduler: Scheduler | None = None  # its model's, once queued
        self.loading: asyncio.Task[None] | None = None  # while its model loads
        self.load_ms = 0.0
        self.cancel_reason: tuple[str, str] | None = None
        self.frame: FrameUse | None = None
        self._seq = 0
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self.parsing: ParsingSink | None = None  # reasoning and tool calls, when they can come
        self._told_position = 0  # the last queue position the client was told
        self._told_started = False

    def follow(self, ticket: Ticket, told: int) -> None:
        """Tell the client how its queued request moves from now on:
        response.queued, then response.started.

        Args:
            told: the queue position the client has (response.created's).
        """
        self._told_position = told
        ticket.on_change = self.progress
        self.progress()

    def progress(self) -> None:
        ticket = self.ticket
        if ticket is None or self._told_started or ticket.outcome.done():
            return  # a request that ends while queued never gets started
        if ticket.started_s is not None:
            self._told_started = True
            self.outbox.put(ev.response_started(self.request_id))
        elif ticket.queue_position != self._told_position:
            self._told_position = ticket.queue_position
            self.outbox.put(ev.response_queued(self.request_id, ticket.queue_position))

    def use_frame(self, frame: FrameUse) -> None:
        self.frame = frame

    def cancel(self, reason: tuple[str, str] | None) -> None:
        """Stop the request, queued, running, or waiting for its model to load."""
        if self.ticket is not None and self.scheduler is not None:
            self.scheduler.cancel(self.ticket, reason)
        elif self.loading is not None:
            self.cancel_reason = reason
            self.loading.cancel()

    def next_seq(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    def _first(self) -> None:
        if self.timing.first_text_s is None:
            self.timing.first_text_s = time.perf_counter()

    def on_text(self, text: str) -> None:
        self._first()
        if self.stream:
            self.outbox.put_delta(self.request_id, text, self.next_seq)
        else:
            self._text.append(text)

    def on_reasoning(self, text: str) -> None:
        self._first()
        if self.stream:
            self.outbox.put_delta(self.request_id, text, self.next_seq, "reasoning")
        else:
            self._reasoning.append(text)

    def on_call_begin(self, index: int, call_id: str, name: str) -> None:
        self._first()  # /ws sends each call whole, when it is complete

    def on_call_arguments(self, index: int, text: str) -> None:
        pass

    def on_call_done(self, index: int, call: ToolCall, problem: str | None) -> None:
        event = ev.tool_call(self.request_id, index, call.id, call.name, call.arguments,
                             problem)
        self._calls.append(event)
        if self.stream:
            self.outbox.put_sequenced(event, self.next_seq)

    def done_event(self, outcome: Outcome) -> dict[str, Any]:
        now = time.perf_counter()
        ticket = self.ticket
        queued_ms = ticket.queued_ms if ticket is not None else 0.0
        first = self.timing.first_text_s
        predicted_s = outcome.predicted_ms / 1000.0
        finish: str = outcome.finish_reason
        if self._calls and finish == "stop":
            finish = "tool_calls"
        usage = {"input_tokens": outcome.prompt_tokens + outcome.cached_tokens,
                 "output_tokens": outcome.output_tokens}
        if self.parsing is not None and self.parsing.reasoning_pieces:
            usage["reasoning_tokens"] = self.parsing.reasoning_pieces
        event: dict[str, Any] = {
            "type": "response.done",
            "request_id": self.request_id,
            "status": STATUS_OF[outcome.finish_reason],
            "finish_reason": finish,
            "usage": usage,
            "model": self.model,
            "timings": {
                "load_ms": round(self.load_ms, 3),
                "queued_ms": round(queued_ms, 3),
                "vision_ms": round(ticket.vision_ms, 3) if ticket is not None else 0.0,
                "prompt_n": outcome.prompt_tokens,
                "cache_n": outcome.cached_tokens,
                "prompt_ms": round(outcome.prompt_ms, 3),
                "predicted_n": outcome.output_tokens,
                "predicted_ms": round(outcome.predicted_ms, 3),
                "predicted_per_second": round(outcome.output_tokens / predicted_s, 3)
                if predicted_s > 0 else 0.0,
                "ttft_ms": round((first - self.timing.accepted_s) * 1000.0, 3)
                if first is not None else None,
                "total_ms": round((now - self.timing.accepted_s) * 1000.0, 3),
            },
        }
        if outcome.error_code is not None:
            event["error"] = ev.error_body(outcome.error_code, outcome.error_message or "")
        if self.frame is not None:
            event["frame"] = self.frame.as_dict()
        if not self.stream:
            event["text"] = "".join(self._text)
            if self._reasoning:
                event["reasoning"] = "".join(self._reasoning)
            if self._calls:
                event["tool_calls"] = [{k: v for k, v in call.items()
                                        if k not in ("type", "request_id")}
                                       for call in self._calls]
        return event


def failed_done(request_id: str, error: RequestError) -> dict[str, Any]:
    """response.done for a request refused before it ran."""
    return {
        "type": "response.done", "request_id": request_id, "status": "failed",
        "finish_reason": "error", "usage": {"input_tokens": 0, "output_tokens": 0},
        "timings": {"load_ms": 0.0, "queued_ms": 0.0, "vision_ms": 0.0, "prompt_n": 0,
                    "cache_n": 0,
                    "prompt_ms": 0.0,
                    "predicted_n": 0, "predicted_ms": 0.0, "predicted_per_second": 0.0,
                    "ttft_ms": None, "total_ms": 0.0},
        "error": ev.error_body_of(error),
    }
