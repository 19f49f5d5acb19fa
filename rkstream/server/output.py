"""A request's answer split into text, reasoning and tool calls, for every front end.

:func:`answer_parser` decides whether a request's answer needs parsing at
all: only when its model's format marks reasoning or tool calls and the
request can produce them (it declared tools, or the model thinks). A plain
request keeps the direct path, so its text is never looked at twice.
:class:`ParsingSink` sits between the scheduler and a front end's
:class:`~rkstream.chat.output.OutputSink`; the front end calls
:meth:`ParsingSink.finish` once the outcome is known, before it ends the
answer, so a half-open tag or an unfinished call is flushed in order.
"""

from __future__ import annotations

from rkstream.chat.output import (
    CallArguments,
    CallBegin,
    CallDone,
    OutputParser,
    OutputSink,
    Piece,
    ReasoningPiece,
    TextPiece,
)
from rkstream.core.messages import ToolCall
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Engine, Job
from rkstream.log import server_log


def answer_parser(engine: Engine, request: GenerationRequest, job: Job) -> OutputParser | None:
    """The parser ``job``'s answer needs, or None when it is plain text."""
    markup = engine.markup
    if markup is None or request.raw or job.fim is not None:
        return None
    tools = frozenset(t.name for t in request.offered_tools)
    calls = bool(tools) and (markup.call is not None or markup.json_call)
    if not calls and markup.think is None:
        return None
    fmt = engine.chat_format
    opened = fmt is not None and job.prompt is not None and fmt.opens_thinking(job.prompt.text)
    return OutputParser(markup, tools if calls else frozenset(), thinking_open=opened)


def call_stop(engine: Engine, request: GenerationRequest) -> tuple[str, ...]:
    """Stop strings that end the answer after its first call, when the request
    allows only one (``parallel_tool_calls`` false)."""
    markup = engine.markup
    if request.parallel_tool_calls or not request.offered_tools or markup is None:
        return ()
    return (markup.call[1],) if markup.call is not None else ()


class ParsingSink:
    """Parses a run's text and hands the pieces to ``target``.

    Attributes:
        calls: the finished tool calls, in order.
    """

    def __init__(self, parser: OutputParser, target: OutputSink, request_id: str) -> None:
        self._parser = parser
        self._target = target
        self._request_id = request_id
        self.calls: list[ToolCall] = []
        self._finished = False

    @property
    def reasoning_pieces(self) -> int:
        """Pieces of reasoning so far: about one per token."""
        return self._parser.reasoning_pieces

    def on_text(self, text: str) -> None:
        self._deliver(self._parser.feed(text))

    def finish(self) -> None:
        """Flush what the parser still holds; call once the outcome is known."""
        if not self._finished:
            self._finished = True
            self._deliver(self._parser.finish())

    def _deliver(self, pieces: list[Piece]) -> None:
        target = self._target
        for piece in pieces:
            if isinstance(piece, TextPiece):
                target.on_text(piece.text)
            elif isinstance(piece, ReasoningPiece):
                target.on_reasoning(piece.text)
            elif isinstance(piece, CallBegin):
                target.on_call_begin(piece.index, piece.call_id, piece.name)
            elif isinstance(piece, CallArguments):
                target.on_call_arguments(piece.index, piece.text)
            elif isinstance(piece, CallDone):
                self.calls.append(piece.call)
                if piece.problem is not None:
                    server_log.warning("%s: tool call %d (%r) returned as written: %s",
                                       self._request_id, piece.index, piece.call.name,
                                       piece.problem)
                target.on_call_done(piece.index, piece.call, piece.problem)
