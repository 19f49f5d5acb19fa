"""What a model writes, split as it streams into answer text, reasoning and tool calls.

Each family marks reasoning and tool calls its own way (:class:`Markup`):
Qwen and Hermes-style models wrap a call in ``<tool_call>…</tool_call>``,
Llama 3.x answers with one JSON object, InternLM2 uses its action tokens,
and thinking models put their reasoning in ``<think>…</think>`` (or start
inside it, when the prompt opened the block). :class:`OutputParser` reads the
text piece by piece and never holds more than it must: plain text passes at
once, except characters that could be the start of a tag, and those only
until they cannot be. A call's name is given as soon as it is complete and
its arguments stream as they come.

A call whose JSON is broken, or whose name was not declared, is still
returned, with a ``problem`` that says why; nothing here raises.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from rkstream.core.messages import ToolCall

State = Literal["text", "reasoning", "call", "json"]


@dataclass(frozen=True)
class Markup:
    """How one family marks reasoning and tool calls.

    Attributes:
        think: the tags around reasoning, or None.
        call: the tags around one JSON call ``{"name": …, "arguments": …}``, or None.
        json_call: a reply that *is* one JSON object with ``name`` and
            ``parameters`` (or ``arguments``) is a call (Llama 3.x); it may
            open with ``json_call_prefix``.
    """

    think: tuple[str, str] | None = None
    call: tuple[str, str] | None = None
    json_call: bool = False
    json_call_prefix: str = ""


THINK = ("<think>", "</think>")
HERMES = ("<tool_call>", "</tool_call>")
NO_MARKUP = Markup()


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class ReasoningPiece:
    text: str


@dataclass(frozen=True)
class CallBegin:
    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    text: str


@dataclass(frozen=True)
class CallDone:
    """A finished call; ``problem`` says what is wrong with it, if anything."""

    index: int
    call: ToolCall
    problem: str | None = None


Piece = TextPiece | ReasoningPiece | CallBegin | CallArguments | CallDone


class OutputSink(Protocol):
    """Where a parsed answer goes (each API has one)."""

    def on_text(self, text: str) -> None: ...

    def on_reasoning(self, text: str) -> None: ...

    def on_call_begin(self, index: int, call_id: str, name: str) -> None: ...

    def on_call_arguments(self, index: int, text: str) -> None: ...

    def on_call_done(self, index: int, call: ToolCall, problem: str | None) -> None: ...


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def held_prefix(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin one of ``tags``."""
    longest = 0
    for tag in tags:
        for size in range(min(len(tag) - 1, len(text)), longest, -1):
            if tag.startswith(text[-size:]):
                longest = size
                break
    return longest


_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"'
                   r'\s*:\s*')


class _Call:
    """One call being read: its name once known, its arguments as they come."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.call_id = new_call_id()
        self.name: str | None = None
        self.body = ""
        self._args_at = 0  # where the arguments value starts in body
        self._sent = 0  # how much of the value went out
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._started = False
        self.args_done = False

    def add(self, text: str) -> list[Piece]:
        self.body += text
        pieces: list[Piece] = []
        if self.name is None:
            found = _NAME.match(self.body)
            if found is None:
                return pieces
            self.name = json.loads(f'"{found[1]}"')
            self._args_at = self._sent = found.end()
            pieces.append(CallBegin(self.index, self.call_id, self.name))
        if not self.args_done:
            end = self._scan()
            if end > self._sent:
                pieces.append(CallArguments(self.index, self.body[self._sent:end]))
                self._sent = end
        return pieces

    def _scan(self) -> int:
        """Follow the arguments value (an object or array) up to what has come;
        returns where the text that can go out ends."""
        position = self._sent
        for position in range(self._sent, len(self.body)):
            char = self.body[position]
            if not self._started:
                if char in "{[":
                    self._started, self._depth = True, 1
                elif char.isspace():  # not part of the arguments' text
                    self._args_at = self._sent = position + 1
                else:
                    return self._sent  # a string or scalar value: sent whole at the end
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.args_done = True
                    return position + 1
        return len(self.body) if self._started else self._sent

    def finish(self, tools: frozenset[str], closed: bool) -> list[Piece]:
        """The call's last pieces, once its text is complete (or cut off).

        The arguments the call ends with always start with what was already
        streamed, so a client that joins the pieces gets the same text.
        """
        pieces: list[Piece] = []
        # Complete JSON is a usable call, closed or not (a stop at the close tag).
        problem = None
        cut_short = None if closed else ("the answer ended inside the call (max_tokens or "
                                         "a stop sequence)")
        streamed = self.body[self._args_at:self._sent] if self.name is not None else ""
        try:
            value = json.loads(self.body)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            name = value["name"]
            args = value.get("arguments", value.get("parameters", {}))
            if isinstance(args, str):
                arguments = args
            elif self.args_done:
                arguments = streamed
            else:
                arguments = json.dumps(args, ensure_ascii=False)
        else:
            problem = cut_short or ("its JSON is broken" if value is None
                                    else 'it is not a JSON object with a "name"')
            name = self.name or ""
            arguments = streamed if self.args_done else (
                self.body[self._args_at:] if self.name is not None else self.body).strip()
        if self.name is None:
            self.name = name
            pieces.append(CallBegin(self.index, self.call_id, name))
        if arguments.startswith(streamed):
            if len(arguments) > len(streamed):
                pieces.append(CallArguments(self.index, arguments[len(streamed):]))
        else:
            arguments = streamed  # keep what the client already has
        if problem is None and self.name not in tools:
            problem = f"{self.name!r} is not one of the declared tools"
        pieces.append(CallDone(self.index, ToolCall(self.call_id, self.name, arguments),
                               problem))
        return pieces


class OutputParser:
    """Splits one answer into pieces as it streams.

    Args:
        markup: the family's markup.
        tools: the declared tool names; empty: calls are not looked for.
        thinking_open: the prompt ends inside a reasoning block, so the answer
            starts as reasoning.
    """

    def __init__(self, markup: Markup, tools: frozenset[str] = frozenset(), *,
                 thinking_open: bool = False) -> None:
        self.markup = markup
        self.tools = tools
        self._state: State = "reasoning" if thinking_open and markup.think else "text"
        self._buffer = ""
        self._strip = thinking_open  # drop the blank lines that open a part
        self._at_start = True
        self._call: _Call | None = None
        self.calls = 0
        self.reasoning_pieces = 0
        self._opening: dict[str, State] = {}
        if markup.think:
            self._opening[markup.think[0]] = "reasoning"
        if markup.call and tools:
            self._opening[markup.call[0]] = "call"

    def feed(self, text: str) -> list[Piece]:
        """The pieces ``text`` completes, in order."""
        self._buffer += text
        pieces: list[Piece] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            self._step(pieces, final=False)
            if (self._state, len(self._buffer)) == before:
                break  # waiting for more text
        return pieces

    def finish(self) -> list[Piece]:
        """The last pieces, once the answer has ended."""
        pieces: list[Piece] = []
        while self._buffer:
            before = (self._state, len(self._buffer))
            self._step(pieces, final=True)
            if (self._state, len(self._buffer)) == before:
                break
        if self._state in ("call", "json") and self._call is not None:
            pieces.extend(self._call.finish(self.tools, closed=False))
            self._call = None
        elif self._state == "json" and self._buffer:
            pieces.append(TextPiece(self._buffer))
        self._buffer = ""
        return pieces

    # -- states ------------------------------------------------------------------
    def _step(self, pieces: list[Piece], *, final: bool) -> None:
        if self._strip:
            self._buffer = self._buffer.lstrip("\n")
            if not self._buffer:
                return
            self._strip = False
        if self._state == "text":
            self._text(pieces, final)
        elif self._state == "reasoning":
            self._reasoning(pieces, final)
        elif self._state == "call":
            self._in_call(pieces, final)
        else:
            self._json(pieces, final)

    def _emit(self, pieces: list[Piece], text: str) -> None:
        if not text:
            return
        if self._state == "reasoning":
            self.reasoning_pieces += 1
            pieces.append(ReasoningPiece(text))
        else:
            pieces.append(TextPiece(text))

    def _text(self, pieces: list[Piece], final: bool) -> None:
        if self._at_start and self.markup.json_call and self.tools:
            if self._json_start(final):
                return
        found = [(self._buffer.find(tag), tag) for tag in self._opening]
        found = [(at, tag) for at, tag in found if at >= 0]
        if found:
            at, tag = min(found)
            self._emit(pieces, self._buffer[:at])
            self._at_start = self._at_start and not self._buffer[:at].strip()
            self._buffer = self._buffer[at + len(tag):]
            self._state = self._opening[tag]
            if self._state == "call":
                self._call = _Call(self.calls)
                self.calls += 1
            else:
                self._strip = True
            return
        hold = 0 if final else held_prefix(self._buffer, tuple(self._opening))
        out = self._buffer[:len(self._buffer) - hold]
        if out.strip():
            self._at_start = False
        self._emit(pieces, out)
        self._buffer = self._buffer[len(out):]

    def _json_start(self, final: bool) -> bool:
        """Llama 3.x: is the reply a JSON call? True while that is still open
        (the state then is ``json``, or the text is held)."""
        head = self._buffer.lstrip()
        prefix = self.markup.json_call_prefix
        if prefix and head.startswith(prefix):
            head = head[len(prefix):].lstrip()
        elif prefix and prefix.startswith(head) and not final:
            return True  # could still be the prefix
        if not head:
            return not final
        if head.startswith("{"):
            self._buffer = head
            self._state = "json"
            self._call = _Call(self.calls)
            return True
        self._at_start = False
        return False

    def _reasoning(self, pieces: list[Piece], final: bool) -> None:
        assert self.markup.think is not None
        close = self.markup.think[1]
        at = self._buffer.find(close)
        if at >= 0:
            self._emit(pieces, self._buffer[:at].rstrip("\n"))
            self._buffer = self._buffer[at + len(close):]
            self._state = "text"
            self._strip = True
            return
        hold = 0 if final else held_prefix(self._buffer, (close,))
        # Trailing newlines may be the ones before the close tag: hold them too.
        keep = len(self._buffer) - hold
        while keep > 0 and self._buffer[keep - 1] == "\n" and not final:
            keep -= 1
        self._emit(pieces, self._buffer[:keep])
        self._buffer = self._buffer[keep:]

    def _in_call(self, pieces: list[Piece], final: bool) -> None:
        assert self.markup.call is not None and self._call is not None
        close = self.markup.call[1]
        at = self._buffer.find(close)
        if at >= 0:
            pieces.extend(self._call.add(self._buffer[:at]))
            pieces.extend(self._call.finish(self.tools, closed=True))
            self._call = None
            self._buffer = self._buffer[at + len(close):]
            self._state = "text"
            self._strip = True
            return
        hold = 0 if final else held_prefix(self._buffer, (close,))
        take = self._buffer[:len(self._buffer) - hold]
        pieces.extend(self._call.add(take))
        self._buffer = self._buffer[len(take):]

    def _json(self, pieces: list[Piece], final: bool) -> None:
        assert self._call is not None
        call = self._call
        pieces.extend(call.add(self._buffer))
        self._buffer = ""
        if call.name is None and not _could_be_call(call.body):
            self._state = "text"  # an answer in JSON, not a call: it is text after all
            self._call = None
            self._at_start = False
            self._emit(pieces, call.body)
            return
        if call.args_done and call.body.rstrip().endswith("}"):
            try:
                json.loads(call.body)
            except ValueError:
                return  # more to come
            pieces.extend(call.finish(self.tools, closed=True))
            self._call = None
            self._state = "text"
            self._at_start = False


def _could_be_call(body: str) -> bool:
    """Whether ``body`` may still become ``{"name": "…", "parameters": …``."""
    target = '{"name"'
    compact = re.sub(r"\s+", "", body)
    return target.startswith(compact) or compact.startswith(target)
