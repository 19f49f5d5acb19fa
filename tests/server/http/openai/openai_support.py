"""What the OpenAI tool and reasoning tests share: tools, SSE reading, and the
rules of a Responses event sequence (/v1/responses). Stand-in model files
(whose name picks the chat family) and scripted replies are in tests/helpers.py.

The stand-in runtime plays back ``[[reply=...]]`` from the prompt (lib/README.md,
"Prompt directives"). Directives apply in order, so when a later message of the
conversation carries another one, that one wins, whether the engine sends the
whole conversation or only the tail its KV cache lacks.
"""

from __future__ import annotations

import json
from typing import Any

from helpers import run_node_check

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def sse_events(body: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, ``[DONE]`` kept as a string."""
    events: list[Any] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line.startswith("data: ")]
        if lines:
            data = "\n".join(line[6:] for line in lines)
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def deltas(events: list[Any]) -> list[dict[str, Any]]:
    """The deltas of a chat stream, in order; checks the frame around them."""
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [e for e in events[:-1] if e["choices"]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    for chunk in chunks[:-1]:
        assert chunk["choices"][0]["finish_reason"] is None
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    return [c["choices"][0]["delta"] for c in chunks]


def finish_reason(events: list[Any]) -> str:
    chunks = [e for e in events[:-1] if e["choices"]]
    reason: str = chunks[-1]["choices"][0]["finish_reason"]
    return reason


def content_of(ds: list[dict[str, Any]]) -> str:
    return "".join(d.get("content") or "" for d in ds)


def reasoning_of(ds: list[dict[str, Any]]) -> str:
    return "".join(d.get("reasoning_content") or "" for d in ds)


async def run_tools_check(url: str, model: str, prompt: str, mode: str, *extra: str
                          ) -> tuple[int, dict[str, Any]]:
    """The AI SDK's tool loop (ai_sdk_tools_check.mjs) against ``url``, asking for
    ``model`` (the name the server serves it under)."""
    return await run_node_check("ai_sdk_tools_check.mjs", url, model, prompt, mode, *extra)


# -- /v1/responses ---------------------------------------------------------------------

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# The events of one output item, by its type; "*" marks the delta, sent 0 or more times.
ITEM_EVENTS = {
    "message": ["response.output_item.added", "response.content_part.added",
                "response.output_text.delta*", "response.output_text.done",
                "response.content_part.done", "response.output_item.done"],
    "reasoning": ["response.output_item.added", "response.content_part.added",
                  "response.reasoning_text.delta*", "response.reasoning_text.done",
                  "response.content_part.done", "response.output_item.done"],
    "function_call": ["response.output_item.added", "response.function_call_arguments.delta*",
                      "response.function_call_arguments.done", "response.output_item.done"],
}


def flat(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat completions tool in the Responses' flat shape."""
    return {"type": "function", **tool["function"]}


WEATHER_TOOL = flat(WEATHER)
TIME_TOOL = flat(TIME)


def response_events(body: str) -> list[dict[str, Any]]:
    """The events of a Responses stream; each ``event:`` line names its data's type,
    and ``: ping`` comments are skipped."""
    events: list[dict[str, Any]] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        events.append(data)
    assert "[DONE]" not in body  # Responses streams end with their last event
    return events


def item_text(item: dict[str, Any]) -> str:
    """A finished item's text: the message's, the reasoning's or the call's arguments."""
    if item["type"] == "function_call":
        text: str = item["arguments"]
        return text
    return "".join(part["text"] for part in item["content"])


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Assert every rule of a Responses event sequence; return the last response object."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    first = events[0]["response"]
    for e in events[:2]:
        assert e["response"]["id"] == first["id"] and e["response"]["object"] == "response"
        assert e["response"]["status"] == "in_progress" and e["response"]["output"] == []
        assert e["response"]["usage"] is None
    assert events[-1]["type"] in TERMINAL
    assert not any(e["type"] in TERMINAL for e in events[:-1])
    done: list[dict[str, Any]] = []
    kinds: list[str] = []  # the events of the item being sent
    pieces: list[str] = []
    added: dict[str, Any] = {}
    for e in events[2:-1]:
        if e["type"] == "response.output_item.added":
            assert not kinds, "an item opened before the last one was done"
            added = e["item"]
            assert added["status"] == "in_progress" and added["id"]
            kinds, pieces = [], []
        assert kinds or e["type"] == "response.output_item.added", e["type"]
        assert e["output_index"] == len(done)
        if e["type"] != "response.output_item.added" and e["type"] != "response.output_item.done":
            assert e["item_id"] == added["id"]
        if e["type"].endswith(".delta"):
            pieces.append(e["delta"])
            if kinds and kinds[-1] == e["type"] + "*":
                continue
            kinds.append(e["type"] + "*")
            continue
        kinds.append(e["type"])
        if e["type"].endswith(("text.done",)):
            assert e["text"] == "".join(pieces)
        elif e["type"] == "response.function_call_arguments.done":
            assert e["arguments"] == "".join(pieces)
        elif e["type"].startswith("response.content_part."):
            assert e["content_index"] == 0
            expected = "" if e["type"].endswith("added") else "".join(pieces)
            assert e["part"]["text"] == expected
        elif e["type"] == "response.output_item.done":
            item = e["item"]
            assert item["id"] == added["id"] and item["type"] == added["type"]
            if item["type"] == "function_call":  # known from the start
                assert (added["call_id"], added["name"]) == (item["call_id"], item["name"])
                assert added["call_id"] and added["arguments"] == ""
            else:
                assert added["content"] == []
            assert item["status"] in ("completed", "incomplete")
            assert item_text(item) == "".join(pieces)
            wanted = [k for k in ITEM_EVENTS[item["type"]] if not k.endswith("*")
                      or k in kinds]
            assert kinds == wanted, (kinds, wanted)
            done.append(item)
            kinds = []
    assert not kinds, "the stream ended inside an item"
    final: dict[str, Any] = events[-1]["response"]
    assert final["id"] == first["id"] and final["output"] == done
    return final


def output_of(response: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in response["output"] if item["type"] == kind]


def response_text(response: dict[str, Any]) -> str:
    """The answer's text, as the SDK's ``output_text`` joins it."""
    return "".join(item_text(m) for m in output_of(response, "message"))
