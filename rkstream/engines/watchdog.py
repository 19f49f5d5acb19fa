"""Notice a run that makes no progress, and a runtime that ignores being stopped.

A run gets a prefill allowance that grows with its prompt until its first
text, then a limit on the gap between two pieces of text. Past either, the
watchdog says the run *stalled* (the instance asks the runtime to abort);
from then on, and from a cancel, the runtime has a grace period to return,
past which the watchdog says it is *stuck* (the instance kills its worker).

One timer at a time, re-armed only when it fires (at least every
``token_s``): a piece of text costs the run one clock read
(``BridgedRun.last_text_s``), not a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Phase = Literal["running", "stopping", "over"]


@dataclass(frozen=True)
class WatchdogLimits:
    """Seconds; ``token_s`` 0 turns the watchdog off (the cancel grace stays)."""

    prefill_s: float
    prefill_per_1k_tokens_s: float
    token_s: float
    grace_s: float

    def prefill_allowance(self, prompt_tokens: int) -> float:
        return self.prefill_s + self.prefill_per_1k_tokens_s * prompt_tokens / 1000.0


class Watchdog:
    """Times one run on the event loop.

    Args:
        limits: the allowances.
        prompt_tokens: an estimate of what the run prefills.
        last_text: the loop time of the run's latest text, or None before any.
        stalled: called once, with a sentence for the client, when the run made
            no progress in time; the owner asks the runtime to abort.
        stuck: called once, with a sentence, when the runtime did not return
            within the grace period after an abort.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: WatchdogLimits,
                 prompt_tokens: int, last_text: Callable[[], float | None],
                 stalled: Callable[[str], None], stuck: Callable[[str], None]) -> None:
        self._loop = loop
        self._limits = limits
        self._last_text = last_text
        self._stalled = stalled
        self._stuck = stuck
        self._started = loop.time()
        self._prefill_due = self._started + limits.prefill_allowance(prompt_tokens)
        self._phase: Phase = "running"
        self._why_stopping = ""
        self._timer: asyncio.TimerHandle | None = None
        if limits.token_s > 0:
            self._arm(min(self._prefill_due, self._started + limits.token_s))

    @property
    def phase(self) -> Phase:
        return self._phase

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)

    def _due(self) -> float:
        last = self._last_text()
        return self._prefill_due if last is None else last + self._limits.token_s

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._phase == "running":
            due = self._due()
            if now < due:
                # Look again by then, or sooner: the first text moves the due time closer.
                self._arm(min(due, now + self._limits.token_s))
                return
            if self._last_text() is None:
                allowance = self._prefill_due - self._started
                why = (f"the runtime produced no token within {allowance:.3g} s of starting "
                       "the prompt (rkllm.watchdog_prefill_s and "
                       "watchdog_prefill_per_1k_tokens_s)")
            else:
                why = (f"the runtime produced no token for {self._limits.token_s:g} s "
                       "(rkllm.watchdog_token_s)")
            self.stopping(why)
            self._stalled(why)
        elif self._phase == "stopping":
            self._phase = "over"
            self._stuck(f"{self._why_stopping}, and it did not stop within "
                        f"{self._limits.grace_s:g} s of being told to (rkllm.watchdog_grace_s)")

    def stopping(self, why: str) -> None:
        """The run was told to stop (a cancel, a stop sequence, the watchdog itself):
        from now on it has the grace period to return."""
        if self._phase != "running":
            return
        self._phase = "stopping"
        self._why_stopping = why
        self._arm(self._loop.time() + self._limits.grace_s)

    def done(self) -> None:
        """The run has ended: no more calls."""
        self._phase = "over"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
