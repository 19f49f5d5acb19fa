"""The one internal request every front end parses into.

/ws ``response.create``, OpenAI, Ollama and the demo's /rkllm_chat each map
their own names onto :class:`GenerationRequest`; everything after parsing
(sampling, the vision step, the scheduler, the engines) reads only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rkstream.core.messages import FramePart, ImagePart, Message
from rkstream.core.params import Params


@dataclass(frozen=True)
class Tool:
    """A function the model may call (JSON Schema parameters), as clients declare it."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


ToolChoiceMode = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class ToolChoice:
    """Whether the model may, must or must not call a tool (OpenAI ``tool_choice``).

    ``function``: it must call ``name`` (only that tool is declared).
    ``required`` and ``function`` are asked for in the prompt, and enforced
    by a grammar on engines with constrained decoding (llama.cpp).
    """

    mode: ToolChoiceMode = "auto"
    name: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, whichever API asked for it.

    Attributes:
        messages: the conversation; image and frame parts stand where they belong.
        params: what the request sets; the rest comes from the session or server.
        instructions: a system prompt given beside the messages (Ollama ``system``,
            /ws ``session.update``).
        stream: deliver text as it comes, or all at the end.
        model: the model the client named, if any.
        tools: functions the model may call.
        tool_choice: whether it may, must or must not call one.
        parallel_tool_calls: several calls in one answer are allowed; False
            stops generation after the first.
        enable_thinking: switch a thinking model's reasoning on or off for this
            request; None keeps ``[chat] thinking``.
        fim: (prefix, suffix) for fill-in-the-middle, which bypasses the chat format.
        raw: the one message's text goes to the model as it is, without the
            chat format (``/v1/completions``).
    """

    messages: tuple[Message, ...]
    params: Params = field(default_factory=Params)
    instructions: str | None = None
    stream: bool = True
    model: str | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    enable_thinking: bool | None = None
    fim: tuple[str, str] | None = None
    raw: bool = False

    @property
    def offered_tools(self) -> tuple[Tool, ...]:
        """The tools the model is told about: none for ``tool_choice`` none, only
        the named one for a named function."""
        choice = self.tool_choice
        if choice.mode == "none":
            return ()
        if choice.mode == "function":
            return tuple(t for t in self.tools if t.name == choice.name)
        return self.tools

    @property
    def media(self) -> tuple[ImagePart | FramePart, ...]:
        """Every image and frame part, in order."""
        return tuple(p for m in self.messages for p in m.media)

    @property
    def has_media(self) -> bool:
        return any(m.has_media for m in self.messages)
