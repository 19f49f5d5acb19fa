"""Clients for the scale-out tests: one turn over /ws or OpenAI SSE through a
balancer, reporting which server answered, the text, and what came from the KV cache."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from helpers import MS, WSClient

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


async def ws_turn(session: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]],
                  key: str | None = None, started: list[Turn] | None = None) -> Turn:
    """One request on a new socket (``?conversation=key``), closed after its response.done."""
    turn = Turn("ws")
    if started is not None:
        started.append(turn)
    url = base.replace("http", "ws", 1) + "/ws" + (f"?conversation={key}" if key else "")
    try:
        async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
            conn = WSClient(ws)
            created = await conn.recv_type("session.created", 10000 * MS)
            turn.server = created["server"]["id"]
            assert created["conversation"] == key
            await conn.send({"type": "response.create", "request_id": "r", "input": messages})
            while True:
                event = await conn.recv(30000 * MS)
                if event["type"] == "response.output_text.delta":
                    turn.text += event["delta"]
                    turn.times_s.append(time.monotonic())
                elif event["type"] == "response.done":
                    turn.ok = event["status"] == "completed"
                    turn.cached = event["timings"].get("cache_n") or 0
                    turn.error = "" if turn.ok else json.dumps(event.get("error"))
                    return turn
    except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
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
