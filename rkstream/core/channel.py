"""Hand items from a native thread to the event loop, in order, without polling.

The producer appends to a deque and schedules one wake-up with
``loop.call_soon_threadsafe`` only when none is pending, so a burst of
tokens costs one loop wake-up instead of one per token.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopChannel(Generic[T]):
    """A one-way, ordered channel from any thread into one event loop.

    Args:
        loop: the loop that runs ``consumer``.
        consumer: called on the loop with every batch of items, in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 consumer: Callable[[list[T]], None]) -> None:
        self._loop = loop
        self._consumer = consumer
        self._items: collections.deque[T] = collections.deque()
        self._wake_pending = False

    def put(self, item: T) -> bool:
        """Queue ``item`` from any thread; False if the loop is already closed."""
        self._items.append(item)
        if self._wake_pending:
            return True
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed: shutdown raced a late callback
            return False
        return True

    def _drain(self) -> None:
        # Clear the flag before popping so an item appended meanwhile
        # schedules its own wake-up instead of being stranded.
        self._wake_pending = False
        batch: list[T] = []
        while self._items:
            batch.append(self._items.popleft())
        if batch:
            self._consumer(batch)
