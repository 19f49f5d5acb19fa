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
from typing import Any

from aiohttp import web

from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, TextPart
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest
from rkstream.errors import RequestError
from rkstream.server.http.body import image_base64, message_role, token_budget
from rkstream.server.http.ollama.models import add_model_routes, model_name, rfc3339
from rkstream.server.http.runner import Dialect, Result, serve
from rkstream.server.state import AppState

NDJSON = "application/x-ndjson"
# Checked as Ollama checks them, then ignored (the engines take them from the config).
IGNORED_INTEGERS = ("seed", "num_ctx")

# JSON may carry these raw inside strings, but httpx (the ollama client) splits
# lines like str.splitlines(), so a raw U+2028 would cut an object in two.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


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


def nanoseconds(ms: float) -> int:
    """Milliseconds as whole nanoseconds (Ollama's duration unit)."""
    return max(0, round(ms * 1_000_000))


def parse_options(f: Fields, cap: int) -> Params:
    """``options`` as Params; num_predict -1 or -2 mean the server default.

    Other options (num_thread, mirostat, ...) are accepted and ignored, as
    Ollama ignores options a runner lacks.
    """
    options = f.mapping("options")
    o = f.child(options or {}, "options")
    values = o.params(SAMPLING_FIELDS)
    for name in IGNORED_INTEGERS:
        o.integer(name)
    values["max_tokens"] = token_budget(o, "num_predict", cap)
    return Params(**values)


def images_of(f: Fields) -> tuple[ImagePart, ...]:
    """The ``images`` list of base64 strings, as image parts."""
    raw = f.array("images")
    return tuple(ImagePart(data=image_base64(f, item, f.path(f"images[{i}]")))
                 for i, item in enumerate(raw or ()))


def chat_messages(f: Fields) -> tuple[Message, ...]:
    """Ollama messages; images come before the text, where vision models expect them."""
    out: list[Message] = []
    for i, item in enumerate(f.array("messages") or ()):
        m = f.child(item, f"messages[{i}]")
        role = message_role(m)
        content = m.string("content") or ""
        parts: tuple[Part, ...] = (*images_of(m), TextPart(content))
        out.append(Message(role=role, parts=parts))
    return tuple(out)


def statistics(result: Result) -> dict[str, int]:
    """Ollama's counters: durations in integer nanoseconds, from the run's own timings.

    ``load_duration`` is the wait for a free model instance (the model is
    always loaded); ``prompt_eval_duration`` includes the vision encoder.
    """
    outcome = result.outcome
    return {"total_duration": nanoseconds((time.perf_counter() - result.started_s) * 1000.0),
            "load_duration": nanoseconds(result.queued_ms),
            "prompt_eval_count": outcome.prompt_tokens,
            "prompt_eval_duration": nanoseconds(result.vision_ms + outcome.prompt_ms),
            "eval_count": outcome.output_tokens,
            "eval_duration": nanoseconds(outcome.predicted_ms)}


def _load_reason(f: Fields) -> str:
    # keep_alive 0 asks Ollama to unload; the model here stays loaded either way.
    return "unload" if f.get("keep_alive") in (0, "0", "0s", "0m") else "load"


class OllamaDialect(Dialect):
    """/api/chat (``chat``) or /api/generate: NDJSON lines, or one object."""

    content_type = NDJSON
    prefix = "ollama"

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.model = ""

    def _text(self, text: str) -> dict[str, Any]:
        if self.chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def parse(self, body: Fields, state: AppState) -> GenerationRequest | web.StreamResponse:
        self.model = model_name(state, body.string("model"))
        params = parse_options(body, state.settings.limits.max_tokens)
        stream = bool(body.flag("stream", True))
        instructions = None
        if self.chat:
            messages = chat_messages(body)
        else:
            prompt = body.string("prompt") or ""
            instructions = body.string("system") or None
            if body.string("suffix"):
                raise body.error("fim_unsupported", "suffix (fill-in-the-middle) is not "
                                 "supported on /api/generate", "suffix")
            body.flag("raw")  # accepted: the model's template is always applied
            images = images_of(body)
            messages = (Message("user", (*images, TextPart(prompt))),) \
                if prompt or images else ()
        if not messages:  # nothing to generate: Ollama's way to preload a model
            return web.json_response({"model": self.model, "created_at": rfc3339(),
                                      **self._text(""), "done": True,
                                      "done_reason": _load_reason(body)})
        return GenerationRequest(messages, params, instructions=instructions, stream=stream,
                                 model=self.model)

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return {"error": exc.message}

    def piece(self, text: str) -> bytes:
        return ndjson({"model": self.model, "created_at": rfc3339(), **self._text(text),
                       "done": False})

    def whole(self, result: Result) -> dict[str, Any]:
        return {"model": self.model, "created_at": rfc3339(), **self._text(result.text),
                "done": True, "done_reason": result.outcome.finish_reason,
                **statistics(result)}

    def end(self, result: Result) -> bytes:
        last = self.whole(result)
        last.update(self._text(""))
        return ndjson(last)

    def stream_error(self, exc: RequestError) -> bytes:
        return ndjson({"error": exc.message})


async def chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat``."""
    return await serve(request, OllamaDialect(chat=True))


async def generate(request: web.Request) -> web.StreamResponse:
    """``POST /api/generate``; ``raw`` is accepted, the model's template is always applied."""
    return await serve(request, OllamaDialect(chat=False))
