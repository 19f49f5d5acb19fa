"""The scheduler: arrival order, queue limit, cancellation, several instances."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rkstream.config import Settings
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job
from rkstream.errors import QueueFullError, VisionError
from rkstream.scheduler import Scheduler

from fakes import FakeEngine
from helpers import MS, Sink


def job(rid: str, text: str = "a b c", max_tokens: int = 100) -> Job:
    return Job(request_id=rid, messages=(Message("user", (TextPart(text),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=max_tokens, temperature=0.8, top_p=0.9,
                                         top_k=1, repeat_penalty=1.1, frequency_penalty=0,
                                         presence_penalty=0))


def engine(instances: int = 1, delay_ms: float = 5) -> FakeEngine:
    from dataclasses import replace
    return FakeEngine(replace(Settings(), instances=instances), delay_s=delay_ms * MS)


async def test_runs_in_arrival_order_one_at_a_time() -> None:
    fake = engine()
    scheduler = Scheduler(fake.instances, max_queue=10)
    tickets = [scheduler.submit(job(f"r{i}"), Sink()) for i in range(4)]
    assert [t.queue_position for t in tickets] == [0, 0, 1, 2]
    outcomes = await asyncio.gather(*(t.outcome for t in tickets))
    assert [o.finish_reason for o in outcomes] == ["stop"] * 4
    assert fake.calls.finished == ["r0", "r1", "r2", "r3"]
    assert fake.calls.overlaps == 0


async def test_queue_full() -> None:
    scheduler = Scheduler(engine().instances, max_queue=1)
    scheduler.submit(job("run"), Sink())
    scheduler.submit(job("wait"), Sink())
    with pytest.raises(QueueFullError) as info:
        scheduler.submit(job("refused"), Sink())
    assert info.value.code == "queue_full"
    await scheduler.close()


async def test_cancel_queued_never_reaches_engine() -> None:
    fake = engine()
    scheduler = Scheduler(fake.instances, max_queue=5)
    first = scheduler.submit(job("first"), Sink())
    queued = scheduler.submit(job("queued"), Sink())
    scheduler.cancel(queued)
    assert (await queued.outcome).finish_reason == "cancelled"
    await first.outcome
    assert [j.request_id for j in fake.calls.jobs] == ["first"]


async def test_cancel_running_reaches_engine() -> None:
    fake = engine(delay_ms=50)
    scheduler = Scheduler(fake.instances, max_queue=5)
    ticket = scheduler.submit(job("r", "w " * 100), Sink())
    await asyncio.sleep(60 * MS)
    scheduler.cancel(ticket)
    assert (await ticket.outcome).finish_reason == "cancelled"
    assert fake.calls.cancels == ["r"]


async def test_two_instances_run_two_jobs_at_once() -> None:
    fake = engine(instances=2, delay_ms=20)
    scheduler = Scheduler(fake.instances, max_queue=5)
    tickets = [scheduler.submit(job(f"r{i}"), Sink()) for i in range(3)]
    assert [t.queue_position for t in tickets] == [0, 0, 0]
    await asyncio.gather(*(t.outcome for t in tickets))
    assert fake.calls.overlaps == 0  # each instance alone ran one job at a time
    assert set(fake.calls.finished) == {"r0", "r1", "r2"}


async def test_close_cancels_everything() -> None:
    fake = engine(delay_ms=50)
    scheduler = Scheduler(fake.instances, max_queue=5)
    running = scheduler.submit(job("a", "w " * 50), Sink())
    waiting = scheduler.submit(job("b"), Sink())
    await scheduler.close()
    assert (await running.outcome).finish_reason == "cancelled"
    assert (await waiting.outcome).finish_reason == "cancelled"
    late = scheduler.submit(job("c"), Sink())
    assert (await late.outcome).error_code == "shutting_down"


async def test_prepare_runs_when_an_instance_is_free() -> None:
    fake = engine(delay_ms=5)
    scheduler = Scheduler(fake.instances, max_queue=5)
    order: list[str] = []

    def prepare_for(rid: str, text: str) -> Any:
        async def prepare() -> Job:
            order.append(f"prepare {rid}")
            await asyncio.sleep(5 * MS)
            return job(rid, text)
        return prepare

    sinks = [Sink(), Sink()]
    first = scheduler.submit(job("a"), sinks[0], prepare_for("a", "one two"))
    second = scheduler.submit(job("b"), sinks[1], prepare_for("b", "three"))
    assert order == []  # nothing runs before the instance is taken
    outcomes = await asyncio.gather(first.outcome, second.outcome)
    assert [o.output_tokens for o in outcomes] == [2, 1]  # the prepared jobs ran
    assert [s.text for s in sinks] == ["one two ", "three "]
    assert order == ["prepare a", "prepare b"]
    assert first.vision_ms > 0


async def test_prepare_failure_fails_only_that_request() -> None:
    fake = engine()
    scheduler = Scheduler(fake.instances, max_queue=5)

    async def broken() -> Job:
        raise VisionError("invalid_image", "the image is truncated")

    bad = scheduler.submit(job("bad"), Sink(), broken)
    good = scheduler.submit(job("good"), Sink())
    failed = await bad.outcome
    assert (failed.finish_reason, failed.error_code) == ("error", "invalid_image")
    assert (await good.outcome).finish_reason == "stop"
    assert [j.request_id for j in fake.calls.jobs] == ["good"]


async def test_cancel_during_prepare() -> None:
    fake = engine()
    scheduler = Scheduler(fake.instances, max_queue=5)
    started = asyncio.Event()

    async def slow() -> Job:
        started.set()
        await asyncio.sleep(3600)
        return job("never")

    ticket = scheduler.submit(job("slow"), Sink(), slow)
    await started.wait()
    scheduler.cancel(ticket)
    assert (await ticket.outcome).finish_reason == "cancelled"
    after = scheduler.submit(job("after"), Sink())
    assert (await after.outcome).finish_reason == "stop"  # the instance was freed


async def test_an_instance_that_restarts_gets_no_job_until_it_is_back() -> None:
    fake = engine()
    instance = fake._instances[0]
    scheduler = Scheduler(fake.instances, max_queue=10)
    instance.set_status("restarting", "the worker process ended")
    tickets = [scheduler.submit(job(f"r{i}"), Sink()) for i in range(2)]
    await asyncio.sleep(20 * MS)
    assert fake.calls.jobs == [] and scheduler.queue_depth == 2  # queued, not refused
    instance.set_status("ok")
    outcomes = await asyncio.gather(*(t.outcome for t in tickets))
    assert [o.finish_reason for o in outcomes] == ["stop", "stop"]
    assert fake.calls.finished == ["r0", "r1"]


async def test_jobs_go_to_the_instances_that_serve() -> None:
    fake = engine(instances=2)
    scheduler = Scheduler(fake.instances, max_queue=10)
    fake._instances[0].set_status("restarting")
    tickets = [scheduler.submit(job(f"r{i}"), Sink()) for i in range(3)]
    assert [t.queue_position for t in tickets] == [0, 0, 1]  # one instance takes jobs
    await asyncio.gather(*(t.outcome for t in tickets))
    assert fake.calls.overlaps == 0  # all three ran on the one instance left, in turn


def watch(ticket: Any, seen: list[tuple[str, object]], name: str) -> None:
    """Record each change the ticket reports: ("b", 0) moved up, ("b", "started")."""
    def changed() -> None:
        seen.append((name, "started" if ticket.started_s is not None
                     else ticket.queue_position))
    ticket.on_change = changed


async def test_waiting_tickets_hear_each_move_once_then_their_start() -> None:
    scheduler = Scheduler(engine(delay_ms=5).instances, max_queue=10)
    tickets = [scheduler.submit(job(f"r{i}"), Sink()) for i in range(4)]
    seen: list[tuple[str, object]] = []
    for i, ticket in enumerate(tickets[1:], 1):
        watch(ticket, seen, f"r{i}")
    await asyncio.gather(*(t.outcome for t in tickets))
    assert [s for s in seen if s[0] == "r3"] == [("r3", 1), ("r3", 0), ("r3", "started")]
    assert [s for s in seen if s[0] == "r1"] == [("r1", "started")]  # it was next already
    assert seen.index(("r2", "started")) < seen.index(("r3", "started"))


async def test_cancelling_a_queued_ticket_moves_the_ones_behind_it() -> None:
    scheduler = Scheduler(engine(delay_ms=50).instances, max_queue=10)
    tickets = [scheduler.submit(job(f"r{i}", "w " * 50), Sink()) for i in range(4)]
    seen: list[tuple[str, object]] = []
    for i, ticket in enumerate(tickets[1:], 1):
        watch(ticket, seen, f"r{i}")
    scheduler.cancel(tickets[1])
    assert seen == [("r2", 0), ("r3", 1)]  # the cancelled one hears nothing
    assert [t.queue_position for t in tickets[2:]] == [0, 1]
    scheduler.cancel(tickets[3])  # the last one: nobody moves
    assert seen == [("r2", 0), ("r3", 1)]
    scheduler.cancel(tickets[0])  # the running one: the next starts
    await tickets[0].outcome
    assert seen[-1] == ("r2", "started")
    await scheduler.close()
    assert not any(name in ("r1", "r3") and what == "started" for name, what in seen)
