"""A model's chat format as engines use it: the conversation in, the prompt text out.

A :class:`ChatFormat` is a compiled template plus what the engine must know
around it: the stop strings, the text that closes an assistant turn (for KV
cache bookkeeping), the fill-in-the-middle markers, and whether re-rendering
rewrites earlier turns. :func:`resolve_chat_format` picks it from the
``[chat]`` settings and the model's file name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from rkstream.chat.output import HERMES, NO_MARKUP, THINK, Markup
from rkstream.chat.presets import FAMILIES, Family, recognise
from rkstream.chat.template import ChatTemplate, load_template
from rkstream.core.messages import IMAGE_PLACEHOLDER, Message
from rkstream.core.request import Tool
from rkstream.errors import ConfigError

_FALLBACK = "today's labelled transcript is used; set [chat] template or family"


class ChatFormat:
    """Renders conversations with one template.

    Args:
        template: the compiled template.
        family: the built-in family it is, or the family whose stop strings
            and FIM markers a custom template shares; None for neither.
        image_placeholder: the text each image or frame part becomes, where
            it stands (RKLLM's multimodal input expands ``<image>``).
        variables: extra template variables for every render (``date_string``).
    """

    def __init__(self, template: ChatTemplate, family: Family | None = None, *,
                 image_placeholder: str = IMAGE_PLACEHOLDER,
                 variables: Mapping[str, Any] | None = None) -> None:
        self.template = template
        self.family = family
        self.image_placeholder = image_placeholder
        self._variables = dict(variables or {})
        self.bos_token = template.bos_token or (family.bos_token if family else "")
        self.eos_token = template.eos_token or (family.eos_token if family else "")

    @classmethod
    def preset(cls, family: str | Family, **options: Any) -> ChatFormat:
        """The built-in format of ``family`` (a name in FAMILIES, or a Family)."""
        f = FAMILIES[family] if isinstance(family, str) else family
        template = ChatTemplate(f.source, origin=f"the built-in {f.name} template",
                                bos_token=f.bos_token, eos_token=f.eos_token)
        return cls(template, f, **options)

    def __repr__(self) -> str:
        family = self.family.name if self.family else None
        return f"ChatFormat({self.template.origin!r}, family={family!r})"

    @property
    def name(self) -> str:
        """A short name for reports: the family's for a built-in format, else "custom"."""
        if self.family is not None and self.template.source == self.family.source:
            return self.family.name
        return "custom"

    @property
    def stop(self) -> tuple[str, ...]:
        """Texts that end generation: the family's markers, else the template's."""
        if self.family is not None:
            return self.family.stop
        return (self.end_of_turn,) if self.end_of_turn else ()

    @property
    def end_of_turn(self) -> str:
        """What closes an assistant turn in the rendered history (``<|im_end|>``).

        A custom template without a family: the first built-in end-of-turn
        marker its text writes, else its EOS text.
        """
        if self.family is not None:
            return self.family.end_of_turn
        for family in FAMILIES.values():
            if family.end_of_turn in self.template.source:
                return family.end_of_turn
        return self.eos_token

    @property
    def rewrites_history(self) -> bool:
        """Re-rendering drops earlier reasoning (Qwen3, R1 distills).

        For a custom template without a family, any template that handles
        ``</think>`` is assumed to.
        """
        if self.family is not None:
            return self.family.rewrites_history
        return "</think>" in self.template.source

    @property
    def thinking(self) -> bool:
        """The model writes reasoning, and ``enable_thinking`` may switch it."""
        if self.family is not None:
            return self.family.thinking
        return "enable_thinking" in self.template.source

    @property
    def markup(self) -> Markup:
        """How answers mark reasoning and tool calls: the family's; for a custom
        template without one, the Hermes ``<tool_call>`` and ``<think>`` tags if
        its text writes them."""
        if self.family is not None:
            return self.family.markup
        source = self.template.source
        if "<tool_call>" not in source and "<think>" not in source:
            return NO_MARKUP
        return Markup(think=THINK if "<think>" in source else None,
                      call=HERMES if "<tool_call>" in source else None)

    def opens_thinking(self, prompt: str) -> bool:
        """The prompt ends inside a reasoning block (R1 distills' generation prompt),
        so the answer starts as reasoning."""
        think = self.markup.think
        if think is None:
            return False
        tail = prompt[prompt.rfind(self.end_of_turn) + 1:] if self.end_of_turn else prompt
        return tail.rfind(think[0]) > tail.rfind(think[1])

    @property
    def has_fim(self) -> bool:
        """The family defines fill-in-the-middle markers."""
        return self.family is not None and self.family.fim is not None

    def fim(self, prefix: str, suffix: str) -> str | None:
        """A fill-in-the-middle prompt (prefix, suffix, middle order), or None
        when the family has no FIM markers."""
        markers = self.family.fim if self.family is not None else None
        if markers is None:
            return None
        pre, suf, mid = markers
        return f"{pre}{prefix}{suf}{suffix}{mid}"

    def render(self, messages: tuple[Message, ...], instructions: str | None, *,
               enable_thinking: bool | None = None, tools: tuple[Tool, ...] = (),
               add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation.

        ``instructions`` open the conversation as its system message, before
        the text of a first system message if there is one. ``enable_thinking``
        None leaves the template's default.

        Raises:
            ChatTemplateError: the template refused the conversation.
        """
        rows = [self._row(m) for m in messages]
        if instructions:
            if rows and rows[0]["role"] == "system":
                first = rows[0]["content"]
                rows[0] = {"role": "system",
                           "content": f"{instructions}\n\n{first}" if first else instructions}
            else:
                rows.insert(0, {"role": "system", "content": instructions})
        variables = dict(self._variables)
        if enable_thinking is not None:
            variables["enable_thinking"] = enable_thinking
        return self.template.render(
            rows, add_generation_prompt=add_generation_prompt,
            tools=[tool_schema(t) for t in tools] or None,
            bos_token=self.bos_token, eos_token=self.eos_token, **variables)

    def _row(self, message: Message) -> dict[str, Any]:
        """A message as Hugging Face templates take it.

        An assistant's calls become ``tool_calls`` (only when it has some), with
        the arguments as a JSON value, not the JSON text OpenAI carries: a
        template that applies ``tojson`` to them (Qwen2.5, Llama 3.1) would
        otherwise encode them a second time. Arguments that are not JSON pass
        as the text. A tool result gets ``tool_call_id`` and ``name`` when known.
        """
        row: dict[str, Any] = {"role": message.role,
                               "content": message.text_with(self.image_placeholder)}
        if message.role == "assistant" and message.tool_calls:
            row["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments_value()}}
                for call in message.tool_calls]
        elif message.role == "tool":
            if message.tool_call_id is not None:
                row["tool_call_id"] = message.tool_call_id
            if message.tool_name is not None:
                row["name"] = message.tool_name
        return row


def tool_schema(tool: Tool) -> dict[str, Any]:
    """A tool as chat templates take it: the OpenAI ``{"type": "function", ...}`` object."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def resolve_chat_format(template: str, family: str,
                        model_path: str) -> tuple[ChatFormat | None, str]:
    """The chat format ``[chat] template`` and ``[chat] family`` give for a model.

    Returns the format (None: no format, the engine keeps its labelled
    transcript) and a sentence saying why, for the log and ``rkstream doctor``.

    Raises:
        ConfigError: the template cannot be loaded, or ``family`` is unknown.
    """
    file_name = PurePath(model_path).name
    if family not in ("auto", "none") and family not in FAMILIES:
        raise ConfigError(f"[chat] family = {family!r} is not a built-in family; use auto, "
                          f"none or one of: {', '.join(FAMILIES)}")
    if template:
        loaded = load_template(template)
        known, how = _family_for(family, file_name)
        fmt = ChatFormat(loaded, known)
        if known is not None:
            return fmt, (f"chat template from {loaded.origin}; stop strings and FIM "
                         f"from family {known.name} ({how})")
        marker = fmt.end_of_turn or "none found"
        return fmt, (f"chat template from {loaded.origin}; no family ({how}), so no FIM; "
                     f"end of turn: {marker}")
    if family == "none":
        return None, f"no chat format: [chat] family = none; {_FALLBACK}"
    known, how = _family_for(family, file_name)
    if known is None:
        return None, f"no chat format: {how}; {_FALLBACK}"
    return ChatFormat.preset(known), f"family {known.name} {how}"


def model_format(source: str, bos: str, eos: str, family: str, model_path: str
                 ) -> tuple[ChatFormat | None, str]:
    """The chat format of a template that ships inside the model file (a GGUF's
    ``tokenizer.chat_template``), with the family (stop strings, FIM, markup)
    recognised from the file name or set by ``[chat] family``.

    Returns None and why when rkstream's sandbox cannot compile it.
    """
    file_name = PurePath(model_path).name
    try:
        template = ChatTemplate(source, origin=f"the chat template in {file_name}",
                                bos_token=bos, eos_token=eos)
    except ConfigError as exc:
        return None, f"its chat template does not compile here ({exc})"
    known, how = _family_for(family if family != "none" else "auto", file_name)
    fmt = ChatFormat(template, known)
    return fmt, (f"the model's own chat template; family {known.name} ({how})" if known
                 else f"the model's own chat template; no family ({how})")


def _family_for(family: str, file_name: str) -> tuple[Family | None, str]:
    if family == "none":
        return None, "[chat] family = none"
    if family != "auto":
        return FAMILIES[family], "set by [chat] family"
    found = recognise(file_name)
    if found is None:
        return None, (f"the file name {file_name!r} matches no built-in family "
                      f"({', '.join(FAMILIES)})")
    return found, f"recognised from the file name {file_name!r}"
