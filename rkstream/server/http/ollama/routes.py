"""The Ollama API: ``POST /api/chat`` and ``POST /api/generate`` (NDJSON streams).

The model endpoints (``/api/tags``, ``/api/ps``, ``/api/show``,
``/api/version``) are in ollama_models.py, ``/api/embed`` and
``/api/embeddings`` in embed.py. Written from Ollama's
docs/api.md and checked with the official ``ollama`` Python client.

- ``model`` names one of the served models (``name:latest`` and any case
  match too); an unknown name is a 404 ``{"error": "model 'x' not found"}``,
  as Ollama answers. A model that is not loaded is loaded first, and
  ``load_duration`` says how long that and the queue took.
- ``keep_alive`` (seconds, or a duration such as "5m"; negative = keep, 0 =
  unload after the answer) sets how long the model stays loaded afterwards;
  a request with no prompt (no messages) loads the model, or with
  ``keep_alive: 0`` unloads it, answering ``done_reason`` "load" or "unload".
- ``stream`` defaults to true. Streaming answers are ``application/x-ndjson``,
  one object per line; the last has ``done: true`` and the statistics, with
  durations as integer nanoseconds.
- Errors are an HTTP status and ``{"error": "..."}``; after the stream has
  started, a last line ``{"error": "..."}``.

Tools and thinking (/api/chat; ``think`` on /api/generate too):

- ``tools`` is OpenAI's list of ``{"type": "function", "function": {...}}``
  (read by :mod:`rkstream.core.tool_fields`, as on every API); ``think`` is
  true, false, or a level ("low", "medium", "high", "max"), which means true.
- History: an assistant turn's ``tool_calls`` (``arguments`` an object) and
  ``thinking``; a ``tool`` turn's ``tool_name`` (or ``tool_call_id``).
- A call the model makes is sent once it is complete, in one chunk:
  ``message.tool_calls: [{"id", "function": {"index", "name", "arguments":
  {...}}}]``. A call whose arguments are not a JSON object cannot be given
  in that shape (the ``ollama`` client requires an object), so its text
  goes into ``content`` instead, as the model wrote it, roughly.
- Reasoning goes to ``message.thinking`` (``thinking`` on /api/generate).
  ``done_reason`` stays Ollama's ``stop`` or ``length``, also after calls.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from rkstream.chat.output import HERMES, Markup
from rkstream.core.fields import Fields, kind_of
from rkstream.core.messages import ImagePart, Message, Part, TextPart, ToolCall
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest, Tool
from rkstream.core.tool_fields import read_tool_calls, read_tools
from rkstream.errors import RequestError
from rkstream.models.pool import ModelPool, Resident
from rkstream.server.http.body import image_base64, message_role, token_budget
from rkstream.server.http.ollama.embed import add_embed_routes
from rkstream.server.http.ollama.keep_alive import empty_request, read_keep_alive
from rkstream.server.http.ollama.models import add_model_routes, rfc3339
from rkstream.server.http.runner import Dialect, Result, serve
from rkstream.server.state import AppState

NDJSON = "application/x-ndjson"
# Checked as Ollama checks them, then ignored (the engines take them from the config).
IGNORED_INTEGERS = ("seed", "num_ctx")
# Ollama's thinking levels (for gpt-oss); here each means "think".
THINK_LEVELS = ("low", "medium", "high", "max")

# JSON may carry these raw inside strings, but httpx (the ollama client) splits
# lines like str.splitlines(), so a raw U+2028 would cut an object in two.
_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def add_ollama_routes(app: web.Application) -> None:
    """Serve the Ollama API (chat, generate and the model endpoints) on ``app``."""
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    add_model_routes(app)
    add_embed_routes(app)


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


def thinking_switch(f: Fields) -> bool | None:
    """``think``: true, false or a level (which means true); None when absent."""
    raw = f.get("think")
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw in THINK_LEVELS:
        return True
    shown = repr(raw) if isinstance(raw, str) else kind_of(raw)
    raise f.error("invalid_field", f"think must be true, false or one of "
                  f"{', '.join(THINK_LEVELS)}, not {shown}", "think")


def _assistant_parts(m: Fields, content: str, markup: Markup | None) -> tuple[Part, ...]:
    """An assistant turn's text, with its ``thinking`` before it in the model's
    think tags, where the templates look for it (Qwen3 keeps it for the turns
    of the current tool loop and drops it before); its calls are rendered from
    :attr:`Message.tool_calls`."""
    thinking = m.string("thinking") or ""
    if thinking.strip() and markup is not None and markup.think is not None:
        opening, closing = markup.think
        content = f"{opening}\n{thinking.strip()}\n{closing}\n\n{content}"
    return (*images_of(m), TextPart(content))


def chat_messages(f: Fields, markup: Markup | None = None) -> tuple[Message, ...]:
    """Ollama messages; images come before the text, where vision models expect them.

    ``markup`` is the loaded model's, for earlier reasoning.
    """
    out: list[Message] = []
    names: dict[str, str] = {}  # the ids of earlier calls, to name a result by its call
    for i, item in enumerate(f.array("messages") or ()):
        m = f.child(item, f"messages[{i}]")
        role = message_role(m)
        content = m.string("content") or ""
        if role == "assistant":
            calls = read_tool_calls(m, strict=False)
            names.update((c.id, c.name) for c in calls)
            out.append(Message(role, _assistant_parts(m, content, markup),
                               tool_calls=calls))
        elif role == "tool":
            call_id = m.string("tool_call_id")
            name = m.string("tool_name") or m.string("name") or names.get(call_id or "")
            out.append(Message(role, (*images_of(m), TextPart(content)),
                               tool_call_id=call_id, tool_name=name))
        else:
            parts: tuple[Part, ...] = (*images_of(m), TextPart(content))
            out.append(Message(role=role, parts=parts))
    return tuple(out)


def statistics(result: Result) -> dict[str, int]:
    """Ollama's counters: durations in integer nanoseconds, from the run's own timings.

    ``load_duration`` is, as Ollama's, the wait until the request had its
    model: its load, if it was not loaded, and the wait for a free instance;
    ``prompt_eval_duration`` includes the vision encoder.
    """
    outcome = result.outcome
    return {"total_duration": nanoseconds((time.perf_counter() - result.started_s) * 1000.0
                                          + result.load_ms),
            "load_duration": nanoseconds(result.load_ms + result.queued_ms),
            "prompt_eval_count": outcome.prompt_tokens,
            "prompt_eval_duration": nanoseconds(result.vision_ms + outcome.prompt_ms),
            "eval_count": outcome.output_tokens,
            "eval_duration": nanoseconds(outcome.predicted_ms)}


def call_object(call: ToolCall, index: int) -> dict[str, Any] | None:
    """One complete call in Ollama's shape, or None when its arguments are not
    a JSON object (the ``ollama`` client refuses anything else there)."""
    arguments = call.arguments_value()
    if not isinstance(arguments, dict):
        return None
    return {"id": call.id, "function": {"index": index, "name": call.name,
                                        "arguments": arguments}}


def broken_call_text(markup: Markup | None, call: ToolCall) -> str:
    """A call that cannot be sent as one, as text: what the model wrote, roughly
    (its name and its arguments as they came, in the model's markup; a call cut
    off before its name holds all its text in ``arguments``)."""
    body = call.arguments if not call.name else \
        f'{{"name": {json.dumps(call.name, ensure_ascii=False)}, "arguments": ' \
        f'{call.arguments or "null"}}}'
    opening, closing = markup.call if markup is not None and markup.call else HERMES
    return f"{opening}\n{body}\n{closing}"


class OllamaDialect(Dialect):
    """/api/chat (``chat``) or /api/generate: NDJSON lines, or one object."""

    content_type = NDJSON
    prefix = "ollama"

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.api = "ollama_chat" if chat else "ollama_generate"
        self.model = ""
        self.markup: Markup | None = None
        self.calls_sent = 0  # calls streamed so far: the next one's index

    def _text(self, text: str) -> dict[str, Any]:
        if self.chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def _chunk(self, **fields: Any) -> bytes:
        """One streamed line: ``fields`` beside the (empty) text."""
        body = self._text(fields.pop("content", ""))
        (body["message"] if self.chat else body).update(fields)
        return ndjson({"model": self.model, "created_at": rfc3339(), **body, "done": False})

    def keep_alive(self, body: Fields) -> float | None:
        return read_keep_alive(body)

    def without_model(self, body: Fields, pool: ModelPool) -> web.StreamResponse | None:
        if not empty_request(body, self.chat) or read_keep_alive(body) != 0:
            return None
        name = body.string("model")
        pool.unload_when_idle(name)  # refuses an unknown name
        return web.json_response({"model": name or pool.table.default.name,
                                  "created_at": rfc3339(), **self._text(""), "done": True,
                                  "done_reason": "unload"})

    def parse(self, body: Fields, state: AppState, model: Resident
              ) -> GenerationRequest | web.StreamResponse:
        self.model = body.string("model") or model.name
        fmt = model.engine.chat_format
        self.markup = fmt.markup if fmt is not None else None
        params = parse_options(body, state.settings.limits.max_tokens)
        stream = bool(body.flag("stream", True))
        thinking = thinking_switch(body)
        instructions = None
        tools: tuple[Tool, ...] = ()
        if self.chat:
            tools = read_tools(body, strict=False)
            messages = chat_messages(body, self.markup)
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
                                      "done_reason": "load"})
        return GenerationRequest(messages, params, instructions=instructions, stream=stream,
                                 model=self.model, tools=tools, enable_thinking=thinking)

    def error_body(self, exc: RequestError) -> dict[str, Any]:
        return {"error": exc.message}

    def piece(self, text: str) -> bytes:
        return self._chunk(content=text)

    def reasoning(self, text: str) -> bytes:
        return self._chunk(thinking=text)

    def call_done(self, index: int, call: ToolCall) -> bytes:
        """A complete call, in one chunk; one that cannot be an object, as text."""
        sent = call_object(call, self.calls_sent) if self.chat else None
        if sent is None:
            return self._chunk(content=broken_call_text(self.markup, call))
        self.calls_sent += 1
        return self._chunk(tool_calls=[sent])

    def whole(self, result: Result) -> dict[str, Any]:
        text = result.text
        calls: list[dict[str, Any]] = []
        for call in result.calls:
            sent = call_object(call, len(calls)) if self.chat else None
            if sent is None:
                text += broken_call_text(self.markup, call)
            else:
                calls.append(sent)
        body = self._text(text)
        extra: dict[str, Any] = {}
        if result.reasoning:
            extra["thinking"] = result.reasoning
        if calls:
            extra["tool_calls"] = calls
        (body["message"] if self.chat else body).update(extra)
        return {"model": self.model, "created_at": rfc3339(), **body,
                "done": True, "done_reason": result.outcome.finish_reason,
                **statistics(result)}

    def end(self, result: Result) -> bytes:
        return ndjson({"model": self.model, "created_at": rfc3339(), **self._text(""),
                       "done": True, "done_reason": result.outcome.finish_reason,
                       **statistics(result)})  # the answer itself went out in the pieces

    def stream_error(self, exc: RequestError) -> bytes:
        return ndjson({"error": exc.message})


async def chat(request: web.Request) -> web.StreamResponse:
    """``POST /api/chat``."""
    return await serve(request, OllamaDialect(chat=True))


async def generate(request: web.Request) -> web.StreamResponse:
    """``POST /api/generate``; ``raw`` is accepted, the model's template is always applied."""
    return await serve(request, OllamaDialect(chat=False))
