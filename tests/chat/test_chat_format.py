"""ChatFormat: messages and instructions in, prompt out; stops, FIM, history, resolving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rkstream.chat.format import ChatFormat, resolve_chat_format, tool_schema
from rkstream.chat.presets import FAMILIES
from rkstream.chat.template import ChatTemplate
from rkstream.core.messages import FramePart, ImagePart, Message, Part, TextPart
from rkstream.core.request import Tool
from rkstream.errors import ChatTemplateError, ConfigError

DATE = {"date_string": "26 Jul 2024"}


def msg(role: str, *parts: str | Part) -> Message:
    return Message(role, tuple(TextPart(p) if isinstance(p, str) else p  # type: ignore[arg-type]
                               for p in parts))


def preset(name: str) -> ChatFormat:
    return ChatFormat.preset(name, variables=DATE)


def test_instructions_become_the_system_message() -> None:
    qwen = preset("qwen3")
    alone = qwen.render((msg("user", "Hi"),), "Be brief.")
    assert alone == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    as_message = qwen.render((msg("system", "Be brief."), msg("user", "Hi")), None)
    assert as_message == alone


def test_instructions_come_before_a_first_system_message() -> None:
    rendered = preset("qwen3").render((msg("system", "Use French."), msg("user", "Hi")),
                                      "Be brief.")
    assert rendered.startswith("<|im_start|>system\nBe brief.\n\nUse French.<|im_end|>\n")
    empty = preset("qwen3").render((msg("system", ""), msg("user", "Hi")), "Be brief.")
    assert empty.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # Empty instructions add nothing (and do not drop Qwen2.5's default system message).
    assert preset("qwen2").render((msg("user", "Hi"),), "").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_images_and_frames_stay_where_they_stand() -> None:
    user = msg("user", "Compare ", ImagePart(data=b"\xff\xd8"), " with ", FramePart("door"),
               ".")
    assert preset("minicpm").render((user,), None) == (
        "<|im_start|>user\nCompare <image> with <image>.<|im_end|>\n<|im_start|>assistant\n")
    other = ChatFormat.preset("minicpm", image_placeholder="<img/>")
    assert "Compare <img/> with <img/>." in other.render((user,), None)


def test_enable_thinking() -> None:
    turn = (msg("user", "Hi"),)
    qwen = preset("qwen3")
    assert qwen.render(turn, None).endswith("<|im_start|>assistant\n")
    assert qwen.render(turn, None, enable_thinking=True).endswith("<|im_start|>assistant\n")
    assert qwen.render(turn, None, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    smol = preset("smollm3")
    off = smol.render(turn, None, enable_thinking=False)
    assert "Reasoning Mode: /no_think\n" in off
    assert "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n" in off
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert smol.render((msg("system", "Be brief. /no_think"), *turn), None).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n")
    r1 = preset("deepseek-r1")
    assert r1.render(turn, None).endswith("<｜Assistant｜><think>\n")
    assert r1.render(turn, None, enable_thinking=False).endswith(
        "<｜Assistant｜><think>\n\n</think>\n\n")
    # A family that does not think ignores the switch.
    assert preset("qwen2").render(turn, None, enable_thinking=False).endswith(
        "<|im_start|>assistant\n")


def test_fim() -> None:
    assert preset("qwen2").fim("def f(", "):\n    pass") == (
        "<|fim_prefix|>def f(<|fim_suffix|>):\n    pass<|fim_middle|>")
    assert preset("llama3").fim("a", "b") is None
    assert ChatFormat(ChatTemplate("{{ 1 }}")).fim("a", "b") is None


def test_stop_and_end_of_turn() -> None:
    qwen = preset("qwen3")
    assert qwen.stop == ("<|im_end|>", "<|endoftext|>") and qwen.end_of_turn == "<|im_end|>"
    assert preset("gemma").end_of_turn == "<end_of_turn>"


def test_a_custom_template_finds_its_end_of_turn_marker() -> None:
    chatml = ChatTemplate("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + "
                          "m.content + '<|im_end|>\\n' }}{% endfor %}")
    fmt = ChatFormat(chatml)
    assert (fmt.end_of_turn, fmt.stop, fmt.rewrites_history, fmt.thinking) == (
        "<|im_end|>", ("<|im_end|>",), False, False)
    plain = ChatFormat(ChatTemplate("{{ messages[0].content }}</s>", eos_token="</s>"))
    assert (plain.end_of_turn, plain.stop) == ("</s>", ("</s>",))
    bare = ChatFormat(ChatTemplate("{{ messages[0].content }}"))
    assert (bare.end_of_turn, bare.stop) == ("", ())
    thinking = ChatFormat(ChatTemplate("{% if enable_thinking is defined %}{% endif %}"
                                       "{{ c.split('</think>')[-1] }}"))
    assert thinking.rewrites_history and thinking.thinking


def test_a_custom_template_with_a_family_takes_its_stops_and_fim() -> None:
    fmt = ChatFormat(ChatTemplate("{{ messages[0].content }}"), FAMILIES["qwen2"])
    assert fmt.stop == FAMILIES["qwen2"].stop and fmt.fim("a", "b") is not None
    assert fmt.bos_token == "" and fmt.eos_token == "<|im_end|>"
    own = ChatFormat(ChatTemplate("{{ bos_token }}", bos_token="<B>"), FAMILIES["llama3"])
    assert own.render((msg("user", "x"),), None) == "<B>"  # the template's own tokens win


def test_tools_are_passed_as_openai_function_objects() -> None:
    tool = Tool("lookup", "", {"type": "object"})
    assert tool_schema(tool) == {"type": "function",
                                 "function": {"name": "lookup", "parameters": {"type": "object"}}}
    seen = ChatFormat(ChatTemplate("{{ tools | tojson }}|{{ tools is none }}"))
    assert seen.render((msg("user", "x"),), None, tools=(tool,)) == (
        '[{"type": "function", "function": {"name": "lookup", "parameters": '
        '{"type": "object"}}}]|False')
    assert seen.render((msg("user", "x"),), None).endswith("|True")


def test_template_errors_reach_the_caller() -> None:
    strict = ChatFormat(ChatTemplate("{{ raise_exception('roles must alternate') }}"))
    with pytest.raises(ChatTemplateError, match="^roles must alternate$"):
        strict.render((msg("user", "x"),), None)


# The KV cache holds the prompt plus the generated text plus the end of turn.
# For formats that do not rewrite history, that is exactly the start of the
# next turn's prompt.

HISTORY = (msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"),
           msg("user", "What is 2+2?"))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if not f.rewrites_history])
@pytest.mark.parametrize("thinking", [None, False])
def test_a_finished_turn_extends_the_prompt_that_asked_for_it(name: str,
                                                              thinking: bool | None) -> None:
    fmt = preset(name)
    prompt = fmt.render(HISTORY, None, enable_thinking=thinking)
    answered = (*HISTORY, msg("assistant", "4"))
    history = fmt.render(answered, None, enable_thinking=thinking, add_generation_prompt=False)
    assert history.startswith(prompt + "4" + fmt.end_of_turn)
    follow_up = fmt.render((*answered, msg("user", "And 3+3?")), None,
                           enable_thinking=thinking)
    assert follow_up.startswith(prompt + "4" + fmt.end_of_turn)


def test_qwen3_drops_earlier_reasoning_as_the_reference_shows() -> None:
    # chat_templates.md section 0: the cache holds the no-think block, the next prompt does not.
    fmt = preset("qwen3")
    asked = fmt.render((msg("user", "Hi"),), None, enable_thinking=False)
    assert asked.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    cached = asked + "Hello" + fmt.end_of_turn
    assert cached.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>")
    nxt = fmt.render((msg("user", "Hi"), msg("assistant", "<think>\n\n</think>\n\nHello"),
                      msg("user", "Q2")), None, enable_thinking=False)
    assert "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nQ2" in nxt
    assert not nxt.startswith(cached)


def test_deepseek_r1_render_from_the_reference() -> None:
    # chat_templates.md 1.7, quoted render.
    conversation = (msg("system", "SYS"), msg("user", "Hi"),
                    msg("assistant", "<think>\nreasoning\n</think>\n\nHello"), msg("user", "Q2"))
    assert preset("deepseek-r1").render(conversation, None) == (
        "<｜begin▁of▁sentence｜>SYS<｜User｜>Hi<｜Assistant｜>\n\nHello<｜end▁of▁sentence｜>"
        "<｜User｜>Q2<｜Assistant｜><think>\n")


def test_gemma_render_from_the_reference() -> None:
    # chat_templates.md 1.5: the system text opens the first user turn.
    rendered = preset("gemma").render((msg("system", "SYS"), msg("user", "Hi")), None)
    assert rendered.startswith("<bos><start_of_turn>user\nSYS\n\nHi<end_of_turn>\n")


def test_smollm3_without_tools_leaves_the_system_block_open() -> None:
    # chat_templates.md 1.10: <|im_end|> closes the system block only with tools.
    fmt = preset("smollm3")
    conversation = (msg("system", "SYS"), msg("user", "USER"), msg("assistant", "no yes no"))
    rendered = fmt.render(conversation, None, enable_thinking=False, add_generation_prompt=False)
    assert rendered == (
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n"
        "Today Date: 26 Jul 2024\nReasoning Mode: /no_think\n\n## Custom Instructions\n\nSYS\n\n"
        "<|im_start|>user\nUSER<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\nno yes no<|im_end|>\n")


def test_smollm3_system_override() -> None:
    rendered = preset("smollm3").render((msg("system", "/system_override Raw."),
                                         msg("user", "x")), None)
    assert rendered.startswith("<|im_start|>system\n Raw.<|im_end|>\n<|im_start|>user\nx")


# resolve_chat_format


def test_a_family_is_recognised_from_the_file_name() -> None:
    fmt, reason = resolve_chat_format("", "auto", "/models/Qwen3-1.7B-w8a8.rkllm")
    assert fmt is not None and fmt.family is FAMILIES["qwen3"] and fmt.name == "qwen3"
    assert reason == "family qwen3 recognised from the file name 'Qwen3-1.7B-w8a8.rkllm'"


def test_a_family_set_in_config() -> None:
    fmt, reason = resolve_chat_format("", "gemma", "/models/model.rkllm")
    assert fmt is not None and fmt.family is FAMILIES["gemma"]
    assert reason == "family gemma set by [chat] family"


def test_no_format_says_why_and_what_to_set() -> None:
    fmt, reason = resolve_chat_format("", "auto", "/models/model.rkllm")
    assert fmt is None
    assert reason.startswith("no chat format: the file name 'model.rkllm' matches no built-in "
                             "family (qwen2, qwen2-vl, ")
    assert reason.endswith("; today's labelled transcript is used; set [chat] template or "
                           "family")
    fmt, reason = resolve_chat_format("", "none", "/models/Qwen3-1.7B.rkllm")
    assert fmt is None and reason == ("no chat format: [chat] family = none; today's labelled "
                                      "transcript is used; set [chat] template or family")


def test_a_template_file_with_the_recognised_familys_stops(tmp_path: Path) -> None:
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ messages[0].content }}",
                                  "eos_token": "<|im_end|>"}), encoding="utf-8")
    fmt, reason = resolve_chat_format(str(config), "auto", "Qwen2.5-Coder-1.5B.rkllm")
    assert fmt is not None and fmt.family is FAMILIES["qwen2"]
    assert fmt.template.origin == str(config) and fmt.fim("a", "b") is not None
    assert fmt.name == "custom"
    assert reason == (f"chat template from {config}; stop strings and FIM from family qwen2 "
                      "(recognised from the file name 'Qwen2.5-Coder-1.5B.rkllm')")
    fmt, reason = resolve_chat_format(str(config), "none", "Qwen2.5-Coder-1.5B.rkllm")
    assert fmt is not None and fmt.family is None and fmt.stop == ("<|im_end|>",)
    assert reason == (f"chat template from {config}; no family ([chat] family = none), so no "
                      "FIM; end of turn: <|im_end|>")


def test_an_inline_template_without_a_family() -> None:
    fmt, reason = resolve_chat_format("{{ messages[0].content }}", "auto", "x.rkllm")
    assert fmt is not None and fmt.render((msg("user", "hey"),), None) == "hey"
    assert reason.startswith("chat template from the inline [chat] template; no family (the "
                             "file name 'x.rkllm' matches no built-in family")
    assert reason.endswith("so no FIM; end of turn: none found")


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^\[chat\] family = 'llama2' is not a built-in "
                                          r"family; use auto, none or one of: qwen2, "):
        resolve_chat_format("", "llama2", "x.rkllm")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_chat_format(str(tmp_path / "missing.json"), "auto", "x.rkllm")
