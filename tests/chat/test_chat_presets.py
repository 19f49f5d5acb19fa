"""The built-in families: their flags, their shipped templates, and file-name recognition."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import pytest

from rkstream.chat.presets import _RECOGNITION_ORDER, FAMILIES, recognise
from rkstream.config.settings import CHAT_FAMILIES

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]

# name: (FIM markers, thinking, tools, rewrites history, end of turn)
FLAGS: dict[str, tuple[tuple[str, str, str] | None, bool, bool, bool, str]] = {
    "qwen2": (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), False, True, False,
              "<|im_end|>"),
    "qwen2-vl": (None, False, False, False, "<|im_end|>"),
    "qwen3": (None, True, True, True, "<|im_end|>"),
    "llama3": (None, False, True, False, "<|eot_id|>"),
    "gemma": (None, False, False, False, "<end_of_turn>"),
    "phi3": (None, False, False, False, "<|end|>"),
    "deepseek-r1": (None, True, False, True, "<｜end▁of▁sentence｜>"),
    "internlm2": (None, False, True, False, "<|im_end|>"),
    "minicpm": (None, False, False, False, "<|im_end|>"),
    "smollm2": (None, False, False, False, "<|im_end|>"),
    "smollm3": (None, True, True, False, "<|im_end|>"),
}


def test_exactly_the_families_config_offers() -> None:
    assert tuple(FAMILIES) == CHAT_FAMILIES == tuple(FLAGS)
    assert sorted(_RECOGNITION_ORDER) == sorted(FAMILIES)
    for name, family in FAMILIES.items():
        assert family.name == name and family.title and family.patterns


@pytest.mark.parametrize("name", list(FLAGS))
def test_flags(name: str) -> None:
    family = FAMILIES[name]
    fim, thinking, tools, rewrites, end_of_turn = FLAGS[name]
    assert (family.fim, family.thinking, family.tools, family.rewrites_history) == (
        fim, thinking, tools, rewrites)
    assert family.end_of_turn == end_of_turn == family.stop[0]


def test_stop_strings() -> None:
    assert FAMILIES["qwen2"].stop == ("<|im_end|>", "<|endoftext|>")
    assert FAMILIES["llama3"].stop == ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
    assert FAMILIES["gemma"].stop == ("<end_of_turn>", "<eos>")
    assert FAMILIES["phi3"].stop == ("<|end|>", "<|endoftext|>")
    assert FAMILIES["deepseek-r1"].stop == ("<｜end▁of▁sentence｜>",)


def test_templates_ship_as_package_data() -> None:
    folder = files("rkstream.chat").joinpath("templates")
    shipped = sorted(p.name for p in folder.iterdir() if p.name.endswith(".jinja"))
    assert shipped == sorted(f"{name}.jinja" for name in FAMILIES)
    for name, family in FAMILIES.items():
        assert family.source == folder.joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["package-data"]["rkstream.chat"] == [
        "templates/*.jinja"]


@pytest.mark.parametrize(("file_name", "family"), [
    ("Qwen2.5-VL-3B-Instruct_w8a8_rk3588.rkllm", "qwen2-vl"),
    ("qwen2_vl_2b_instruct_w8a8.rkllm", "qwen2-vl"),
    ("Qwen2-VL-2B-Instruct.rkllm", "qwen2-vl"),
    ("Qwen3-1.7B", "qwen3"),
    ("/models/qwen3-4b-w8a8-rk3588.rkllm", "qwen3"),
    ("DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-r1"),
    ("DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm", "deepseek-r1"),
    ("deepseek-r1-distill-llama-8b.rkllm", "deepseek-r1"),
    ("Qwen2.5-1.5B-Instruct_w8a8.rkllm", "qwen2"),
    ("Qwen2.5-Coder-1.5B-Instruct.rkllm", "qwen2"),
    ("qwen2-0_5b-instruct.gguf", "qwen2"),
    ("Llama-3.2-1B", "llama3"),
    ("Meta-Llama-3.1-8B-Instruct-rk3588.rkllm", "llama3"),
    ("gemma-3-1b", "gemma"),
    ("gemma-2-2b-it_w8a8.rkllm", "gemma"),
    ("Phi-3.5-mini", "phi3"),
    ("Phi-3-mini-4k-instruct.rkllm", "phi3"),
    ("internlm2_5-1_8b", "internlm2"),
    ("internlm2-chat-1_8b.rkllm", "internlm2"),
    ("MiniCPM3-4B", "minicpm"),
    ("MiniCPM-V-2_6.rkllm", "minicpm"),
    ("SmolLM2-135M", "smollm2"),
    ("smollm2-360m-instruct-q8_0.gguf", "smollm2"),
    ("SmolLM3-3B", "smollm3"),
])
def test_recognise(file_name: str, family: str) -> None:
    found = recognise(file_name)
    assert found is not None and found.name == family


@pytest.mark.parametrize("file_name", [
    "model.rkllm", "demo.rkllm", "TinyLlama-1.1B-Chat-v1.0.rkllm", "Qwen3-VL-2B-Instruct.rkllm",
    "qwen1.5-1.8b-chat.rkllm", "MiniCPM-2B-sft.rkllm", "chatglm3-6b.rkllm", "phi-2.rkllm",
    "Llama-2-7b-chat.rkllm", "paligemma-3b.rkllm",
])
def test_unknown_names_are_not_guessed(file_name: str) -> None:
    assert recognise(file_name) is None


def test_only_the_file_name_counts() -> None:
    assert recognise("/srv/qwen3-models/model.rkllm") is None
