"""The chat-format families rkstream has built in, and recognising them by file name.

Each family's template is ``templates/<name>.jinja``, written for rkstream
from the formats in /work/shared/reference/chat_templates.md (sections 1 and
3). The templates receive what :class:`rkstream.chat.format.ChatFormat`
passes: messages whose content is text (images as ``<image>``), an
assistant's earlier calls as Hugging Face-style ``tool_calls``
(``{"id", "type": "function", "function": {"name", "arguments"}}``, the
arguments an object, or the text when it is not JSON), a tool result's
``tool_call_id`` and ``name`` when known, the declared tools as OpenAI-style
``{"type": "function", "function": {...}}`` objects, and ``enable_thinking``
only when a request sets it. Templates with tools write earlier calls in the
family's own markup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import PurePath

from rkstream.chat.output import HERMES, NO_MARKUP, THINK, Markup


@dataclass(frozen=True)
class Family:
    """One built-in chat format.

    Attributes:
        name: the ``[chat] family`` name.
        title: the models it is for, for people.
        source: the Jinja template text.
        bos_token: the BOS text the template may write.
        eos_token: the EOS text the template may write.
        stop: end-of-turn and end-of-text markers, to cut generated text at;
            the first closes an assistant turn in the rendered history.
        fim: (prefix, suffix, middle) markers of a fill-in-the-middle prompt, or None.
        thinking: the model writes its reasoning in a ``<think>`` block.
        tools: the template writes declared tools into the prompt.
        rewrites_history: re-rendering drops earlier reasoning, so a rendered
            history differs from what the KV cache holds of the same turns.
        markup: how its answers mark reasoning and tool calls.
        patterns: regular expressions (case-insensitive) matching model file names.
    """

    name: str
    title: str
    source: str
    bos_token: str
    eos_token: str
    stop: tuple[str, ...]
    fim: tuple[str, str, str] | None = None
    thinking: bool = False
    tools: bool = False
    rewrites_history: bool = False
    markup: Markup = NO_MARKUP
    patterns: tuple[str, ...] = ()

    @property
    def end_of_turn(self) -> str:
        """The text that closes an assistant turn (``<|im_end|>`` for ChatML)."""
        return self.stop[0]

    def matches(self, file_name: str) -> bool:
        return any(re.search(p, file_name, re.IGNORECASE) for p in self.patterns)


def _source(name: str) -> str:
    return files("rkstream.chat").joinpath("templates").joinpath(f"{name}.jinja").read_text(
        encoding="utf-8")


_IM_END = ("<|im_end|>", "<|endoftext|>")
_INTERNLM_CALL = ("<|action_start|><|plugin|>", "<|action_end|>")
_QWEN_FIM = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
# Separators people put between a family's name and its version in file names.
_S = r"[-_. ]?"


def _families() -> dict[str, Family]:
    found = (
        Family("qwen2", "Qwen2 / Qwen2.5 / Qwen2.5-Coder (ChatML)", _source("qwen2"),
               "", "<|im_end|>", _IM_END, fim=_QWEN_FIM, tools=True,
               markup=Markup(call=HERMES), patterns=(rf"qwen{_S}2",)),
        Family("qwen2-vl", "Qwen2-VL / Qwen2.5-VL (ChatML, images)", _source("qwen2-vl"),
               "", "<|im_end|>", _IM_END,
               patterns=(rf"qwen{_S}2(?:[._]?5)?{_S}vl",)),
        Family("qwen3", "Qwen3 (ChatML, hybrid thinking)", _source("qwen3"),
               "", "<|im_end|>", _IM_END, thinking=True, tools=True,
               rewrites_history=True, markup=Markup(think=THINK, call=HERMES),
               patterns=(rf"qwen{_S}3(?!{_S}vl)",)),
        Family("llama3", "Llama 3.1 / 3.2 / 3.3", _source("llama3"),
               "<|begin_of_text|>", "<|eot_id|>",
               ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"), tools=True,
               markup=Markup(json_call=True, json_call_prefix="<|python_tag|>"),
               patterns=(rf"llama{_S}3",)),
        Family("gemma", "Gemma 2 / Gemma 3", _source("gemma"),
               "<bos>", "<eos>", ("<end_of_turn>", "<eos>"),
               patterns=(r"(?<!pali)gemma",)),  # PaliGemma has its own format
        Family("phi3", "Phi-3 / Phi-3.5", _source("phi3"),
               "<s>", "<|endoftext|>", ("<|end|>", "<|endoftext|>"),
               patterns=(rf"phi{_S}3",)),
        Family("deepseek-r1", "DeepSeek-R1 distills", _source("deepseek-r1"),
               "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
               ("<｜end▁of▁sentence｜>",), thinking=True, rewrites_history=True,
               markup=Markup(think=THINK), patterns=(rf"deepseek{_S}r1",)),
        Family("internlm2", "InternLM2 / InternLM2.5 (ChatML)", _source("internlm2"),
               "<s>", "</s>", ("<|im_end|>", "</s>"), tools=True,
               markup=Markup(call=_INTERNLM_CALL), patterns=(rf"internlm{_S}2",)),
        Family("minicpm", "MiniCPM3 / MiniCPM-V / MiniCPM4 (ChatML)", _source("minicpm"),
               "<s>", "<|im_end|>", ("<|im_end|>", "</s>"),
               # MiniCPM 1 and 2 use another format (<用户>...<AI>), so only these.
               patterns=(rf"minicpm{_S}(?:3|4|v|o)",)),
        Family("smollm2", "SmolLM2 (ChatML)", _source("smollm2"),
               "", "<|im_end|>", _IM_END, patterns=(rf"smollm{_S}2",)),
        Family("smollm3", "SmolLM3 (ChatML, thinking)", _source("smollm3"),
               "", "<|im_end|>", _IM_END, thinking=True, tools=True,
               markup=Markup(think=THINK, call=HERMES), patterns=(rf"smollm{_S}3",)),
    )
    return {f.name: f for f in found}


FAMILIES: dict[str, Family] = _families()

# Most specific first: an R1 distill of Qwen is named "...-Distill-Qwen-...",
# a Qwen2.5-VL file also matches qwen2.
_RECOGNITION_ORDER = ("deepseek-r1", "qwen2-vl", "qwen3", "qwen2", "smollm3", "smollm2",
                      "llama3", "gemma", "phi3", "internlm2", "minicpm")


def recognise(model_file_name: str) -> Family | None:
    """The family a model's file name belongs to, or None.

    Only the last part of a path is looked at (the folder may be named
    after anything).
    """
    name = PurePath(model_file_name).name
    for family in _RECOGNITION_ORDER:
        if FAMILIES[family].matches(name):
            return FAMILIES[family]
    return None
