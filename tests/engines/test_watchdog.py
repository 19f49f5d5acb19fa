"""The watchdog's timing: prefill allowance, token gaps, the grace after a stop."""

from __future__ import annotations

import asyncio

from rkstream.engines.watchdog import Watchdog, WatchdogLimits

from helpers import MS


class Clock:
    """What a run shows the watchdog: the loop time of its latest text."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.stalled: list[str] = []
        self.stuck: list[str] = []

    def text(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def watch(self, limits: WatchdogLimits, prompt_tokens: int = 0) -> Watchdog:
        return Watchdog(asyncio.get_running_loop(), limits, prompt_tokens, lambda: self.last,
                        self.stalled.append, self.stuck.append)


def limits(prefill: float = 0.1, per_1k: float = 0.0, token: float = 0.05,
           grace: float = 0.05) -> WatchdogLimits:
    return WatchdogLimits(prefill * 1000 * MS, per_1k * 1000 * MS, token * 1000 * MS,
                          grace * 1000 * MS)


def test_the_prefill_allowance_grows_with_the_prompt() -> None:
    assert WatchdogLimits(30, 30, 30, 5).prefill_allowance(4000) == 150


async def test_a_run_with_steady_text_is_left_alone() -> None:
    clock = Clock()
    dog = clock.watch(limits())
    for _ in range(10):
        await asyncio.sleep(20 * MS)
        clock.text()
    dog.done()
    await asyncio.sleep(100 * MS)
    assert clock.stalled == [] and clock.stuck == []


async def test_no_first_token_within_the_allowance_stalls() -> None:
    clock = Clock()
    dog = clock.watch(limits(prefill=0.1, per_1k=0.1, token=1.0, grace=1.0),
                      prompt_tokens=1000)
    await asyncio.sleep(150 * MS)
    assert clock.stalled == []  # 0.1 s + 0.1 s for the prompt's 1000 tokens
    await asyncio.sleep(150 * MS)
    assert len(clock.stalled) == 1 and "no token within" in clock.stalled[0]
    assert dog.phase == "stopping"
    dog.done()


async def test_a_gap_between_tokens_stalls_then_the_grace_runs_out() -> None:
    clock = Clock()
    dog = clock.watch(limits(prefill=10.0, token=0.05, grace=0.05))
    clock.text()  # the first token: from now on the token limit applies, not the prefill
    await asyncio.sleep(80 * MS)
    assert len(clock.stalled) == 1 and "no token for" in clock.stalled[0]
    assert clock.stuck == []
    await asyncio.sleep(80 * MS)
    assert len(clock.stuck) == 1 and "did not stop within" in clock.stuck[0]
    assert dog.phase == "over"


async def test_a_cancel_gets_the_grace_and_ending_in_time_is_fine() -> None:
    clock = Clock()
    dog = clock.watch(limits(token=0.0, grace=0.05))  # token 0: no stall watch, grace stays
    dog.stopping("the run was told to stop")
    await asyncio.sleep(20 * MS)
    dog.done()
    await asyncio.sleep(80 * MS)
    assert clock.stalled == [] and clock.stuck == []
    ignored = clock.watch(limits(token=0.0, grace=0.05))
    ignored.stopping("the run was told to stop")
    await asyncio.sleep(100 * MS)
    assert clock.stuck == ["the run was told to stop, and it did not stop within "
                           f"{0.05 * 1000 * MS:g} s of being told to (rkllm.watchdog_grace_s)"]
