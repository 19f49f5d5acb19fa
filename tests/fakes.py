"""A recording fake engine for scheduler and connection tests.

It streams the words of the last message back, one per ``delay_s``, and
records every job, cancel, outcome and overlap so tests can assert on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from rkstream.config import Settings
from rkstream.engines.base import (
    Engine,
    EngineInstance,
    InstanceHealth,
    InstanceStatus,
    Job,
    ModelInfo,
    Outcome,
    Run,
    TextSink,
)


@dataclass
class Calls:
    jobs: list[Job] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by request id
    overlaps: int = 0
    loads: int = 0
    closes: int = 0


class FakeRun(Run):
    def __init__(self, instance: FakeInstance, job: Job, sink: TextSink) -> None:
        self.instance = instance
        self.job = job
        self.sink = sink
        self.cancelled = asyncio.Event()
        self.task = asyncio.create_task(self._generate())

    async def _generate(self) -> Outcome:
        outcome = await self._words()
        self.instance.calls.outcomes[self.job.request_id] = outcome
        return outcome

    async def _words(self) -> Outcome:
        calls = self.instance.calls
        if self.instance.busy:
            calls.overlaps += 1
        self.instance.busy = True
        try:
            words = self.job.messages[-1].text.split()
            reply = [f"{w} " for w in words] or ["ok"]
            count = 0
            for word in reply[: self.job.sampling.max_tokens]:
                try:
                    await asyncio.wait_for(self.cancelled.wait(), self.instance.delay_s)
                except asyncio.TimeoutError:
                    pass
                if self.cancelled.is_set():
                    return Outcome("cancelled", prompt_tokens=len(words), output_tokens=count)
                if word.strip() == "FAIL":
                    return Outcome("error", error_code="runtime_error",
                                   error_message="injected")
                self.sink.on_text(word)
                count += 1
            return Outcome("length" if count < len(reply) else "stop",
                           prompt_tokens=len(words), output_tokens=count)
        finally:
            self.instance.busy = False
            calls.finished.append(self.job.request_id)

    def cancel(self) -> None:
        self.instance.calls.cancels.append(self.job.request_id)
        self.cancelled.set()

    async def wait(self) -> Outcome:
        return await asyncio.shield(self.task)


class FakeInstance(EngineInstance):
    def __init__(self, index: int, calls: Calls, delay_s: float) -> None:
        self.index = index
        self.calls = calls
        self.delay_s = delay_s
        self.busy = False
        self.state = InstanceHealth()
        self.listeners: list[Callable[[], None]] = []

    def health(self) -> InstanceHealth:
        return self.state

    def watch_health(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def set_status(self, status: InstanceStatus, reason: str = "") -> None:
        """What a restarting worker would report; tells the listeners."""
        self.state.status, self.state.reason = status, reason
        for listener in self.listeners:
            listener()

    def start(self, job: Job, sink: TextSink) -> Run:
        self.calls.jobs.append(job)
        return FakeRun(self, job, sink)

    async def close(self) -> None:
        pass


class FakeEngine(Engine):
    def __init__(self, settings: Settings, delay_s: float = 0.0, calls: Calls | None = None
                 ) -> None:
        self.calls = calls or Calls()
        self._instances = [FakeInstance(i, self.calls, delay_s)
                           for i in range(settings.instances)]

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id="fake", engine="fake", context_length=1024)

    @property
    def instances(self) -> list[EngineInstance]:
        return list(self._instances)

    async def load(self) -> None:
        self.calls.loads += 1

    async def close(self) -> None:
        self.calls.closes += 1
