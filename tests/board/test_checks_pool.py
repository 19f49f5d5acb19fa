"""``rkstream doctor`` on the model table: each [models.<name>] entry's files are
checked as the default model's are, and the served models are summed up."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rkstream.board.checks_pool import check_models
from rkstream.board.report import Check
from rkstream.config import Settings
from rkstream.config.settings import ModelEntry, PoolSettings

GGUF = b"GGUF" + bytes(64)


def put(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_each_entry_is_checked_under_its_own_name(tmp_path: Path) -> None:
    coder = put(tmp_path, "qwen2.5-coder-1.5b.rkllm", b"RKLLM\0\0\0" + bytes(4096))
    notes = put(tmp_path, "nomic.gguf", GGUF)
    encoder = put(tmp_path, "vl.onnx", b"\x08" + bytes(16))
    settings = replace(Settings(), models={
        "coder": ModelEntry(model=str(coder), keep_alive="1h"),
        "notes": ModelEntry(model=str(notes), keep_alive="-1"),
        "vl": ModelEntry(model=str(tmp_path / "missing-vl.rkllm"), vision_encoder=str(encoder)),
        "bad": ModelEntry(model=str(tmp_path / "missing.gguf"))})
    checks = by_name(check_models(settings, 8 << 30, True, lambda: None))
    summary = checks["models"]
    assert summary.status == "OK" and summary.detail.startswith("5 served: ")
    assert "coder (rkllm, kept 60 min)" in summary.detail
    assert "notes (llamacpp, kept forever)" in summary.detail
    assert "(auto, default, kept forever)" in summary.detail  # the top-level model
    assert "at most 3 loaded" in summary.detail
    assert checks["models.coder.model"].status == "OK"
    assert checks["models.coder chat format"].status == "OK"  # qwen2 from the file name
    assert checks["models.notes.model"].status == "OK"
    assert checks["models.vl.model"].status == "FAIL"
    assert "does not exist" in checks["models.vl.model"].detail
    assert checks["models.vl.vision_encoder"].status == "OK"
    assert checks["models.bad.model"].status == "FAIL"


def test_a_model_larger_than_the_budget_is_a_warning(tmp_path: Path) -> None:
    big = put(tmp_path, "big.gguf", GGUF + bytes(5000))
    settings = replace(Settings(), models={"big": ModelEntry(model=str(big))},
                       pool=replace(PoolSettings(), default_model="big", memory_budget="4k"))
    summary = by_name(check_models(settings, None, False, lambda: None))["models"]
    assert summary.status == "WARN" and "memory budget" in summary.detail
    assert "big (" in summary.fix and "cannot load within pool.memory_budget" in summary.fix


def test_a_name_clash_is_a_failure(tmp_path: Path) -> None:
    from rkstream.config.settings import RKLLMSettings

    settings = replace(Settings(), rkllm=replace(RKLLMSettings(), model="/m/chat.rkllm"),
                       models={"chat": ModelEntry(model="/m/other.gguf")})
    (only,) = check_models(settings, None, False, lambda: None)
    assert only.name == "models" and only.status == "FAIL" and "rename" in only.detail
