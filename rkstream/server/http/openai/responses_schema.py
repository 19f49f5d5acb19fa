"""OpenAI Responses request bodies (``POST /v1/responses``) mapped onto the one internal request.

The server is stateless: each request carries the whole conversation in
``input``. ``store`` is accepted (true or false) and nothing is stored;
what can only work with stored state is refused with a 400 that says so:
``previous_response_id``, ``conversation``, ``background``, a stored
``prompt`` and ``item_reference`` input items.

``input`` is a string (one user message) or a list of items:

- ``message`` (``type`` may be left out): role ``user``, ``system``,
  ``developer`` (taken as system) or ``assistant``; content a string or
  parts ``input_text``, ``output_text``, ``refusal``, and ``input_image``
  with a ``data:`` URL (not in an assistant turn);
- ``function_call`` (``call_id``, ``name``, ``arguments``): an earlier call,
  joined to the assistant turn before it;
- ``function_call_output`` (``call_id``, ``output``: a string or text parts):
  the result, a ``tool`` message;
- ``reasoning``: earlier reasoning (its ``content`` text, else its
  ``summary``), given back in the model's think tags with the next assistant
  turn, as chat completions does with ``reasoning_content``.

Tools are flat (``{"type": "function", "name", "description", "parameters",
"strict"}``), unlike chat completions' nested ``function``; only function
tools exist here. ``reasoning.effort`` switches thinking: ``none`` and
``minimal`` off, ``low`` to ``xhigh`` on (the level itself is not applied).
Unknown top-level fields are ignored, as on every HTTP dialect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rkstream.core.fields import Fields
from rkstream.core.messages import ImagePart, Message, Part, Role, TextPart, ToolCall
from rkstream.core.params import SAMPLING_FIELDS, Params
from rkstream.core.request import GenerationRequest, Tool, ToolChoice
from rkstream.core.tool_fields import MAX_TOOLS, TOOL_NAME, arguments_text, read_tool_choice
from rkstream.server.http.body import data_url

STATELESS = ("this server is stateless and keeps no responses; send the whole conversation "
             "in input (earlier output items included)")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
THINKING_OFF = ("none", "minimal")
_ROLES: dict[str, Role] = {"user": "user", "system": "system", "developer": "system",
                           "assistant": "assistant"}
_ITEMS = ("message", "function_call", "function_call_output", "reasoning")
_TEXT_PARTS = ("input_text", "output_text")


@dataclass(frozen=True)
class ResponsesRequest:
    """The internal request, and the request fields the response object repeats."""

    request: GenerationRequest
    echo: dict[str, Any] = field(default_factory=dict)


# -- input ----------------------------------------------------------------------------

def _parts(m: Fields, content: Any, where: str, *, images: bool) -> list[Part]:
    """A message's content (or a tool output): a string, or a list of parts."""
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise m.wrong(where, "a string or a list of parts", content)
    parts: list[Part] = []
    for j, raw in enumerate(content):
        p = m.child(raw, f"{where}[{j}]")
        kind = p.string("type", required=True)
        if kind in _TEXT_PARTS:
            parts.append(TextPart(p.string("text", required=True) or ""))
        elif kind == "refusal":
            parts.append(TextPart(p.string("refusal", required=True) or ""))
        elif kind == "input_image" and images:
            parts.append(_image(p))
        elif kind == "input_image":
            raise p.error("invalid_field", f"{p.path('type')} = 'input_image' is not allowed "
                          "here (an assistant turn or a function_call_output); send its text",
                          p.path("type"))
        elif kind == "input_file":
            raise p.error("invalid_field", f"{p.path('type')} = 'input_file' is not supported: "
                          "send text as input_text and images as input_image", p.path("type"))
        else:
            raise p.error("invalid_field", f"{p.path('type')} = {kind!r} is not one of "
                          "input_text, input_image, output_text, refusal", p.path("type"))
    return parts


def _image(p: Fields) -> ImagePart:
    url = p.get("image_url")
    if url is None and p.get("file_id") is not None:
        raise p.error("invalid_field", f"{p.path('file_id')}: uploaded files do not exist on "
                      "this server; send image_url as a data: URL", p.path("file_id"))
    if url is None:
        raise p.missing(p.path("image_url"), " (a data:image/...;base64, URL)")
    if not isinstance(url, str):
        raise p.wrong(p.path("image_url"), "a string (a data: URL)", url)
    return ImagePart(data=data_url(p, url, p.path("image_url")))


class _Conversation:
    """Builds the messages from input items: calls join the assistant turn before
    them, and reasoning waits for the assistant turn after it."""

    def __init__(self, think: tuple[str, str] | None) -> None:
        self.think = think
        self.messages: list[Message] = []
        self.names: dict[str, str] = {}  # call_id -> name, for the results
        self.reasoning = ""  # given back with the next assistant turn
        self.joinable = False  # the last message is an assistant turn calls may join

    def _opening(self) -> list[Part]:
        """The pending reasoning, in the model's think tags (dropped for a model
        without them)."""
        text, self.reasoning = self.reasoning.strip(), ""
        if self.think is None or not text:
            return []
        return [TextPart(f"{self.think[0]}\n{text}\n{self.think[1]}\n\n")]

    def add(self, f: Fields, raw: Any, i: int) -> None:
        m = f.child(raw, f"input[{i}]")
        kind = m.string("type")
        if kind is None and m.get("role") is not None:
            kind = "message"  # the short form {"role", "content"}
        if kind == "item_reference":
            raise m.error("invalid_field", f"{m.path('type')} = 'item_reference' needs stored "
                          f"items, but {STATELESS}", m.path("type"))
        if kind not in _ITEMS:
            if kind is None:
                raise m.missing(m.path("type"), " (one of " + ", ".join(_ITEMS) + ")")
            raise m.error("invalid_field", f"{m.path('type')} = {kind!r} is not one of "
                          + ", ".join(_ITEMS), m.path("type"))
        if kind == "message":
            self._message(m)
        elif kind == "function_call":
            self._call(m)
        elif kind == "function_call_output":
            self._output(m)
        else:
            self._reasoning(m)

    def _message(self, m: Fields) -> None:
        role = _ROLES[m.choice("role", tuple(_ROLES), required=True) or ""]
        content = m.get("content", required=True)
        parts = _parts(m, content, m.path("content"), images=role != "assistant")
        if role == "assistant":
            self.messages.append(Message(role, tuple(self._opening() + parts)))
        else:
            self.reasoning = ""
            self.messages.append(Message(role, tuple(parts)))
        self.joinable = role == "assistant"

    def _call(self, m: Fields) -> None:
        call_id = m.string("call_id", required=True, non_empty=True, max_chars=256) or ""
        name = m.string("name", required=True, non_empty=True) or ""
        call = ToolCall(call_id, name, arguments_text(m, m.get("arguments")))
        self.names[call_id] = name
        if self.joinable and not self.reasoning:
            last = self.messages[-1]
            self.messages[-1] = replace(last, tool_calls=last.tool_calls + (call,))
        else:
            self.messages.append(Message("assistant", tuple(self._opening()), (call,)))
        self.joinable = True

    def _output(self, m: Fields) -> None:
        m.get("call_id", required=True, hint=" (the call_id of the function_call it answers)")
        call_id = m.string("call_id", non_empty=True, max_chars=256) or ""
        output = m.get("output", required=True)
        parts = _parts(m, output, m.path("output"), images=False)
        name = self.names.get(call_id) or m.string("name")
        self.messages.append(Message("tool", tuple(parts), tool_call_id=call_id,
                                     tool_name=name))
        self.reasoning, self.joinable = "", False

    def _reasoning(self, m: Fields) -> None:
        texts: list[str] = []
        for key in ("content", "summary"):  # the raw text, else the summary
            for j, raw in enumerate(m.array(key) or ()):
                texts.append(m.child(raw, m.path(f"{key}[{j}]")).string("text") or "")
            if any(t.strip() for t in texts):
                break
            texts = []
        self.reasoning = "\n".join(texts)
        self.joinable = False


def _input(f: Fields, think: tuple[str, str] | None) -> tuple[Message, ...]:
    raw = f.get("input", required=True)
    if isinstance(raw, str):
        return (Message("user", (TextPart(raw),)),)
    if not isinstance(raw, list):
        raise f.wrong("input", "a string or a list of input items", raw)
    if not raw:
        raise f.error("invalid_field", "input must hold at least one item", "input")
    conversation = _Conversation(think)
    for i, item in enumerate(raw):
        conversation.add(f, item, i)
    return tuple(conversation.messages)


# -- tools ----------------------------------------------------------------------------

def _tool_name(t: Fields) -> str:
    hint = ""
    if t.get("function") is not None:
        hint = (" (Responses tools are flat: {\"type\": \"function\", \"name\": ...}, not "
                "nested in \"function\" as in chat completions)")
    name = t.string("name") or ""
    if not name:
        raise t.missing(t.path("name"), hint)
    if not TOOL_NAME.fullmatch(name):
        raise t.error("invalid_field", f"{t.path('name')} = {name[:80]!r} is not a tool name: "
                      "use 1 to 64 letters, digits, '_', '-' or '.'", t.path("name"))
    return name


def _tools(f: Fields) -> tuple[tuple[Tool, ...], list[dict[str, Any]]]:
    """The declared function tools, and their echo in the response."""
    raw = f.array("tools") or []
    if len(raw) > MAX_TOOLS:
        raise f.error("invalid_field", f"tools declares {len(raw)} tools; the most is "
                      f"{MAX_TOOLS}", "tools")
    tools: list[Tool] = []
    echo: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        t = f.child(item, f"tools[{i}]")
        kind = t.string("type", required=True)
        if kind != "function":
            raise t.error("invalid_field", f"{t.path('type')} = {kind!r} is not supported: only "
                          "function tools exist here (no hosted tools such as web_search, "
                          "file_search or mcp)", t.path("type"))
        name = _tool_name(t)
        if any(tool.name == name for tool in tools):
            raise t.error("invalid_field", f"{t.path('name')}: the tool {name!r} is declared "
                          "twice", t.path("name"))
        description = t.string("description") or ""
        parameters = dict(t.mapping("parameters") or {})
        strict = t.flag("strict")  # structured output: nothing to enforce it with here
        tools.append(Tool(name, description, parameters))
        echo.append({"type": "function", "name": name, "description": description or None,
                     "parameters": parameters, "strict": strict})
    return tuple(tools), echo


def _declared(f: Fields, path: str, name: str, tools: tuple[Tool, ...]) -> None:
    if not any(tool.name == name for tool in tools):
        raise f.error("invalid_field", f"{path} names the tool {name!r}, which is not among the "
                      "declared tools: " + (", ".join(t.name for t in tools) or "none"), path)


def _tool_choice(f: Fields, tools: tuple[Tool, ...]) -> tuple[ToolChoice, tuple[Tool, ...]]:
    """``none``, ``auto``, ``required``, ``{"type": "function", "name"}`` or
    ``{"type": "allowed_tools", "mode", "tools"}`` (only those tools are offered)."""
    raw = f.get("tool_choice")
    if raw is None or isinstance(raw, str):
        return read_tool_choice(f, tools, strict=False), tools
    c = f.child(raw, "tool_choice")
    kind = c.string("type", required=True)
    if kind == "function":
        name = c.string("name", required=True) or ""
        _declared(c, c.path("name"), name, tools)
        return ToolChoice("function", name), tools
    if kind != "allowed_tools":
        raise c.error("invalid_field", f"{c.path('type')} = {kind!r} is not one of function, "
                      "allowed_tools (only function tools exist here)", c.path("type"))
    mode = c.choice("mode", ("auto", "required")) or "auto"
    names: set[str] = set()
    for j, item in enumerate(c.array("tools", required=True) or ()):
        t = c.child(item, c.path(f"tools[{j}]"))
        t.choice("type", ("function",), required=True)
        name = t.string("name", required=True) or ""
        _declared(t, t.path("name"), name, tools)
        names.add(name)
    narrowed = tuple(tool for tool in tools if tool.name in names)
    if mode == "required" and not narrowed:
        raise c.error("invalid_field", "tool_choice.mode is required but no tools are allowed; "
                      "list them in tool_choice.tools", c.path("mode"))
    return ToolChoice("required" if mode == "required" else "auto"), narrowed


# -- the rest -------------------------------------------------------------------------

def _refuse_state(f: Fields) -> None:
    """What needs stored state is refused; ``store`` itself is accepted."""
    f.flag("store")  # checked; nothing is stored either way
    for key in ("previous_response_id", "conversation", "prompt"):
        if f.get(key) is not None:
            raise f.error("invalid_field", f"{key} is not supported: {STATELESS}", key)
    if f.flag("background"):
        raise f.error("invalid_field", "background = true is not supported: a background "
                      f"response is fetched later by its id, but {STATELESS}", "background")


def _reasoning(f: Fields) -> tuple[bool | None, dict[str, Any] | None]:
    raw = f.mapping("reasoning")
    if raw is None:
        return None, None
    r = f.child(raw, "reasoning")
    effort = r.choice("effort", EFFORTS)
    summary = r.choice("summary", ("auto", "concise", "detailed"))
    thinking = None if effort is None else effort not in THINKING_OFF
    return thinking, {"effort": effort, "summary": summary}


def _params(f: Fields, cap: int) -> Params:
    values = f.params(SAMPLING_FIELDS)  # stop, top_k and the like: extensions, as on chat
    budget = f.param("max_output_tokens", "max_tokens")
    if budget is not None and budget > cap:
        raise f.error("invalid_param", f"max_output_tokens = {budget} is above this server's "
                      f"limit of {cap} (limits.max_tokens)", "max_output_tokens")
    return Params(max_tokens=budget, **values)


def _text(f: Fields) -> dict[str, Any]:
    """``text.format``: checked and echoed; only plain text is produced."""
    raw = f.mapping("text")
    if raw is None:
        return {"format": {"type": "text"}}
    t = f.child(raw, "text")
    fmt = t.mapping("format")
    if fmt is not None:
        t.child(fmt, "text.format").choice("type", ("text", "json_schema", "json_object"),
                                           required=True)
    return {**raw, "format": dict(fmt) if fmt is not None else {"type": "text"}}


def parse_responses(f: Fields, think: tuple[str, str] | None, cap: int) -> ResponsesRequest:
    """Parse a /v1/responses body; ``think``: the loaded model's reasoning tags;
    ``cap``: limits.max_tokens.

    Raises:
        ProtocolError: naming the field at fault.
    """
    _refuse_state(f)
    thinking, reasoning = _reasoning(f)
    messages = _input(f, think)
    instructions = f.string("instructions")
    declared, tools_echo = _tools(f)
    choice, tools = _tool_choice(f, declared)
    parallel = bool(f.flag("parallel_tool_calls", True))
    most_calls = f.integer("max_tool_calls", minimum=1)
    options = f.mapping("stream_options")
    if options is not None:
        f.child(options, "stream_options").flag("include_obfuscation")
    f.array("include")  # e.g. reasoning.encrypted_content: the reasoning is plain text here
    metadata = f.mapping("metadata")
    request = GenerationRequest(
        messages, _params(f, cap), instructions=instructions or None,
        stream=bool(f.flag("stream")), model=f.string("model"), tools=tools, tool_choice=choice,
        parallel_tool_calls=parallel and most_calls != 1, enable_thinking=thinking)
    echo = {"instructions": instructions, "max_output_tokens": request.params.max_tokens,
            "max_tool_calls": most_calls, "metadata": dict(metadata or {}),
            "parallel_tool_calls": parallel, "reasoning": reasoning, "text": _text(f),
            "tool_choice": f.get("tool_choice") or "auto", "tools": tools_echo,
            "truncation": f.choice("truncation", ("auto", "disabled")) or "disabled"}
    return ResponsesRequest(request, echo)

