"""What every engine offers the scheduler, whatever runs the model.

An engine owns one or more :class:`EngineInstance` objects (one per native
model handle). The scheduler hands a :class:`Job` to a free instance with
:meth:`EngineInstance.start`, which returns a :class:`Run`. Text reaches the
job's :class:`TextSink` on the event loop, in order, and the run's
:class:`Outcome` comes after the last piece of text.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from rkstream.chat.format import ChatFormat
from rkstream.chat.output import Markup
from rkstream.core.embeddings import ImageEmbedding, ImageTags
from rkstream.core.messages import Message
from rkstream.core.params import SamplingSettings
from rkstream.core.request import Tool
from rkstream.engines.text import estimate_tokens
from rkstream.errors import RequestError
from rkstream.log import engine_log

FinishReason = Literal["stop", "length", "cancelled", "error"]
# How a request ended, in the words of response.done.status and the metrics.
STATUS_OF: dict[FinishReason, str] = {"stop": "completed", "length": "incomplete",
                                      "cancelled": "cancelled", "error": "failed"}


@dataclass(frozen=True)
class Prompt:
    """The text an engine sends as it is: a conversation already in the model's own
    chat format, or a raw completion prompt.

    Attributes:
        text: ends where the model's answer begins; ``<image>`` stands where
            each of the job's images goes.
        end_of_turn: what closes an answer in the format's history ("" for raw
            text): the KV bookkeeping needs it to join a finished answer to
            the next turn.
        rewrites_history: the format renders earlier answers differently from
            how they were generated (Qwen3 and R1 distills drop the reasoning).
    """

    text: str
    end_of_turn: str = ""
    rewrites_history: bool = False


@dataclass(frozen=True)
class Job:
    """One generation, as the engine sees it.

    With images, every image or frame part of ``messages`` has one entry in
    ``images``, in order; the prompt gets an ``<image>`` placeholder there.
    """

    request_id: str
    messages: tuple[Message, ...]
    instructions: str | None
    sampling: SamplingSettings
    images: tuple[ImageEmbedding, ...] = ()
    image_tags: ImageTags | None = None
    fim: tuple[str, str] | None = None  # (prefix, suffix): fill in the middle, no template
    prompt: Prompt | None = None  # rendered already: the engine sends it as it is
    # For an engine that applies the model's template itself (no prompt):
    tools: tuple[Tool, ...] = ()  # what the model may call
    enable_thinking: bool | None = None  # None: the runtime's default
    grammar: str | None = None  # GBNF the answer must follow, where the engine can (a call)
    api: str = ""  # the front end that asked (``ws``, ``openai_chat``, ...): a metrics label


@dataclass
class Outcome:
    """How a run ended, with the engine's own counters."""

    finish_reason: FinishReason
    prompt_tokens: int = 0  # processed by this run's prefill
    output_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens found in the KV cache, not processed again
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    stop_sequence: str | None = None  # the stop string that ended a "stop" run, if one did


EmbedInput = str | list[int]  # a text, or token ids (OpenAI's input as tokens)


@dataclass(frozen=True)
class Embeddings:
    """What :meth:`Engine.embed` gives: one L2-normalised vector per input, in
    order, and the input tokens it read (for ``usage``)."""

    vectors: list[list[float]]
    tokens: int


@dataclass(frozen=True)
class ModelInfo:
    """What clients are told about the loaded model (``session.created.model``)."""

    id: str
    engine: str
    context_length: int
    vision: bool = False
    per_request_sampling: bool = True
    fim: bool = False  # the model defines fill-in-the-middle tokens
    runtime: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    chat_format: str | None = None  # the format rkstream renders prompts in, if any

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "id": self.id,
            "engine": self.engine,
            "context_length": self.context_length,
            "vision": self.vision,
            "per_request_sampling": self.per_request_sampling,
            "fim": self.fim,
        }
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.chat_format is not None:
            out["chat_format"] = self.chat_format
        if self.notes:
            out["notes"] = list(self.notes)
        return out


InstanceStatus = Literal["ok", "restarting", "failed"]


@dataclass
class InstanceHealth:
    """Whether an instance can take work, and the faults it has survived.

    Attributes:
        status: ``ok``; ``restarting`` (its worker is being started again);
            ``failed`` (it cannot serve until something changes, see reason).
        reason: why it is not ``ok``, for people.
        crashes, hangs, restarts: counts since the server started.
        last_fault: the latest fault in one line (when, what, the exit signal).
        last_output: the runtime's last output lines before that fault.
    """

    status: InstanceStatus = "ok"
    reason: str = ""
    crashes: int = 0
    hangs: int = 0
    restarts: int = 0
    last_fault: str | None = None
    last_output: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status, "crashes": self.crashes,
                                  "hangs": self.hangs, "restarts": self.restarts}
        if self.reason:
            out["reason"] = self.reason
        if self.last_fault is not None:
            out["last_fault"] = self.last_fault
        return out


class TextSink(Protocol):
    """Receives a run's text on the event loop thread."""

    def on_text(self, text: str) -> None:
        """Called with complete UTF-8 text, in order; never after the outcome."""


class Run(abc.ABC):
    """A generation in progress on one engine instance.

    Cancellation contract: :meth:`cancel` may be called any number of times,
    from the loop, at any point; it asks the runtime to stop (rkllm_abort) and
    returns at once. :meth:`wait` always returns the outcome once the native
    call has returned; cancelling the task that awaits :meth:`wait` does not
    stop the run (call :meth:`cancel` for that).
    """

    @abc.abstractmethod
    def cancel(self) -> None:
        """Ask the runtime to stop this run; idempotent."""

    @abc.abstractmethod
    async def wait(self) -> Outcome:
        """Wait until the native run has ended; the outcome follows all text."""


class EngineInstance(abc.ABC):
    """One loaded model handle owned by one thread."""

    index: int

    @abc.abstractmethod
    def start(self, job: Job, sink: TextSink) -> Run:
        """Start ``job``; the instance must be idle (the scheduler ensures it)."""

    def affinity(self, job: Job) -> int:
        """How much of ``job``'s prompt this instance's KV cache holds (0 = nothing
        known); the scheduler gives a job the free instance that holds most."""
        return 0

    def health(self) -> InstanceHealth:
        """Whether the instance can take a job now; always ``ok`` unless overridden."""
        return InstanceHealth()

    def watch_health(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the loop whenever :meth:`health` changes status
        (the scheduler, to hand waiting jobs to an instance that is back)."""
        return None  # the health of an instance without faults never changes

    @abc.abstractmethod
    async def close(self) -> None:
        """Free the native model on its owner thread; safe to call twice."""


class Engine(abc.ABC):
    """A loaded model with ``instances`` handles."""

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    @property
    @abc.abstractmethod
    def instances(self) -> list[EngineInstance]: ...

    @property
    def chat_format(self) -> ChatFormat | None:
        """The format rkstream renders conversations in for this model; None: the
        engine formats them itself (llama.cpp's GGUF template, RKLLM's own)."""
        return None

    def call_grammar(self, markup: Markup, tools: tuple[Tool, ...]) -> str | None:
        """The grammar (:attr:`Job.grammar`) that makes the answer one call to one
        of ``tools``, for an engine with constrained decoding; None: the engine
        has none (a required call is only asked for in the prompt)."""
        return None

    @property
    def markup(self) -> Markup | None:
        """How the model's answers mark reasoning and tool calls; None: unknown."""
        fmt = self.chat_format
        return fmt.markup if fmt is not None else None

    @property
    def can_embed(self) -> bool:
        """The engine gives embeddings (:meth:`embed`)."""
        return False

    async def embed(self, texts: list[str]) -> Embeddings:
        """One L2-normalised vector per text.

        Raises:
            RequestError: ``embeddings_unsupported`` (this default), or
                ``context_overflow`` for a text longer than the context.
        """
        raise RequestError("embeddings_unsupported",
                           f"the loaded model ({self.info.id}, {self.info.engine}) gives no "
                           "embeddings")

    async def embed_inputs(self, items: list[EmbedInput]) -> Embeddings:
        """Like :meth:`embed`, where an input may also be token ids; only engines
        with a tokenizer of their own take those (llama.cpp)."""
        if any(not isinstance(item, str) for item in items):
            raise RequestError("embeddings_unsupported",
                               f"the {self.info.engine} engine embeds text only; send input "
                               "as strings, not token ids", param="input")
        return await self.embed([item for item in items if isinstance(item, str)])

    async def count_tokens(self, text: str) -> tuple[int, bool]:
        """``text`` (a prompt as the engine would send it) in tokens, and whether the
        count is exact. By default an estimate (:func:`estimate_tokens`, 3 bytes a
        token): the RKLLM runtime has no tokenizer call."""
        return estimate_tokens(text), False

    @abc.abstractmethod
    async def load(self) -> None:
        """Load every instance (off the loop); raises EngineInitError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Abort runs and free every native handle; safe to call twice."""


class InstanceEngine(Engine):
    """An engine made of owned instances; subclasses fill ``_instances`` and
    ``_info`` in :meth:`load`."""

    def __init__(self) -> None:
        self._instances: list[EngineInstance] = []
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("the engine is not loaded yet")
        return self._info

    @property
    def instances(self) -> list[EngineInstance]:
        return list(self._instances)

    async def close(self) -> None:
        """Close every instance, last first; one failure does not skip the rest."""
        for instance in reversed(self._instances):
            try:
                await instance.close()
            except Exception:
                engine_log.exception("closing instance %d failed", instance.index)
