"""The Ollama model endpoints: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/version``.

Every served model is listed by /api/tags, the loaded ones by /api/ps (with
when each expires). What Ollama reads from its own model store (family,
parameter size, quantization) is guessed here from the file name; anything
not known is an empty string. The digest identifies the file
by name, size and modification time (hashing a multi-gigabyte model on every
request would be too slow); it is not a content hash.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from rkstream import __version__
from rkstream.engines.base import Engine
from rkstream.errors import RequestError
from rkstream.models.pool import ModelPool, Resident
from rkstream.models.table import ModelSpec
from rkstream.server.http.runner import read_body
from rkstream.server.state import STATE, ready

# A compatibility value: new enough for clients that check the server's version.
OLLAMA_VERSION = "0.6.0"
# A model kept loaded (keep_alive < 0); Ollama shows such a model with a far-off expiry.
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


@dataclass(frozen=True)
class Described:
    """What the model endpoints say about one model."""

    name: str
    size: int
    digest: str
    modified_at: str
    details: dict[str, Any]
    family: str


def _first(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.search(text)
    return found.group(1) if found else ""


def describe(spec: ModelSpec, resident: Resident | None) -> Described:
    """Name, size, digest, date and details of a served model (loaded or not)."""
    engine = resident.engine.info.engine if resident is not None else spec.engine
    path = spec.model_file
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        stat = None
    size = resident.size if resident is not None else spec.size_bytes()
    mtime_ns = stat.st_mtime_ns if stat is not None else time.time_ns()
    file_id = path.stem if path is not None else spec.name
    digest = hashlib.sha256(f"{file_id}:{stat.st_size if stat else 0}:{mtime_ns}".encode()
                            ).hexdigest()
    found = _PARAMETER_SIZE.search(file_id)
    parameter_size = f"{found.group(1)}{found.group(2).upper()}" if found else ""
    quant = _first(_RKLLM_QUANT if engine == "rkllm" else _GGUF_QUANT, file_id)
    family = _first(_FAMILY, file_id).lower()
    details = {"parent_model": "", "format": _FORMATS.get(engine, engine),
               "family": family, "families": [family] if family else None,
               "parameter_size": parameter_size,
               "quantization_level": quant if engine == "rkllm" else quant.upper()}
    return Described(spec.name, size, digest, rfc3339(mtime_ns), details, family)


def _not_found(exc: RequestError) -> web.Response:
    return web.json_response({"error": exc.message}, status=exc.spec.status)


def _pool(request: web.Request) -> ModelPool | web.Response:
    try:
        return ready(request.app[STATE])
    except RequestError as exc:
        return web.json_response({"error": exc.message}, status=exc.spec.status,
                                 headers={"Retry-After": "1"})


async def tags(request: web.Request) -> web.Response:
    """``GET /api/tags``: every served model, in Ollama's list shape."""
    pool = _pool(request)
    if isinstance(pool, web.Response):
        return pool
    out = []
    for spec in pool.table:
        d = describe(spec, pool.resident(spec.name))
        out.append({"name": d.name, "model": d.name, "modified_at": d.modified_at,
                    "size": d.size, "digest": d.digest, "details": d.details})
    return web.json_response({"models": out})


def expiry(pool: ModelPool, name: str) -> str:
    """``expires_at`` as Ollama writes it; a kept model shows a far-off date, one
    in use now its keep-alive from now."""
    at = pool.expires_at(name)
    if at is None:  # in use: it expires its keep-alive after the last request
        keep = pool.keep_alive_s(name)
        at = math.inf if keep == math.inf else time.time() + keep
    return NEVER_EXPIRES if at == math.inf else rfc3339(int(at * 1e9))


async def ps(request: web.Request) -> web.Response:
    """``GET /api/ps``: the loaded models, longest to live first, as Ollama sorts them."""
    pool = _pool(request)
    if isinstance(pool, web.Response):
        return pool
    rows = []
    for resident in pool.residents:
        d = describe(resident.spec, resident)
        at = pool.expires_at(resident.name)
        rows.append((-(at if at is not None else math.inf), {
            "name": d.name, "model": d.name, "size": d.size, "digest": d.digest,
            "details": d.details, "expires_at": expiry(pool, resident.name), "size_vram": 0,
            "context_length": resident.engine.info.context_length}))
    rows.sort(key=lambda row: row[0])
    return web.json_response({"models": [row for _, row in rows]})


def answer_capabilities(engine: Engine) -> list[str]:
    """``tools`` and ``thinking``, where the model's chat format marks them in
    its answers (so /api/chat can return ``tool_calls`` and ``thinking``)."""
    fmt = engine.chat_format
    if fmt is None:
        return []
    markup = fmt.markup
    found = ["tools"] if markup.call is not None or markup.json_call else []
    return found + (["thinking"] if markup.think is not None else [])


async def show(request: web.Request) -> web.Response:
    """``POST /api/show``: details, ``model_info`` and ``capabilities`` of one model.

    A model that is not loaded is described from its configuration and file;
    its answer capabilities (tools, thinking) and context length are known
    once it has loaded.
    """
    pool = _pool(request)
    if isinstance(pool, web.Response):
        return pool
    try:
        body = await read_body(request)
        name = body.string("model") or body.string("name")  # the older spelling
        spec = pool.table.find(name)
    except RequestError as exc:
        return _not_found(exc)
    resident = pool.resident(spec.name)
    d = describe(spec, resident)
    engine = resident.engine.info.engine if resident is not None else spec.engine
    arch = d.family or engine
    model_info: dict[str, Any] = {"general.architecture": arch, "general.basename": spec.name,
                                  "rkstream.engine": engine,
                                  "rkstream.loaded": resident is not None}
    capabilities = ["completion"]
    if resident is not None:
        info = resident.engine.info
        model_info[f"{arch}.context_length"] = info.context_length
        model_info["rkstream.runtime"] = info.runtime or ""
        capabilities += ["vision"] if resident.vision is not None else []
        capabilities += answer_capabilities(resident.engine)
        capabilities += ["embedding"] if resident.engine.can_embed else []
    elif spec.encoder_file is not None:
        capabilities.append("vision")
    return web.json_response({
        "license": "", "modelfile": "", "parameters": "", "template": "",
        "details": d.details, "model_info": model_info, "capabilities": capabilities,
        "modified_at": d.modified_at})


async def version(request: web.Request) -> web.Response:
    """``GET /api/version``: the Ollama version clients compare against, and rkstream's own."""
    return web.json_response({"version": OLLAMA_VERSION, "rkstream": __version__})
