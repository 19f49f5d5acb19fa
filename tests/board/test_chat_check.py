"""rkstream doctor's chat-format line: OK with a family, WARN without, FAIL when broken."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rkstream.board.checks_models import check_chat_format
from rkstream.config import ChatSettings, RKLLMSettings, Settings


def settings(model: str, **chat: Any) -> Settings:
    return replace(Settings(), rkllm=replace(RKLLMSettings(), model=model),
                   chat=replace(ChatSettings(), **chat))


def test_recognised_family_is_ok_and_says_how_to_check_it() -> None:
    check = check_chat_format(settings("/m/Qwen2.5-1.5B-Instruct_w8a8_rk3588.rkllm"))
    assert check is not None and check.status == "OK"
    assert "qwen2" in check.detail and "RKLLM_LOG_LEVEL=2" in check.detail


def test_unknown_model_warns_with_the_fix() -> None:
    check = check_chat_format(settings("/m/mystery.rkllm"))
    assert check is not None and check.status == "WARN"
    assert check.fix is not None and "[chat] family" in check.fix


def test_explicit_none_and_no_model() -> None:
    check = check_chat_format(settings("/m/Qwen2.5-1.5B.rkllm", family="none"))
    assert check is not None and check.status == "WARN"
    assert check_chat_format(Settings()) is None  # the CPU engine: the GGUF's template


def test_broken_template_fails(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer_config.json"
    bad.write_text('{"bos_token": "<s>"}')
    check = check_chat_format(settings("/m/x.rkllm", template=str(bad)))
    assert check is not None and check.status == "FAIL" and "chat_template" in check.detail
