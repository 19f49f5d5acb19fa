"""Turn a conversation into the one prompt a runtime with a built-in chat
template takes (RKLLM applies the model's template around the input)."""

from __future__ import annotations

from rkstream.core.messages import IMAGE_PLACEHOLDER, Message

_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}



def render_prompt(messages: tuple[Message, ...], instructions: str | None) -> tuple[str, str]:
    """Return ``(prompt, role)`` for a single-turn run.

    Each image or frame part becomes an ``<image>`` placeholder where it
    stands, as RKLLM's multimodal input expects.

    A lone user (or tool) message is passed as it is, so the runtime's template
    sees exactly what the client wrote. Anything more (instructions, system
    messages, earlier turns) is written as a labelled transcript ending with
    the last message, because the runtime takes one input per run.
    """
    system = [instructions] if instructions else []
    system += [m.text_with(IMAGE_PLACEHOLDER) for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    last = turns[-1] if turns else None
    role = "tool" if last is not None and last.role == "tool" else "user"
    if not system and len(turns) == 1 and last is not None and last.role in ("user", "tool"):
        return last.text_with(IMAGE_PLACEHOLDER), role
    lines = ["\n\n".join(system)] if system else []
    lines += [f"{_LABELS[m.role]}: {m.text_with(IMAGE_PLACEHOLDER)}" for m in turns]
    return "\n\n".join(lines), role
