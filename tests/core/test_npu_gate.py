"""RKLLM models take turns on the NPU: the gate between their schedulers."""

from __future__ import annotations

import asyncio

from rkstream.core.messages import Message, TextPart
from rkstream.core.npu_gate import NpuGate
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job, Outcome
from rkstream.scheduler import Scheduler

from fakes import Calls, FakeInstance
from helpers import MS


def job(request_id: str, words: int = 3) -> Job:
    text = " ".join(["w"] * words)
    return Job(request_id, (Message("user", (TextPart(text),)),), None,
               SamplingSettings(max_tokens=100, temperature=0.8, top_p=0.9, top_k=1,
                                repeat_penalty=1.1, frequency_penalty=0.0,
                                presence_penalty=0.0))


class Sink:
    def on_text(self, text: str) -> None:
        pass


def scheduler(gate: NpuGate, name: str, calls: Calls, instances: int = 1) -> Scheduler:
    return Scheduler([FakeInstance(i, calls, 5 * MS) for i in range(instances)], 8,
                     gate=(gate, name))


async def test_a_second_model_waits_for_the_first() -> None:
    gate, a_calls, b_calls = NpuGate(1), Calls(), Calls()
    a, b = scheduler(gate, "a", a_calls), scheduler(gate, "b", b_calls)
    first = a.submit(job("a1"), Sink())
    second = b.submit(job("b1"), Sink())
    assert gate.holders == ["a"] and b.queue_depth == 1
    assert (await first.outcome).finish_reason == "stop"
    assert (await second.outcome).finish_reason == "stop"
    assert second.started_s is not None and first.started_s is not None
    assert a_calls.finished == ["a1"] and b_calls.finished == ["b1"]
    assert gate.holders == []


async def test_one_models_own_instances_run_side_by_side() -> None:
    gate, calls = NpuGate(1), Calls()
    a = scheduler(gate, "a", calls, instances=2)
    tickets = [a.submit(job(f"a{n}"), Sink()) for n in range(2)]
    assert a.running == 2
    await asyncio.gather(*(t.outcome for t in tickets))


async def test_the_longest_waiting_model_goes_next() -> None:
    gate = NpuGate(1)
    a, b, c = (scheduler(gate, name, Calls()) for name in "abc")
    running = a.submit(job("a1"), Sink())
    waiting_c = c.submit(job("c1"), Sink())
    await asyncio.sleep(1 * MS)
    waiting_b = b.submit(job("b1"), Sink())
    a_again = a.submit(job("a2"), Sink())
    await running.outcome
    assert gate.holders == ["c"]  # submitted before b and before a's second
    await waiting_c.outcome
    assert gate.holders == ["b"]
    await asyncio.gather(waiting_b.outcome, a_again.outcome)


async def test_more_models_at_once_when_allowed() -> None:
    gate = NpuGate(2)
    a, b = scheduler(gate, "a", Calls()), scheduler(gate, "b", Calls())
    first, second = a.submit(job("a1"), Sink()), b.submit(job("b1"), Sink())
    assert sorted(gate.holders) == ["a", "b"]
    await asyncio.gather(first.outcome, second.outcome)


async def test_an_embedding_takes_its_turn() -> None:
    gate = NpuGate(1)
    a = scheduler(gate, "a", Calls())
    ticket = a.submit(job("a1", words=5), Sink())
    seen: list[tuple[bool, list[str]]] = []

    async def embed() -> None:
        async with gate.hold("b"):
            seen.append((ticket.outcome.done(), gate.holders))

    task = asyncio.ensure_future(embed())
    await asyncio.sleep(1 * MS)
    assert seen == []  # a is generating
    outcome: Outcome = await ticket.outcome
    await task
    assert outcome.finish_reason == "stop" and seen == [(True, ["b"])]
    assert gate.holders == []


async def test_the_same_model_embeds_while_it_generates() -> None:
    gate = NpuGate(1)
    a = scheduler(gate, "a", Calls())
    ticket = a.submit(job("a1", words=5), Sink())
    async with gate.hold("a"):
        assert ticket.outcome.done() is False
    await ticket.outcome


async def test_a_cancelled_embedding_leaves_the_gate_clean() -> None:
    gate = NpuGate(1)
    a = scheduler(gate, "a", Calls())
    ticket = a.submit(job("a1", words=5), Sink())

    async def embed() -> None:
        async with gate.hold("b"):
            pass

    task = asyncio.ensure_future(embed())
    await asyncio.sleep(1 * MS)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ticket.outcome
    assert gate.holders == []
    second = a.submit(job("a2"), Sink())
    await second.outcome


async def test_closing_a_scheduler_leaves_the_gate() -> None:
    gate = NpuGate(1)
    a, b = scheduler(gate, "a", Calls()), scheduler(gate, "b", Calls())
    running = a.submit(job("a1", words=50), Sink())
    queued = b.submit(job("b1"), Sink())
    await a.close()
    assert (await running.outcome).finish_reason == "cancelled"
    assert (await queued.outcome).finish_reason == "stop"
    await b.close()
