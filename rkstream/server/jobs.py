"""From a parsed request to the Job an engine runs: the one place both /ws and
the HTTP runner build it.

With a chat format (``engine.chat_format``) the conversation is rendered here,
in the model's own format, before the scheduler sees it: the scheduler can
then send it to the instance whose KV cache holds most of it, and the engine
sends only what its cache lacks. ``[chat] overflow`` is applied here too.
"""

from __future__ import annotations

from dataclasses import replace

from rkstream.chat.format import ChatFormat
from rkstream.config import Settings
from rkstream.core.messages import Message
from rkstream.core.params import SamplingSettings
from rkstream.core.request import GenerationRequest
from rkstream.engines.base import Engine, Job, Prompt
from rkstream.engines.text import estimate_tokens
from rkstream.errors import ChatTemplateError, RequestError
from rkstream.server.output import call_stop


def make_job(engine: Engine, settings: Settings, request_id: str, request: GenerationRequest,
             sampling: SamplingSettings, instructions: str | None = None, *,
             api: str = "") -> Job:
    """The job for ``request``, its prompt rendered where the engine has a format.

    Raises:
        RequestError: ``fim_unsupported``, or ``context_overflow`` when the
            conversation cannot fit (``[chat] overflow``).
    """
    fmt = engine.chat_format
    instructions = instructions or request.instructions or settings.chat.system_prompt or None
    prompt: Prompt | None = None
    fim = request.fim
    if fim is not None:
        text = fmt.fim(*fim) if fmt is not None else None
        if text is not None:
            prompt, fim = Prompt(text), None
        elif not engine.info.fim:
            raise RequestError(
                "fim_unsupported",
                f"the loaded model ({engine.info.id}) has no fill-in-the-middle markers, so "
                "suffix cannot be used; send the prompt alone, or load a coder model whose "
                "chat format defines FIM (e.g. Qwen2.5-Coder)")
    elif request.raw:
        prompt = Prompt("".join(m.text for m in request.messages))
    elif fmt is not None:
        directive = tool_directive(request)
        if directive:
            instructions = f"{instructions}\n\n{directive}" if instructions else directive
        try:
            prompt = _render(fmt, settings, request, instructions, sampling.max_tokens,
                             engine.info.context_length)
        except ChatTemplateError as exc:
            raise RequestError("chat_format_error",
                               f"the model's chat format ({fmt.name}) refused this "
                               f"conversation: {exc}") from None
    if fim is None and not request.raw:
        sampling = replace(sampling, stop=sampling.stop + call_stop(engine, request))
    thinking = (request.enable_thinking if request.enable_thinking is not None
                else settings.chat.thinking)
    return Job(request_id=request_id, messages=request.messages, instructions=instructions,
               sampling=sampling, fim=fim, prompt=prompt, tools=request.offered_tools,
               enable_thinking=thinking, grammar=required_call_grammar(engine, request), api=api)


def required_call_grammar(engine: Engine, request: GenerationRequest) -> str | None:
    """For ``tool_choice`` required or a named tool, on an engine with constrained
    decoding: the grammar that makes the answer one call to an offered tool."""
    markup = engine.markup
    if (request.tool_choice.mode not in ("required", "function") or markup is None
            or request.raw or request.fim is not None or not request.offered_tools):
        return None
    return engine.call_grammar(markup, request.offered_tools)


def tool_directive(request: GenerationRequest) -> str | None:
    """What the prompt says when a tool call is required (no constrained decoding)."""
    choice = request.tool_choice
    if not request.offered_tools:
        return None
    if choice.mode == "required":
        return "Answer by calling one or more of the tools."
    if choice.mode == "function":
        return f"Answer by calling the tool {choice.name}."
    return None


def _render(fmt: ChatFormat, settings: Settings, request: GenerationRequest,
            instructions: str | None, max_tokens: int, context: int) -> Prompt:
    budget = context - max_tokens
    messages, tools = request.messages, request.offered_tools
    thinking = (request.enable_thinking if request.enable_thinking is not None
                else settings.chat.thinking)
    text = fmt.render(messages, instructions, enable_thinking=thinking, tools=tools)
    while estimate_tokens(text) > budget:
        if settings.chat.overflow != "drop_oldest" or (shorter := drop_oldest(messages)) is None:
            raise RequestError(
                "context_overflow",
                f"the conversation is about {estimate_tokens(text)} tokens and max_tokens is "
                f"{max_tokens}, but the context holds {context}; lower max_tokens, shorten the "
                "conversation, or set [chat] overflow = \"drop_oldest\"")
        messages = shorter
        text = fmt.render(messages, instructions, enable_thinking=thinking, tools=tools)
    return Prompt(text, fmt.end_of_turn, fmt.rewrites_history)


def drop_oldest(messages: tuple[Message, ...]) -> tuple[Message, ...] | None:
    """Without the oldest turn after the system messages; None if only one turn is left.

    A turn is a user message and what follows it up to the next user message
    (the answer, tool calls and their results): whole turns go, never part of one.
    """
    starts = [i for i, m in enumerate(messages) if m.role == "user"]
    if len(starts) < 2:
        return None
    first, second = starts[0], starts[1]
    kept_before = tuple(m for m in messages[:first] if m.role == "system")
    return kept_before + messages[second:]
