"""Clients for the scale-out tests: one turn over /ws or OpenAI SSE through a
balancer, reporting which server answered, the text, and what came from the KV cache."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rkstream.client import AsyncClient, RkstreamClientError, TextDelta

from helpers import MS

KEY = "X-Rkstream-Conversation"


@dataclass
class Turn:
    """One request's end as the client saw it."""

    api: str
    server: str = ""
    text: str = ""
    ok: bool = False
    cached: int = 0  # prompt tokens the server found in its KV cache
    error: str = ""
    times_s: list[float] = field(default_factory=list)  # when each piece arrived


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def ws_turn(_session: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]],
                  key: str | None = None, started: list[Turn] | None = None) -> Turn:
    """One request on a new socket (rkstream.client with ``conversation=key``, sent as
    ``?conversation=``), closed after its response.done. The client has its own HTTP
    session; ``_session`` is taken for the same call as :func:`sse_turn`."""
    turn = Turn("ws")
    if started is not None:
        started.append(turn)
    client = AsyncClient(base, conversation=key, reconnect=False, timeout_s=10000 * MS)

    async def run() -> None:
        session = await client.connect()
        turn.server = client.server_id or ""
        assert session.conversation == key
        stream = client.stream(messages)
        async for event in stream:
            if isinstance(event, TextDelta):
                turn.text += event.text
                turn.times_s.append(time.monotonic())
        assert stream.done is not None and stream.done.server_id == turn.server
        turn.ok = stream.done.status == "completed"
        turn.cached = int(stream.done.timings.cache_n or 0)
        turn.error = "" if turn.ok else f"status {stream.done.status}"

    try:
        await asyncio.wait_for(run(), 40000 * MS)
    except (RkstreamClientError, asyncio.TimeoutError) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return turn


async def sse_turn(session: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]],
                   key: str | None = None, started: list[Turn] | None = None) -> Turn:
    """One streamed OpenAI chat completion, with usage."""
    turn = Turn("sse")
    if started is not None:
        started.append(turn)
    body = {"messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with session.post(base + "/v1/chat/completions", json=body,
                                headers={KEY: key} if key else None) as response:
            turn.server = response.headers.get("X-Rkstream-Server", "")
            if response.status != 200:
                turn.error = f"HTTP {response.status}: {await response.text()}"
                return turn
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    turn.ok = not turn.error
                    return turn
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    turn.error = json.dumps(chunk["error"])
                for choice in chunk.get("choices") or []:
                    if choice["delta"].get("content"):
                        turn.text += choice["delta"]["content"]
                        turn.times_s.append(time.monotonic())
                if chunk.get("usage"):
                    details = chunk["usage"].get("prompt_tokens_details") or {}
                    turn.cached = details.get("cached_tokens", 0)
            turn.error = turn.error or "the stream ended without data: [DONE]"
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
    return turn


def short(i: int) -> list[dict[str, Any]]:
    """A quick request: a two-token answer at 100 tokens/s (the stand-in's directives)."""
    return user(f"hi {i} [[reply=pong {i}]] [[token_delay_us=10000]]")


async def conversation(session: aiohttp.ClientSession, base: str, key: str | None,
                       turns: int, over_ws: bool) -> list[Turn]:
    """A conversation of ``turns`` turns, each sending the whole history so far."""
    history: list[dict[str, Any]] = []
    out = []
    for n in range(turns):
        history += user(f"turn {n} of {key} [[reply=answer {n} for {key}]]")
        turn = await (ws_turn if over_ws else sse_turn)(session, base, history, key)
        out.append(turn)
        if not turn.ok:
            break
        history.append({"role": "assistant", "content": turn.text})
    return out
