"""Engine selection: auto prefers RKLLM when it can load, else llama.cpp."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rkstream.config import RKLLMSettings, Settings
from rkstream.engines.select import choose_engine

from conftest import ModelFactory


def test_auto_without_rkllm_model_is_llamacpp() -> None:
    kind, reason = choose_engine(Settings())
    assert kind == "llamacpp" and "rkllm.model is empty" in reason


def test_auto_with_loadable_runtime_is_rkllm(standin_libs: dict[str, Path],
                                             standin_model: ModelFactory) -> None:
    settings = replace(Settings(), rkllm=replace(
        RKLLMSettings(), library=str(standin_libs["1.2"]), model=str(standin_model())))
    kind, reason = choose_engine(settings)
    assert kind == "rkllm" and "runtime 1.2.3" in reason


def test_auto_with_unusable_runtime_falls_back_and_says_why(tmp_path: Path,
                                                           standin_model: ModelFactory
                                                           ) -> None:
    settings = replace(Settings(), rkllm=replace(
        RKLLMSettings(), library=str(tmp_path / "missing.so"), model=str(standin_model())))
    kind, reason = choose_engine(settings)
    assert kind == "llamacpp"
    assert "cannot be used" in reason and "missing.so" in reason


def test_explicit_choice_is_kept() -> None:
    assert choose_engine(replace(Settings(), engine="rkllm"))[0] == "rkllm"
    assert choose_engine(replace(Settings(), engine="llamacpp"))[0] == "llamacpp"
