"""Messages and their parts: what every front end parses into and every engine reads.

Plain values, no socket and no engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "rgb", "bgr")
# What an image or frame part becomes in prompt text (RKLLM expands it to the image).
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An inline image (``data``) or a reference to an uploaded one (``image_id``)."""

    data: bytes | None = None
    image_id: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FramePart:
    """The newest frame of a camera stream, taken when the request's vision step runs."""

    stream: str


Part = TextPart | ImagePart | FramePart


@dataclass(frozen=True)
class ToolCall:
    """A function call: one the model made, or one a client sends back in the history.

    ``arguments`` is JSON text, as OpenAI carries it; a model may write broken
    JSON, which is kept as it is (see :meth:`arguments_value`).
    """

    id: str
    name: str
    arguments: str = "{}"

    def arguments_value(self) -> Any:
        """The arguments as a JSON value (an object, normally); the text itself
        when it is not JSON."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    Attributes:
        tool_calls: an assistant turn's calls, in order.
        tool_call_id: a ``tool`` turn's answer to which call (OpenAI).
        tool_name: a ``tool`` turn's function name (Ollama's ``tool_name``).
    """

    role: Role
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined; images are not included."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def text_with(self, placeholder: str) -> str:
        """The text with ``placeholder`` where each image or frame part stands."""
        return "".join(p.text if isinstance(p, TextPart) else placeholder
                       for p in self.parts)

    @property
    def has_media(self) -> bool:
        return any(not isinstance(p, TextPart) for p in self.parts)

    @property
    def media(self) -> tuple[ImagePart | FramePart, ...]:
        return tuple(p for p in self.parts if not isinstance(p, TextPart))
