"""What the OpenAI tool and reasoning tests share: a stand-in model file whose
name picks the chat family, the scripted replies, and SSE reading.

The stand-in runtime plays back ``[[reply=...]]`` from the prompt (lib/README.md,
"Prompt directives"). Directives apply in order, so when a later message of the
conversation carries another one, that one wins, whether the engine sends the
whole conversation or only the tail its KV cache lacks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rkstream.config import RKLLMSettings, Settings

from conftest import REPO

WEATHER: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME: dict[str, Any] = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def model_file(directory: Path, name: str, **keys: Any) -> Path:
    """A stand-in model file called ``name`` (which picks the chat family:
    ``qwen2.5-*`` is qwen2, ``qwen3-*`` is qwen3); ``keys`` are its settings."""
    path = directory / name
    lines = ["#rkstream-standin"] + [f"{k} = {v}" for k, v in keys.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def standin_settings(library: Path, model: Path) -> Settings:
    return replace(Settings(), engine="rkllm",
                   rkllm=replace(RKLLMSettings(), library=str(library), model=str(model)))


def reply(text: str) -> str:
    """The directive that makes the stand-in answer ``text`` (its escapes applied)."""
    assert "]]" not in text
    return "[[reply=" + text.replace("\\", "\\\\").replace("\n", "\\n") + "]]"


def call(name: str, arguments: str) -> str:
    """A Hermes tool call as Qwen writes it; ``arguments`` is JSON text (or not)."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


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


NODE_DIR = REPO / "tests" / "node"


async def run_node_check(script: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run one of tests/node's AI SDK checks; its exit code and JSON summary line."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the AI SDK check needs Node 18.17 or later "
                    "(bash tests/setup_and_run installs it)")
    if not (NODE_DIR / "node_modules" / "@ai-sdk" / "openai-compatible").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm install --prefix tests/node`")
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    lines = out.decode().strip().splitlines()
    assert lines, f"no summary from {script}; stderr: {err.decode()}"
    assert process.returncode is not None
    return process.returncode, json.loads(lines[-1])


async def run_tools_check(url: str, prompt: str, mode: str, *extra: str
                          ) -> tuple[int, dict[str, Any]]:
    """The AI SDK's tool loop (ai_sdk_tools_check.mjs) against ``url``."""
    return await run_node_check("ai_sdk_tools_check.mjs", url, prompt, mode, *extra)
