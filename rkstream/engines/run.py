"""The part of a run every engine shares: from the owner thread to the sink.

The engine's thread (or the runtime's callback thread) calls :meth:`emit`
with complete text and, once the native call has returned, :meth:`finish`
with what it counted. Both go through one :class:`LoopChannel`, so the
outcome can never overtake the last piece of text. On the loop, stop
sequences are cut out and the outcome is computed.
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass

from rkstream.core.channel import LoopChannel
from rkstream.engines.base import Job, Outcome, Run, TextSink
from rkstream.engines.text import StopMatcher


@dataclass
class RunFacts:
    """What the owner thread learned about a finished native run."""

    tokens: int
    prompt_tokens: int
    prompt_ms: float | None  # None: the engine has no counter, use wall time
    predicted_ms: float | None
    first_text_s: float | None
    start_s: float
    end_s: float
    error_code: str | None = None
    error_message: str | None = None
    context_full: bool = False  # generation stopped because the context window was full
    cached_tokens: int = 0  # prompt tokens the KV cache already held


class BridgedRun(Run):
    """A run whose text crosses from an engine thread into the event loop.

    Subclasses implement :meth:`_abort` (ask the native side to stop). The
    flags they read from their thread are plain attributes: assignments are
    atomic under the GIL and a late read only costs one more token.
    """

    def __init__(self, job: Job, sink: TextSink, loop: asyncio.AbstractEventLoop,
                 max_tokens: int) -> None:
        self.job = job
        self.max_tokens = max_tokens
        self._sink = sink
        self._stops = StopMatcher(job.sampling.stop)
        self._channel: LoopChannel[str | RunFacts] = LoopChannel(loop, self._on_items)
        self._done: asyncio.Future[Outcome] = loop.create_future()
        self.cancelled = False
        self.cancel_s: float | None = None
        self.stop_requested = False  # a stop sequence matched
        self.first_text_s: float | None = None
        self.start_s = 0.0
        self.generated: list[str] = []  # every piece as generated, stop sequences included
        self.last_text_s: float | None = None  # loop clock of the latest text (the watchdog)
        self.ended = False  # the outcome is set; later items are dropped

    # -- engine thread -----------------------------------------------------------
    def emit(self, text: str) -> None:
        """Hand complete text to the loop (any thread)."""
        if self.first_text_s is None:
            self.first_text_s = time.perf_counter()
        self._channel.put(text)

    def finish(self, facts: RunFacts) -> None:
        """Hand the end of the run to the loop, after all text (any thread)."""
        self._channel.put(facts)

    @property
    def should_stop(self) -> bool:
        """True once the run was cancelled or hit a stop sequence."""
        return self.cancelled or self.stop_requested

    # -- event loop --------------------------------------------------------------
    def deliver(self, items: list[str | RunFacts]) -> None:
        """Take text and the end from a producer that runs on the loop itself."""
        self._on_items(items)

    def end_now(self, facts: RunFacts) -> None:
        """End the run with ``facts`` although the native side has not returned (its
        worker died, or it hangs); anything it sends later is dropped."""
        self._on_items([facts])

    def _on_items(self, items: list[str | RunFacts]) -> None:
        if self.ended:
            return
        self.last_text_s = self._done.get_loop().time()
        for item in items:
            if isinstance(item, str):
                self.generated.append(item)
                text = self._stops.feed(item)
                if text:
                    self._sink.on_text(text)
                if self._stops.stopped and not self.stop_requested:
                    self.stop_requested = True
                    self._abort()
            else:
                self.ended = True
                tail = self._stops.flush()
                if tail:
                    self._sink.on_text(tail)
                outcome = self._outcome(item)
                self._settle(item, outcome)
                if not self._done.done():
                    self._done.set_result(outcome)
                return

    def _outcome(self, facts: RunFacts) -> Outcome:
        first = facts.first_text_s or facts.end_s
        prompt_ms = facts.prompt_ms
        if prompt_ms is None:
            prompt_ms = (first - facts.start_s) * 1000.0
        predicted_ms = facts.predicted_ms
        if predicted_ms is None:
            predicted_ms = (facts.end_s - first) * 1000.0
        outcome = Outcome(finish_reason="stop", prompt_tokens=facts.prompt_tokens,
                          output_tokens=facts.tokens, cached_tokens=facts.cached_tokens,
                          prompt_ms=prompt_ms,
                          predicted_ms=predicted_ms)
        if facts.error_code is not None:
            outcome.finish_reason = "error"
            outcome.error_code = facts.error_code
            outcome.error_message = facts.error_message
        elif self._stops.stopped:
            outcome.finish_reason = "stop"
            outcome.stop_sequence = self._stops.matched
        elif self.cancelled:
            outcome.finish_reason = "cancelled"
        elif facts.context_full or facts.tokens >= self.max_tokens:
            outcome.finish_reason = "length"
        return outcome

    def _settle(self, facts: RunFacts, outcome: Outcome) -> None:
        """Book-keep the finished run before its outcome is known to anyone (the
        KV cache's contents); nothing by default."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Ask the native side to stop as soon as it can (called on the loop)."""

    def cancel(self) -> None:
        if self._done.done() or self.cancelled:
            return
        self.cancelled = True
        self.cancel_s = time.perf_counter()
        self._abort()

    async def wait(self) -> Outcome:
        return await asyncio.shield(self._done)
