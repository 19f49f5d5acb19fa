"""The model table: [models.<name>] entries and [pool] from config.toml, checked at
start; the names requests use; each entry's own settings."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from rkstream.cli import main
from rkstream.config import Settings, load_settings
from rkstream.config.settings import ModelEntry, PoolSettings, RKLLMSettings
from rkstream.errors import ConfigError, RequestError
from rkstream.models.table import ModelTable, top_level_name


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, environ={})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as error:
        ModelTable(load(tmp_path, text))
    return str(error.value)


def test_entries_load_with_every_key(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[pool]
keep_alive = "10m"
max_loaded = 2
memory_budget = "6G"

[models.coder]
model = "/m/qwen2.5-coder-1.5b.rkllm"
chat_family = "qwen2"
instances = 2
context = 8192
keep_alive = "-1"

[models."qwen2.5-vl"]
model = "/m/qwen2.5-vl-3b.rkllm"
vision_encoder = "/m/qwen2.5-vl.rknn"
vision_preset = "qwen2.5-vl"

[models.notes]
model = "/m/nomic.gguf"
""")
    table = ModelTable(settings)
    assert [spec.name for spec in table] == [top_level_name(settings), "coder", "qwen2.5-vl",
                                             "notes"]
    coder = table.find("coder")
    assert coder.engine == "rkllm" and coder.keep_alive_s == math.inf
    assert coder.settings.rkllm.model == "/m/qwen2.5-coder-1.5b.rkllm"
    assert coder.settings.rkllm.max_context_len == 8192 and coder.settings.instances == 2
    assert coder.settings.chat.family == "qwen2" and coder.settings.vision.encoder == ""
    vl = table.find("qwen2.5-vl")
    assert vl.settings.vision.preset == "qwen2.5-vl" and vl.encoder_file is not None
    assert vl.keep_alive_s == 600.0  # [pool]'s
    notes = table.find("notes")
    assert notes.engine == "llamacpp" and notes.settings.llamacpp.model == "/m/nomic.gguf"
    assert notes.settings.llamacpp.n_ctx == Settings().llamacpp.n_ctx
    assert table.default.name == top_level_name(settings)
    assert table.default.keep_alive_s == math.inf  # the default model is kept


def test_an_entry_can_be_the_default(tmp_path: Path) -> None:
    table = ModelTable(load(tmp_path, """
[pool]
default_model = "chat"
[models.chat]
model = "/m/chat.rkllm"
[models.other]
model = "/m/other.gguf"
"""))
    assert [spec.name for spec in table] == ["chat", "other"]  # no top-level model
    assert table.default.name == "chat" and table.default.keep_alive_s == math.inf
    assert table.lookup(None) is table.default and table.lookup("") is table.default


def test_names_match_ignoring_case_and_latest(tmp_path: Path) -> None:
    table = ModelTable(load(tmp_path, """
[pool]
default_model = "Qwen3"
[models.Qwen3]
model = "/m/q.rkllm"
"""))
    for name in ("Qwen3", "qwen3", "qwen3:latest", "QWEN3:LATEST"):
        assert table.find(name).name == "Qwen3"
    with pytest.raises(RequestError) as error:
        table.find("qwen3:8b")
    assert error.value.code == "model_not_found" and error.value.param == "model"
    assert error.value.message.startswith("model 'qwen3:8b' not found")


def test_the_top_level_model_is_served_under_its_file_name() -> None:
    rk = replace(Settings(), rkllm=replace(RKLLMSettings(), model="/m/Qwen2.5-3B_w8a8.rkllm"))
    assert top_level_name(rk) == "Qwen2.5-3B_w8a8"
    cpu = replace(rk, engine="llamacpp")
    assert top_level_name(cpu) != "Qwen2.5-3B_w8a8"  # the CPU engine's model instead


@pytest.mark.parametrize(("text", "words"), [
    ('[models.x]\nengine = "rkllm"\n', "has no model file"),
    ('[models.x]\nmodel = "/m/x.bin"\n', "engine auto needs a .rkllm or .gguf"),
    ('[models.x]\nmodel = "/m/x.gguf"\nmodell = 1\n', "unknown key models.x.modell"),
    ('[models.x]\nmodel = "/m/x.gguf"\ninstances = 99\n', "models.x.instances = 99"),
    ('[models.x]\nmodel = "/m/x.gguf"\nkeep_alive = "soon"\n', "models.x.keep_alive"),
    ('[models.x]\nmodel = "/m/x.gguf"\nchat_family = "qwen9"\n', "models.x.chat_family"),
    ('[pool]\ndefault_model = "nope"\n', "names no [models.<name>] entry"),
    ('[pool]\nmemory_budget = "lots"\n', "pool.memory_budget"),
    ('[pool]\nkeep_alive = "5 min"\n', "pool.keep_alive"),
    ('[models]\nx = 1\n', "models.x must be a table"),
    ('[models."-x"]\nmodel = "/m/x.gguf"\n', "a model name is letters"),
])
def test_bad_entries_are_refused_naming_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert words in str(error.value)


def test_an_rkllm_context_must_suit_the_runtime(tmp_path: Path) -> None:
    assert "use 32 to 131072" in refused(tmp_path, """
[models.x]
model = "/m/x.rkllm"
context = 200000
""")


def test_an_entry_may_not_take_the_top_level_models_name(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[rkllm]
model = "/m/chat.rkllm"
[models.chat]
model = "/m/other.gguf"
""")
    with pytest.raises(ConfigError) as error:
        ModelTable(settings)
    assert "rename the entry" in str(error.value)


def test_sizes_count_each_instance(tmp_path: Path) -> None:
    model = tmp_path / "a.gguf"
    model.write_bytes(b"\0" * 100)
    settings = replace(Settings(), models={"a": ModelEntry(model=str(model), instances=3)},
                       pool=replace(PoolSettings(), default_model="a"))
    assert ModelTable(settings).default.size_bytes() == 300


def test_rkstream_config_lists_every_entry_and_model(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    there = tmp_path / "coder.gguf"
    there.write_bytes(b"GGUF")
    path = tmp_path / "config.toml"
    path.write_text(f"""
[models.coder]
model = "{there}"
keep_alive = "1h"
[models.vl]
model = "{tmp_path / 'missing.rkllm'}"
vision_encoder = "{tmp_path / 'missing.rknn'}"
""", encoding="utf-8")
    assert main(["config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"models.coder.model = '{there}'" in out and "models.coder.keep_alive = '1h'" in out
    assert "models.<name>." not in out
    assert f"#   coder: llamacpp, {there} (found)" in out
    assert "#   vl: rkllm" in out and "missing.rkllm (missing), vision" in out
    assert "missing.rknn (missing)" in out


def test_aliases_name_a_model_for_clients_that_send_their_own(tmp_path: Path) -> None:
    table = ModelTable(load(tmp_path, """
[pool]
default_model = "chat"
default_aliases = "claude-*, gpt-4o"
[models.chat]
model = "/m/chat.rkllm"
[models.coder]
model = "/m/coder.gguf"
aliases = "gpt-*,codex"
[models.claude-local]
model = "/m/c.gguf"
"""))
    assert table.find("claude-sonnet-4-5").name == "chat"
    assert table.find("claude-local").name == "claude-local"  # a real name comes first
    assert table.find("GPT-4o").name == "chat"  # the default's aliases come first
    assert table.find("gpt-5-codex").name == "coder" and table.find("codex").name == "coder"
    with pytest.raises(RequestError):
        table.find("llama3")
    path = tmp_path / "bad.toml"
    path.write_text('[pool]\ndefault_aliases = "a b"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert "pool.default_aliases" in str(error.value)
