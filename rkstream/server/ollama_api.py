"""The Ollama API: ``POST /api/chat`` and ``POST /api/generate`` (NDJSON streams).

The model endpoints (``/api/tags``, ``/api/ps``, ``/api/show``,
``/api/version``) are in ollama_models.py. Written from Ollama's
docs/api.md and checked with the official ``ollama`` Python client.

- Any model name is accepted: there is one loaded model, and Ollama clients
  often send a name of their own. The name is echoed back, as Ollama does.
- ``stream`` defaults to true. Streaming answers are ``application/x-ndjson``,
  one object per line; the last has ``done: true`` and the statistics, with
  durations as integer nanoseconds.
- Errors are an HTTP status and ``{"error": "..."}``; after the stream has
  started, a last line ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import RequestError
from ..protocol.events import ImagePart, Message, Params, Part, TextPart
from .generation import Generation, sampling_for
from .http_compat import (
    SAMPLING_FIELDS,
    decode_image,
    drive,
    get_bool,
    get_object,
    get_str,
    http_status,
    integer,
    message_role,
    nanoseconds,
    open_stream,
    outcome_error,
    read_object,
    rfc3339,
    sampling_values,
    token_budget,
    wrong,
)
from .ollama_models import add_model_routes, model_name
from .state import STATE

NDJSON = "application/x-ndjson"

# Ollama option -> Params field. Other options (num_ctx, seed, mirostat, num_thread,
# ...) are accepted and ignored, as Ollama ignores options a runner lacks.
OPTIONS = SAMPLING_FIELDS
IGNORED_INTEGERS = ("seed", "num_ctx")  # checked, as Ollama checks them, then ignored

# JSON may carry these raw inside strings, but httpx (the ollama client) splits
# lines like str.splitlines(), so a raw U+2028 would cut an object in two.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}

Shape = Callable[[str], dict[str, Any]]


def add_ollama_routes(app: web.Application) -> None:
    """Serve the Ollama API (chat, generate and the model endpoints) on ``app``."""
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    add_model_routes(app)


def ndjson(obj: dict[str, Any]) -> bytes:
    """One NDJSON line: compact UTF-8 JSON, as Ollama writes it."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return (text + "\n").encode()


def ollama_error(code: str, message: str) -> web.Response:
    """``{"error": message}`` with the status Ollama would use."""
    status = http_status(code)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.json_response({"error": message}, status=status, headers=headers)


@dataclass(frozen=True)
class OllamaCall:
    """A checked /api/chat or /api/generate request."""

    model: str
    messages: tuple[Message, ...]
    params: Params
    stream: bool
    instructions: str | None = None


def parse_options(body: dict[str, Any], cap: int) -> Params:
    """``options`` as Params; num_predict -1 or -2 mean the server default."""
    options = get_object(body, "options")
    values = sampling_values(options, OPTIONS, "options")
    for name in IGNORED_INTEGERS:
        if options.get(name) is not None:
            integer(options[name], f"options.{name}")
    values["max_tokens"] = token_budget(options.get("num_predict"), "options.num_predict",
                                        cap, negative_is_default=True)
    return Params(**values)


def images_of(obj: dict[str, Any], where: str) -> tuple[ImagePart, ...]:
    """The ``images`` array of ``obj`` (base64 strings) as image parts."""
    raw = obj.get("images")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise wrong(f"{where}images", "an array of base64 strings", raw)
    return tuple(decode_image(item, f"{where}images[{i}]") for i, item in enumerate(raw))


def chat_messages(raw: Any) -> tuple[Message, ...]:
    """Ollama messages; images come before the text, where vision models expect them."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise wrong("messages", "an array", raw)
    out: list[Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        role = message_role(item, where)
        content = get_str(item, "content", f"{where}.content") or ""
        parts: tuple[Part, ...] = (*images_of(item, f"{where}."), TextPart(content))
        out.append(Message(role=role, parts=parts))
    return tuple(out)


def _common(request: web.Request, body: dict[str, Any]) -> tuple[str, Params, bool]:
    state = request.app[STATE]
    return (model_name(state, get_str(body, "model")),
            parse_options(body, state.settings.limits.max_tokens),
            get_bool(body, "stream", True))


def _loaded(model: str, shape: dict[str, Any], reason: str) -> web.Response:
    # What Ollama answers a request with nothing to generate (used to preload a model).
    return web.json_response({"model": model, "created_at": rfc3339(), **shape,
                              "done": True, "done_reason": reason})


async def chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat``."""
    try:
        body = await read_object(request)
        model, params, stream = _common(request, body)
        messages = chat_messages(body.get("messages"))
    except RequestError as exc:
        return ollama_error(exc.code, exc.message)
    if not messages:
        return _loaded(model, {"message": {"role": "assistant", "content": ""}},
                       _load_reason(body))
    call = OllamaCall(model, messages, params, stream)
    return await answer(request, call,
                        lambda text: {"message": {"role": "assistant", "content": text}})


async def generate(request: web.Request) -> web.StreamResponse:
    """``POST /api/generate``; ``raw`` is accepted, the model's template is always applied."""
    try:
        body = await read_object(request)
        model, params, stream = _common(request, body)
        prompt = get_str(body, "prompt") or ""
        system = get_str(body, "system")
        if get_str(body, "suffix"):
            raise RequestError("invalid_field", "suffix (fill-in-the-middle) is not supported "
                                                "by this server", param="suffix")
        get_bool(body, "raw", False)
        images = images_of(body, "")
    except RequestError as exc:
        return ollama_error(exc.code, exc.message)
    if not prompt and not images:
        return _loaded(model, {"response": ""}, _load_reason(body))
    call = OllamaCall(model, (Message("user", (*images, TextPart(prompt))),), params, stream,
                      instructions=system or None)
    return await answer(request, call, lambda text: {"response": text})


def _load_reason(body: dict[str, Any]) -> str:
    # keep_alive 0 asks Ollama to unload; the model here stays loaded either way.
    return "unload" if body.get("keep_alive") in (0, "0", "0s", "0m") else "load"


def statistics(gen: Generation, started_s: float) -> dict[str, int]:
    """Ollama's counters: durations in integer nanoseconds, from the run's own timings.

    ``load_duration`` is the wait for a free model instance (the model is
    always loaded); ``prompt_eval_duration`` includes the vision encoder.
    """
    outcome = gen.outcome
    assert outcome is not None
    return {"total_duration": nanoseconds((time.perf_counter() - started_s) * 1000.0),
            "load_duration": nanoseconds(gen.ticket.queued_ms),
            "prompt_eval_count": outcome.prompt_tokens,
            "prompt_eval_duration": nanoseconds(gen.ticket.vision_ms + outcome.prompt_ms),
            "eval_count": outcome.output_tokens,
            "eval_duration": nanoseconds(outcome.predicted_ms)}


async def answer(request: web.Request, call: OllamaCall, shape: Shape) -> web.StreamResponse:
    """Run ``call`` and answer as Ollama: NDJSON lines, or one object when not streaming."""
    state = request.app[STATE]
    started = time.perf_counter()
    response: web.StreamResponse | None = None

    async def send(obj: dict[str, Any]) -> None:
        nonlocal response
        if response is None:  # first piece: only now is the status known to be 200
            response = await open_stream(request, NDJSON)
        await response.write(ndjson(obj))

    async def on_piece(text: str) -> None:
        await send({"model": call.model, "created_at": rfc3339(), **shape(text),
                    "done": False})

    try:
        sampling = sampling_for(state, call.params)
        result = await drive(request, call.messages, sampling, instructions=call.instructions,
                             prefix="ollama", on_piece=on_piece if call.stream else None)
    except RequestError as exc:
        return ollama_error(exc.code, exc.message)
    if result is None:  # the client went away; its request was cancelled
        return response if response is not None else web.Response(status=499)
    gen, text = result
    assert gen.outcome is not None
    finish = gen.outcome.finish_reason
    if finish not in ("stop", "length"):
        code, message = outcome_error(gen.outcome)
        if response is None:
            return ollama_error(code, message)
        return await _last_line(response, {"error": message})
    final = {"model": call.model, "created_at": rfc3339(),
             **shape("" if call.stream else text), "done": True, "done_reason": finish,
             **statistics(gen, started)}
    if not call.stream:
        return web.json_response(final)
    try:
        await send(final)
    except ConnectionError:
        pass  # the client left after the last piece; nothing more to do
    return response if response is not None else web.Response(status=499)


async def _last_line(response: web.StreamResponse, obj: dict[str, Any]
                     ) -> web.StreamResponse:
    try:
        await response.write(ndjson(obj))
    except ConnectionError:
        pass
    return response
