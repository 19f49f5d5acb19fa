"""Engine selection: auto prefers RKLLM when it can load, else llama.cpp."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import rkstream.engines
from rkstream.config import RKLLMSettings, Settings
from rkstream.core.embeddings import ImageTags
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.engines.select import choose_engine, make_engine

from conftest import ModelFactory, Records


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


async def test_make_engine_hands_image_tags_to_rkllm(standin_libs: dict[str, Path],
                                                    standin_model: ModelFactory,
                                                    records: Records) -> None:
    settings = replace(Settings(), engine="rkllm", rkllm=replace(
        RKLLMSettings(), library=str(standin_libs["1.2"]),
        model=str(standin_model(record=records.path))))
    engine = make_engine(settings, ImageTags("<img>", "</img>", "<pad>"))
    assert isinstance(engine, RKLLMEngine)
    await engine.load()
    await engine.close()
    assert records.all("init")[0]["img_start"] == "<img>"  # 1.2 takes them at init


def test_engines_never_import_vision() -> None:
    # The caller passes image tags in; an import back would make a package cycle.
    root = Path(rkstream.engines.__file__).parent
    for source in root.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert not name.startswith(("rkstream.vision", "..vision", "...vision")), (
                    f"{source.relative_to(root)} imports {name}")
