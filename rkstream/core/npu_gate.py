"""Who may use the NPU now: RKLLM models take turns.

The RK3588's NPU serves one IOMMU domain at a time, and each resident RKLLM
model has its own domain, so two models generating at once only alternate
job by job while both hold their memory. The gate lets at most
``models_at_once`` distinct models generate; a model that holds it may start
more runs on its own instances. When it frees up, the model whose request
has waited longest goes next, whichever model that is.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass
class _Waiter:
    """A scheduler with queued work (``oldest`` gives its oldest request's submit
    time, None when it has none) or one direct user (an embedding)."""

    model: str
    oldest: Callable[[], float | None]
    wake: Callable[[], None]


class NpuGate:
    """Counts the runs of each model on the NPU; at most ``models_at_once`` models."""

    def __init__(self, models_at_once: int = 1) -> None:
        self.models_at_once = models_at_once
        self._runs: collections.Counter[str] = collections.Counter()
        self._schedulers: list[_Waiter] = []
        self._direct: list[tuple[float, str, asyncio.Future[None]]] = []

    @property
    def holders(self) -> list[str]:
        """The models generating now."""
        return [model for model, runs in self._runs.items() if runs]

    def may_start(self, model: str) -> bool:
        return self._runs[model] > 0 or len(self.holders) < self.models_at_once

    def enter(self, model: str) -> None:
        """A run of ``model`` starts (after :meth:`may_start` said yes)."""
        self._runs[model] += 1

    def leave(self, model: str) -> None:
        """A run of ``model`` ended: the longest waiter may start."""
        self._runs[model] -= 1
        if self._runs[model] <= 0:
            del self._runs[model]
        self._wake()

    def watch(self, model: str, oldest: Callable[[], float | None],
              wake: Callable[[], None]) -> Callable[[], None]:
        """Register a scheduler; returns the call that unregisters it."""
        waiter = _Waiter(model, oldest, wake)
        self._schedulers.append(waiter)
        return lambda: self._schedulers.remove(waiter)

    @asynccontextmanager
    async def hold(self, model: str) -> AsyncIterator[None]:
        """Use the NPU outside a scheduler (an embedding), in the same turn order."""
        if not self.may_start(model) or self._direct:
            future = asyncio.get_running_loop().create_future()
            entry = (time.perf_counter(), model, future)
            self._direct.append(entry)
            try:
                await future  # resolved by _wake, which entered for us
            except BaseException:
                if entry in self._direct:
                    self._direct.remove(entry)
                elif not future.cancelled():
                    self.leave(model)
                raise
        else:
            self.enter(model)
        try:
            yield
        finally:
            self.leave(model)

    def _wake(self) -> None:
        waiting: list[tuple[float, int, Callable[[], None]]] = []
        for n, waiter in enumerate(self._schedulers):
            oldest = waiter.oldest()
            if oldest is not None:
                waiting.append((oldest, n, waiter.wake))
        for n, (since, model, future) in enumerate(self._direct):
            waiting.append((since, len(self._schedulers) + n,
                            functools.partial(self._admit, model, future)))
        for _, _, wake in sorted(waiting, key=lambda w: (w[0], w[1])):
            wake()

    def _admit(self, model: str, future: asyncio.Future[None]) -> None:
        if future.done() or not self.may_start(model):
            return
        self._direct[:] = [entry for entry in self._direct if entry[2] is not future]
        self.enter(model)
        future.set_result(None)
