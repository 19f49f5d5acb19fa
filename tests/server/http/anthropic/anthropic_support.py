"""What the Anthropic API tests share: tools in Anthropic's shape and a reader
of typed SSE that checks the order Anthropic's events keep. Stand-in model
files, scripted replies and the Node check's runner are in tests/helpers.py.

The stand-in runtime plays back ``[[reply=...]]`` from the prompt; a later
directive (in a tool result, say) wins over an earlier one.
"""

from __future__ import annotations

import json
from typing import Any

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
WEATHER: dict[str, Any] = {
    "name": "get_weather", "description": "The weather in a city, now.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]}}
TIME: dict[str, Any] = {"name": "get_time", "input_schema": {"type": "object",
                                                            "properties": {}}}
QWEN2 = "qwen2.5-test.rkllm"  # Hermes <tool_call> markup
QWEN3 = "qwen3-test.rkllm"  # the same, and <think>


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 256,
            "messages": [{"role": "user", "content": content}], **extra}


def sse(body: str) -> list[dict[str, Any]]:
    """The events of a typed SSE body; each ``event:`` name matches its data's type."""
    events = []
    for block in body.split("\n\n"):
        lines = block.split("\n")
        names = [line[7:] for line in lines if line.startswith("event: ")]
        data = [line[6:] for line in lines if line.startswith("data: ")]
        if data:
            payload = json.loads("\n".join(data))
            assert names == [payload["type"]], block
            events.append(payload)
    return events


def _apply(block: dict[str, Any], delta: dict[str, Any]) -> None:
    kind = delta["type"]
    if kind == "text_delta":
        assert block["type"] == "text"
        block["text"] += delta["text"]
    elif kind == "thinking_delta":
        assert block["type"] == "thinking" and not block["signature"]
        block["thinking"] += delta["thinking"]
    elif kind == "signature_delta":
        assert block["type"] == "thinking"
        block["signature"] = delta["signature"]
    else:
        assert kind == "input_json_delta" and block["type"] == "tool_use"
        block.setdefault("pieces", []).append(delta["partial_json"])


def rebuild(events: list[dict[str, Any]]
            ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Check the order of a message's events; its message_start message, its content
    blocks rebuilt from their deltas (a tool's ``pieces`` kept), its message_delta."""
    events = [e for e in events if e["type"] != "ping"]
    assert events[0]["type"] == "message_start"
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    blocks: list[dict[str, Any]] = []
    open_index: int | None = None
    for e in events[1:-2]:
        if e["type"] == "content_block_start":
            assert open_index is None and e["index"] == len(blocks)
            blocks.append(dict(e["content_block"]))
            open_index = e["index"]
        elif e["type"] == "content_block_delta":
            assert open_index is not None and e["index"] == open_index
            _apply(blocks[open_index], e["delta"])
        else:
            assert e["type"] == "content_block_stop"
            assert open_index is not None and e["index"] == open_index
            done = blocks[open_index]
            if done["type"] == "thinking":
                assert done["signature"], "a thinking block closes with its signature"
            if done["type"] == "tool_use":
                done["input"] = "".join(done.get("pieces", []))
            open_index = None
    assert open_index is None
    return events[0]["message"], blocks, events[-2]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """The event types, runs of one delta type shown once (``delta:text_delta``)."""
    out: list[str] = []
    for e in events:
        kind = f"delta:{e['delta']['type']}" if e["type"] == "content_block_delta" \
            else e["type"]
        if not out or out[-1] != kind or not kind.startswith("delta:"):
            out.append(kind)
    return out
