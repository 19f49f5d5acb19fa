"""The Ollama model endpoints: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``.

There is one model, the loaded one. What Ollama reads from its own model
store (family, parameter size, quantization) is guessed here from the file
name; anything not known is an empty string. The digest identifies the file
by name, size and modification time (hashing a multi-gigabyte model on every
request would be too slow); it is not a content hash.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from rkstream import __version__
from rkstream.errors import RequestError
from rkstream.server.http.runner import read_body
from rkstream.server.state import STATE, AppState

# A compatibility value: new enough for clients that check the server's version.
OLLAMA_VERSION = "0.6.0"
# The model never unloads; Ollama shows such a model with a far-off expiry.
NEVER_EXPIRES = "9999-12-31T23:59:59Z"

_PARAMETER_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z0-9])")
_RKLLM_QUANT = re.compile(r"(?i)(?<![A-Za-z0-9])(w\d+a\d+(?:_g\d+)?)(?![A-Za-z0-9])")
_GGUF_QUANT = re.compile(r"(?i)(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])")
_FAMILY = re.compile(r"^([A-Za-z]+\d*)")
_FORMATS = {"rkllm": "rkllm", "llamacpp": "gguf"}


def add_model_routes(app: web.Application) -> None:
    """Serve the model endpoints of the Ollama API on ``app``."""
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_get("/api/version", version)


def rfc3339(ns: int | None = None) -> str:
    """UTC time with nanoseconds, as Go (and so Ollama) writes it."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def model_name(state: AppState, requested: str | None) -> str:
    """The name to echo: the client's own, else the loaded model's id."""
    if requested:
        return requested
    return state.engine.info.id if state.engine is not None else ""


@dataclass(frozen=True)
class Described:
    """What the model endpoints say about the loaded model."""

    name: str
    size: int
    digest: str
    modified_at: str
    details: dict[str, Any]
    family: str


def model_file(state: AppState) -> Path | None:
    """The loaded model's file, when it can be named."""
    assert state.engine is not None
    engine = state.engine.info.engine
    if engine == "rkllm" and state.settings.rkllm.model:
        return Path(state.settings.rkllm.model)
    if engine == "llamacpp":
        if state.settings.llamacpp.model:
            return Path(state.settings.llamacpp.model)
        from rkstream.engines.llamacpp.model import bundled_model

        return bundled_model()
    return None


def _first(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""


def describe(state: AppState) -> Described:
    """Name, size, digest, date and details of the loaded model."""
    assert state.engine is not None
    info = state.engine.info
    path = model_file(state)
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    size = stat.st_size if stat is not None else 0
    mtime_ns = stat.st_mtime_ns if stat is not None else time.time_ns()
    digest = hashlib.sha256(f"{info.id}:{size}:{mtime_ns}".encode()).hexdigest()
    found = _PARAMETER_SIZE.search(info.id)
    parameter_size = f"{found.group(1)}{found.group(2).upper()}" if found else ""
    quant = _first(_RKLLM_QUANT if info.engine == "rkllm" else _GGUF_QUANT, info.id)
    family = _first(_FAMILY, info.id).lower()
    details = {"parent_model": "", "format": _FORMATS.get(info.engine, info.engine),
               "family": family, "families": [family] if family else None,
               "parameter_size": parameter_size,
               "quantization_level": quant if info.engine == "rkllm" else quant.upper()}
    return Described(info.id, size, digest, rfc3339(mtime_ns), details, family)


def _unavailable() -> web.Response:
    return web.json_response({"error": "the model is not loaded (starting or stopping)"},
                             status=503, headers={"Retry-After": "1"})


async def tags(request: web.Request) -> web.Response:
    """``GET /api/tags``: the loaded model, in Ollama's list shape."""
    state = request.app[STATE]
    if state.engine is None:
        return _unavailable()
    d = describe(state)
    return web.json_response({"models": [{
        "name": d.name, "model": d.name, "modified_at": d.modified_at, "size": d.size,
        "digest": d.digest, "details": d.details}]})


async def ps(request: web.Request) -> web.Response:
    """``GET /api/ps``: the loaded model, which never expires."""
    state = request.app[STATE]
    if state.engine is None:
        return web.json_response({"models": []})
    d = describe(state)
    return web.json_response({"models": [{
        "name": d.name, "model": d.name, "size": d.size, "digest": d.digest,
        "details": d.details, "expires_at": NEVER_EXPIRES, "size_vram": 0,
        "context_length": state.engine.info.context_length}]})


def answer_capabilities(state: AppState) -> list[str]:
    """``tools`` and ``thinking``, where the model's chat format marks them in
    its answers (so /api/chat can return ``tool_calls`` and ``thinking``)."""
    assert state.engine is not None
    fmt = state.engine.chat_format
    if fmt is None:
        return []
    markup = fmt.markup
    found = ["tools"] if markup.call is not None or markup.json_call else []
    return found + (["thinking"] if markup.think is not None else [])


async def show(request: web.Request) -> web.Response:
    """``POST /api/show``: details, ``model_info`` and ``capabilities``, for any name."""
    state = request.app[STATE]
    try:
        body = await read_body(request)
        body.string("model")
        body.string("name")  # the older spelling
    except RequestError as exc:
        return web.json_response({"error": exc.message}, status=exc.spec.status)
    if state.engine is None:
        return _unavailable()
    info = state.engine.info
    d = describe(state)
    arch = d.family or info.engine
    model_info: dict[str, Any] = {
        "general.architecture": arch, "general.basename": info.id,
        f"{arch}.context_length": info.context_length,
        "rkstream.engine": info.engine, "rkstream.runtime": info.runtime or ""}
    capabilities = ["completion"] + (["vision"] if state.vision is not None else [])
    capabilities += answer_capabilities(state)
    return web.json_response({
        "license": "", "modelfile": "", "parameters": "", "template": "",
        "details": d.details, "model_info": model_info, "capabilities": capabilities,
        "modified_at": d.modified_at})


async def version(request: web.Request) -> web.Response:
    """``GET /api/version``: the Ollama version clients compare against, and rkstream's own."""
    return web.json_response({"version": OLLAMA_VERSION, "rkstream": __version__})
