"""Run a coroutine here and now, up to its first suspension.

A write to a socket whose buffer has room (aiohttp's ``send_bytes``,
``StreamResponse.write``) completes without ever suspending, yet awaiting it
needs a task, and a task costs a loop iteration: the hop between a token's
arrival and its write. :func:`begin` runs such a coroutine at once; only one
that does suspend (the client is not reading) needs awaiting afterwards.
Python 3.12's eager tasks do the same; this also runs on 3.10 and 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any


def begin(coro: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Run ``coro`` until it suspends or ends: None when it ended (the usual
    case for a write), else an awaitable that finishes it.

    Raises:
        Exception: what ``coro`` raised before suspending.
    """
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    return _finish(coro, waited)


async def _finish(coro: Coroutine[Any, Any, None], waited: Any) -> None:
    """Drive a coroutine that suspended on ``waited`` to its end, as a task would."""
    try:
        while True:
            if isinstance(waited, asyncio.Future):
                await asyncio.wait([waited])  # its result is read inside coro
            else:
                await asyncio.sleep(0)  # a bare yield
            try:
                waited = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()  # cancelled (a timeout): stop it where it waits
