"""One queue for every connection, in arrival order, in front of N instances.

A request either starts at once on a free instance (the one whose KV cache
holds most of its conversation) or waits in a queue of at most ``max_queue``
entries; a full queue refuses it with QueueFullError.
Cancelling a queued request removes it without touching the runtime;
cancelling a running one asks the engine to abort.

An instance that cannot serve (its worker restarts after a fault) is
skipped; waiting requests stay queued, and go to it once it is back.

Models that share the NPU share a gate (:class:`~rkstream.core.npu_gate.NpuGate`):
a request starts only when the gate lets its model generate, and when the gate
frees up, the model whose request has waited longest goes first.

A request may carry a ``prepare`` step (the vision step: decode and encode
its images). It runs once the request holds an instance, so a camera frame
is taken as late as possible; a failure there fails the request and frees
the instance.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from rkstream.core.npu_gate import NpuGate
from rkstream.engines.base import EngineInstance, Job, Outcome, Run, TextSink
from rkstream.errors import SHUTTING_DOWN, QueueFullError, RequestError
from rkstream.log import scheduler_log

Prepare = Callable[[], Awaitable[Job]]


class Observer(Protocol):
    """Told about every request as it ends, with the gaps between its text pieces."""

    def request_done(self, outcome: Outcome, queued_ms: float, ttft_s: float | None,
                     busy_s: float, api: str) -> None: ...

    def text_gaps(self, seconds: list[float]) -> None: ...


class _TimedSink:
    """Passes text on, noting when the first piece came and the gaps between.

    The gaps reach the observer (a histogram) in batches, in a later turn of
    the loop: on a piece's way to the client there is only a clock read and an
    append, and a long answer never holds the loop up with its whole history.
    """

    BATCH = 64

    def __init__(self, sink: TextSink, observer: Observer | None) -> None:
        self._sink = sink
        self._observer = observer
        self.first_s: float | None = None
        self._last_s = 0.0
        self.gaps: list[float] = []

    def on_text(self, text: str) -> None:
        now = time.perf_counter()
        if self.first_s is None:
            self.first_s = now
        else:
            self.gaps.append(now - self._last_s)
            if len(self.gaps) >= self.BATCH and self._observer is not None:
                asyncio.get_running_loop().call_soon(self._observer.text_gaps, self.gaps)
                self.gaps = []
        self._last_s = now
        self._sink.on_text(text)


class Ticket:
    """A request's place in the scheduler, from submit to outcome."""

    def __init__(self, job: Job, sink: TextSink, prepare: Prepare | None = None,
                 observer: Observer | None = None) -> None:
        self.job = job
        self.sink = _TimedSink(sink, observer)
        self.prepare = prepare
        self.vision_ms = 0.0
        self.preparing = False
        self.cancel_requested = False
        self.cancel_reason: tuple[str, str] | None = None  # (code, message) of a shutdown
        self.submitted_s = time.perf_counter()
        self.started_s: float | None = None
        self.run: Run | None = None
        self.outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.queue_position = 0  # waiting requests ahead of it; 0 = next (or started)
        # Told when queue_position goes down or the ticket gets an instance.
        self.on_change: Callable[[], None] | None = None

    def changed(self) -> None:
        """Tell the ticket's follower (its position moved, or it started)."""
        if self.on_change is not None:
            self.on_change()

    @property
    def queued_ms(self) -> float:
        end = self.started_s if self.started_s is not None else time.perf_counter()
        return (end - self.submitted_s) * 1000.0

    def _finish(self, outcome: Outcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


class Scheduler:
    """Runs jobs on engine instances, first come first served.

    Args:
        instances: the engine's instances; each runs one job at a time.
        max_queue: how many jobs may wait for an instance.
    """

    def __init__(self, instances: list[EngineInstance], max_queue: int,
                 observer: Observer | None = None, timeout_s: float = 0.0,
                 gate: tuple[NpuGate, str] | None = None) -> None:
        self._observer = observer
        self._gate = gate  # (the shared gate, this model's name in it)
        self._unwatch_gate = gate[0].watch(gate[1], self._oldest_s, self._dispatch) if gate \
            else None
        self._timeout_s = timeout_s
        self._free: collections.deque[EngineInstance] = collections.deque(instances)
        self._queue: collections.deque[Ticket] = collections.deque()
        self._running: dict[Ticket, asyncio.Task[None]] = {}
        self._max_queue = max_queue
        self._closed = False
        self.instance_count = len(instances)
        for instance in instances:
            instance.watch_health(self._dispatch)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    def _oldest_s(self) -> float | None:
        return self._queue[0].submitted_s if self._queue else None

    def submit(self, job: Job, sink: TextSink, prepare: Prepare | None = None) -> Ticket:
        """Start ``job`` now or queue it; its outcome arrives on ``ticket.outcome``.

        Args:
            job: what to run.
            sink: where its text goes.
            prepare: awaited once an instance is free; returns the job to run.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
        """
        ticket = Ticket(job, sink, prepare, self._observer)
        if self._closed:
            ticket._finish(Outcome("error", error_code="shutting_down",
                                   error_message=SHUTTING_DOWN))
        elif not self._queue and self._serving_free():
            self._start(ticket, self._take_instance(job))
        elif len(self._queue) >= self._max_queue:
            raise QueueFullError(self._max_queue)
        else:
            ticket.queue_position = len(self._queue)
            self._queue.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket, reason: tuple[str, str] | None = None) -> None:
        """Cancel a queued or running ticket; a finished one is left alone.

        Args:
            reason: (error code, message) the cancelled outcome carries, such as
                ``shutting_down``; None for a plain cancel.
        """
        if ticket.outcome.done():
            return
        if reason is not None:
            ticket.cancel_reason = reason
        if ticket.run is not None:
            ticket.run.cancel()
            return
        task = self._running.get(ticket)
        if task is not None:  # holds an instance, before or in its prepare step
            ticket.cancel_requested = True
            if ticket.preparing:
                task.cancel()
            return
        try:
            self._queue.remove(ticket)
        except ValueError:
            return
        self._renumber()  # the ones behind it moved up
        self._done(ticket, Outcome("cancelled"))

    def cancel_all(self, reason: tuple[str, str]) -> None:
        """Cancel every queued and running ticket with ``reason`` (a drain's deadline);
        new work is still taken."""
        # The queue from its end: no waiting ticket moves up only to be cancelled next.
        for ticket in [*reversed(self._queue), *self._running]:
            self.cancel(ticket, reason)

    def _start(self, ticket: Ticket, instance: EngineInstance) -> None:
        if self._gate is not None:
            self._gate[0].enter(self._gate[1])
        ticket.started_s = time.perf_counter()
        self._running[ticket] = asyncio.create_task(self._watch(ticket, instance))
        ticket.changed()

    async def _watch(self, ticket: Ticket, instance: EngineInstance) -> None:
        try:
            outcome = await self._run(ticket, instance)
        except asyncio.CancelledError:
            outcome = Outcome("cancelled")
        except RequestError as exc:  # the prepare step refused the request
            outcome = Outcome("error", error_code=exc.code, error_message=exc.message)
        except Exception as exc:
            scheduler_log.exception("run on instance %d failed", instance.index)
            outcome = Outcome("error", error_code="internal_error",
                              error_message=f"the engine failed: {exc}")
        del self._running[ticket]
        self._free.append(instance)
        if self._gate is not None:
            self._gate[0].leave(self._gate[1])  # wakes the longest waiter, maybe us
        self._dispatch()
        self._done(ticket, outcome)

    def _done(self, ticket: Ticket, outcome: Outcome) -> None:
        # The outcome is complete here, before anyone (metrics first) sees it.
        if outcome.finish_reason == "cancelled" and ticket.cancel_reason is not None:
            outcome.error_code, outcome.error_message = ticket.cancel_reason
        if self._observer is not None and not ticket.outcome.done():
            first = ticket.sink.first_s
            busy = 0.0 if ticket.started_s is None else time.perf_counter() - ticket.started_s
            self._observer.request_done(
                outcome, ticket.queued_ms,
                None if first is None else first - ticket.submitted_s, busy, ticket.job.api)
            self._observer.text_gaps(ticket.sink.gaps)
        ticket._finish(outcome)

    def busy_now_s(self) -> float:
        """Seconds the running requests have held their instances so far."""
        now = time.perf_counter()
        return sum(now - (t.started_s or now) for t in self._running)

    async def _run(self, ticket: Ticket, instance: EngineInstance) -> Outcome:
        job = ticket.job
        if ticket.prepare is not None and not ticket.cancel_requested:
            started = time.perf_counter()
            ticket.preparing = True
            try:
                job = await ticket.prepare()
            finally:
                ticket.preparing = False
                ticket.vision_ms = (time.perf_counter() - started) * 1000.0
        if ticket.cancel_requested:
            return Outcome("cancelled")
        ticket.run = instance.start(job, ticket.sink)
        if not self._timeout_s:
            return await ticket.run.wait()
        try:
            return await asyncio.wait_for(ticket.run.wait(), self._timeout_s)
        except asyncio.TimeoutError:
            ticket.run.cancel()
            outcome = await ticket.run.wait()
            outcome.finish_reason = "error"
            outcome.error_code = "request_timeout"
            outcome.error_message = (f"the request ran longer than {self._timeout_s:g} s "
                                     "(limits.request_timeout_s) and was stopped")
            return outcome

    def _serving_free(self) -> list[EngineInstance]:
        if self._gate is not None and not self._gate[0].may_start(self._gate[1]):
            return []
        return [instance for instance in self._free if instance.health().status == "ok"]

    def _take_instance(self, job: Job) -> EngineInstance:
        """The free, serving instance whose KV cache holds most of ``job``'s prompt.

        Only free instances are considered, so a job never waits longer than
        first come, first served would make it; ties go to the one free longest.
        """
        free = self._serving_free()
        scores = [instance.affinity(job) for instance in free]
        best = free[scores.index(max(scores))]  # the first of equals: free longest
        self._free.remove(best)
        return best

    def _dispatch(self) -> None:
        while self._queue and not self._closed and self._serving_free():
            ticket = self._queue.popleft()
            self._start(ticket, self._take_instance(ticket.job))
        self._renumber()

    def _renumber(self) -> None:
        for position, waiting in enumerate(self._queue):
            if waiting.queue_position != position:
                waiting.queue_position = position
                waiting.changed()

    async def close(self) -> None:
        """Refuse new work, cancel queued jobs, abort running ones and wait for them."""
        self._closed = True
        if self._unwatch_gate is not None:
            self._unwatch_gate()
            self._unwatch_gate = None
        while self._queue:
            self._done(self._queue.popleft(), Outcome("cancelled"))
        for ticket in list(self._running):
            self.cancel(ticket)
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
