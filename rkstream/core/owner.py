"""The one thread that owns a native model: every call on it runs here, in order.

Native contexts (an RKLLM handle, a llama.cpp context) keep per-thread state
and must not be used from several threads; this is the mlx-lm pattern of one
thread that owns the accelerator, fed through a queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class OwnerThread:
    """Runs submitted functions one at a time on a dedicated thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn``; its result or exception lands in the returned future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            # A call whose awaiter was cancelled before it began is skipped (as an
            # executor does); once begun it runs to the end and keeps its result.
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the thread and await its result."""
        return await asyncio.wrap_future(self.submit(fn))

    async def stop(self, last: Callable[[], Any] | None = None) -> None:
        """Run ``last`` (the native free), then end the thread and join it."""
        if not self._thread.is_alive():
            return
        if last is not None:
            await self.call(last)
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
