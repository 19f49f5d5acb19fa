"""One queue for every connection, in arrival order, in front of N instances.

A request either starts at once on a free instance or waits in a queue of at
most ``max_queue`` entries; a full queue refuses it with QueueFullError.
Cancelling a queued request removes it without touching the runtime;
cancelling a running one asks the engine to abort.
"""

from __future__ import annotations

import asyncio
import collections
import time

from .engines.base import EngineInstance, Job, Outcome, Run, TextSink
from .errors import QueueFullError
from .log import scheduler_log


class Ticket:
    """A request's place in the scheduler, from submit to outcome."""

    def __init__(self, job: Job, sink: TextSink) -> None:
        self.job = job
        self.sink = sink
        self.submitted_s = time.perf_counter()
        self.started_s: float | None = None
        self.run: Run | None = None
        self.outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.queue_position = 0

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

    def __init__(self, instances: list[EngineInstance], max_queue: int) -> None:
        self._free: collections.deque[EngineInstance] = collections.deque(instances)
        self._queue: collections.deque[Ticket] = collections.deque()
        self._running: dict[Ticket, asyncio.Task[None]] = {}
        self._max_queue = max_queue
        self._closed = False
        self.instance_count = len(instances)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def submit(self, job: Job, sink: TextSink) -> Ticket:
        """Start ``job`` now or queue it; its outcome arrives on ``ticket.outcome``.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
        """
        ticket = Ticket(job, sink)
        if self._closed:
            ticket._finish(Outcome("error", error_code="shutting_down",
                                   error_message="the server is shutting down"))
        elif self._free and not self._queue:
            self._start(ticket, self._free.popleft())
        elif len(self._queue) >= self._max_queue:
            raise QueueFullError(self._max_queue)
        else:
            ticket.queue_position = len(self._queue)
            self._queue.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Cancel a queued or running ticket; a finished one is left alone."""
        if ticket.outcome.done():
            return
        if ticket.run is not None:
            ticket.run.cancel()
            return
        try:
            self._queue.remove(ticket)
        except ValueError:
            return
        ticket._finish(Outcome("cancelled"))

    def _start(self, ticket: Ticket, instance: EngineInstance) -> None:
        ticket.started_s = time.perf_counter()
        try:
            ticket.run = instance.start(ticket.job, ticket.sink)
        except Exception as exc:
            scheduler_log.exception("instance %d refused a job", instance.index)
            self._free.append(instance)
            ticket._finish(Outcome("error", error_code="internal_error",
                                   error_message=f"the engine could not start: {exc}"))
            return
        self._running[ticket] = asyncio.create_task(self._watch(ticket, instance))

    async def _watch(self, ticket: Ticket, instance: EngineInstance) -> None:
        assert ticket.run is not None
        try:
            outcome = await ticket.run.wait()
        except Exception as exc:
            scheduler_log.exception("run on instance %d failed", instance.index)
            outcome = Outcome("error", error_code="internal_error",
                              error_message=f"the engine failed: {exc}")
        del self._running[ticket]
        self._free.append(instance)
        self._dispatch()
        ticket._finish(outcome)

    def _dispatch(self) -> None:
        while self._free and self._queue and not self._closed:
            self._start(self._queue.popleft(), self._free.popleft())
        for position, waiting in enumerate(self._queue):
            waiting.queue_position = position

    async def close(self) -> None:
        """Refuse new work, cancel queued jobs, abort running ones and wait for them."""
        self._closed = True
        while self._queue:
            self._queue.popleft()._finish(Outcome("cancelled"))
        for ticket in list(self._running):
            if ticket.run is not None:
                ticket.run.cancel()
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
