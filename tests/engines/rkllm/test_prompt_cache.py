"""The prompt cache: the stand-in's model of it (through ctypes) and the
engine's system-prompt cache (``[chat] cache_system_prompt``).

lib/README.md ("Prompt cache") describes the stand-in: a run with
``save_prompt_cache = 1`` writes its effective input to a file when it ends;
``rkllm_load_prompt_cache`` reads it; a run whose input starts the KV cache
and begins with the loaded bytes does not prefill them. Every test runs on
both ABI lines.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rkstream.chat.format import ChatFormat
from rkstream.config import ChatSettings, RKLLMSettings, Settings
from rkstream.engines.base import Prompt
from rkstream.engines.kv import KVText
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.engines.rkllm.prompt_cache import (
    LoadedCache,
    cache_file,
    cached_tokens,
    system_block,
)

from conftest import ModelFactory, Records
from helpers import context_reply
from native import Natives

LINES = ("1.3", "1.2")
SYSTEM = "<|im_start|>system\nYou are terse. Answer in few words.<|im_end|>\n"
TURN = "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(params=LINES)
def line(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def native(standin_libs: dict[str, Path], standin_model: ModelFactory, records: Records,
           line: str) -> Iterator[Natives]:
    """Handles with the pass-through template."""
    with Natives(standin_libs[line], line, standin_model, records.path,
                 pass_through=True) as natives:
        yield natives


# -- the stand-in ----------------------------------------------------------------------

def test_save_load_skip_release(native: Natives, records: Records, tmp_path: Path) -> None:
    nat = native(reply_mode="context")
    path = tmp_path / "system.bin"
    nat.run(SYSTEM, save=path)
    saved = records.all("run")[-1]
    assert saved["infer"]["prompt_cache"] == {"save_prompt_cache": 1,
                                              "prompt_cache_path": str(path)}
    assert records.all("run_end")[-1]["prompt_cache_saved"] == len(SYSTEM.encode())
    header, rest = path.read_bytes().split(b"\n", 1)
    assert header == b"#rkllm-standin-prompt-cache 1"
    assert rest.startswith(f"{len(SYSTEM.encode())} {len(SYSTEM.split())}\n".encode()
                           + SYSTEM.encode())

    nat.clear()
    assert nat.load(path) == 0
    load = records.all("load_prompt_cache")[-1]
    assert (load["ret"], load["bytes"], load["tokens"]) == (0, len(SYSTEM.encode()),
                                                            len(SYSTEM.split()))
    # a first turn: only its own part is prefilled, the cache holds all of it
    reply = nat.run(SYSTEM + TURN).text
    run, end = records.all("run")[-1], records.all("run_end")[-1]
    assert run["kv_before"] == 0 and run["kv_text_new"] == TURN
    assert run["prompt_cache_reused"] == run["kv_reused"] == len(SYSTEM.encode())
    assert run["prefill_bytes"] == len(TURN.encode())
    assert run["history_tokens"] == len(SYSTEM.split())
    assert nat.prefill == [end["prefill_tokens"]] == [len(TURN.split())]
    assert reply == context_reply(SYSTEM + TURN)
    # a follow-up on the cache: not at position 0, so the prompt cache has no part
    nat.run("<|im_end|>\nmore")
    assert records.all("run")[-1]["prompt_cache_reused"] == 0
    # another conversation after a clear gets it again
    nat.clear()
    nat.run(SYSTEM + TURN.replace("hello", "bye"))
    assert records.all("run")[-1]["prompt_cache_reused"] == len(SYSTEM.encode())

    assert nat.runtime.functions.rkllm_release_prompt_cache(nat.handle) == 0
    assert records.all("release_prompt_cache")[-1]["was_loaded"] is True
    nat.clear()
    nat.run(SYSTEM + TURN)
    run = records.all("run")[-1]
    assert run["prompt_cache_reused"] == 0 and run["kv_text_new"] == SYSTEM + TURN


def test_runtime_mode_uses_the_cache_past_a_short_prefix(native: Natives, records: Records,
                                                        tmp_path: Path) -> None:
    nat = native(reply="ok")
    path = tmp_path / "system.bin"
    nat.run(SYSTEM, save=path, keep_history=False)
    assert nat.load(path) == 0
    other = SYSTEM.replace("few words", "many words")
    nat.run(other + TURN, keep_history=False)  # shares only the start of the block
    nat.run(SYSTEM + TURN, keep_history=False)
    run = records.all("run")[-1]
    shared = len(SYSTEM.split("few")[0].encode())
    assert run["kv_reused"] == len(SYSTEM.encode())
    assert run["prompt_cache_reused"] == len(SYSTEM.encode()) - shared
    assert run["kv_text_new"] == TURN


def test_missing_or_bad_file_is_refused(native: Natives, records: Records, tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    nat = native()
    assert nat.load(tmp_path / "missing.bin") == -1
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"#rkllm-standin-prompt-cache 1\n9 1\nshort")
    assert nat.load(bad) == -1
    err = capfd.readouterr().err
    assert "cannot open prompt cache" in err and "invalid prompt cache" in err
    assert [r["ret"] for r in records.all("load_prompt_cache")] == [-1, -1]
    nat.run(SYSTEM + TURN)
    assert records.all("run")[-1]["prompt_cache_reused"] == 0


# -- the engine's pieces -------------------------------------------------------------

def test_system_block_is_the_rendered_system_turn() -> None:
    qwen = ChatFormat.preset("qwen2")
    text, _ = system_block(qwen, "Be brief.")
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n"
    llama = ChatFormat.preset("llama3")
    text, _ = system_block(llama, "Be brief.")
    assert text is not None and text.endswith("Be brief.<|eot_id|>")
    gemma = ChatFormat.preset("gemma")
    text, why = system_block(gemma, "Be brief.")  # no system turn of its own
    assert text is None and "first user turn" in why


def test_cache_file_names_model_line_and_text(tmp_path: Path) -> None:
    one = cache_file("/m/a.rkllm", "1.3", "sys", tmp_path)
    assert one.parent == tmp_path and one.name.startswith("system-")
    assert one == cache_file("/m/a.rkllm", "1.3", "sys", tmp_path)
    others = {cache_file("/m/b.rkllm", "1.3", "sys", tmp_path),
              cache_file("/m/a.rkllm", "1.2", "sys", tmp_path),
              cache_file("/m/a.rkllm", "1.3", "sys2", tmp_path)}
    assert one not in others and len(others) == 3


def test_cached_tokens_only_where_the_run_starts_the_cache() -> None:
    cache = LoadedCache(SYSTEM, 7)
    kv = KVText("history")
    prompt = Prompt(SYSTEM + TURN, "<|im_end|>")
    first = kv.plan(prompt)
    assert cached_tokens(cache, first) == 7 and cached_tokens(None, first) == 0
    kv.settle(first, "ok", natural_end=True, failed=False, end_of_turn="<|im_end|>")
    follow = kv.plan(Prompt(SYSTEM + TURN + "ok<|im_end|>\nnext", "<|im_end|>"))
    assert follow.keep_history and cached_tokens(cache, follow) == 0
    other = kv.plan(Prompt("<|im_start|>system\nother<|im_end|>\n" + TURN, "<|im_end|>"))
    assert other.clear and cached_tokens(cache, other) == 0
    runtime = KVText("runtime").plan(prompt)
    assert not runtime.keep_history and cached_tokens(cache, runtime) == 7


# -- the engine, end to end on the stand-in ------------------------------------------

@pytest.fixture
async def make_engine(standin_libs: dict[str, Path], standin_model: ModelFactory,
                      records: Records, line: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engines: list[RKLLMEngine] = []

    async def make(system_prompt: str = "Be brief.", cache: bool = True,
                   instances: int = 1) -> RKLLMEngine:
        model = standin_model(record=records.path, reply_mode="context")
        settings = replace(
            Settings(), instances=instances,
            rkllm=replace(RKLLMSettings(), library=str(standin_libs[line]), model=str(model),
                          runtime=line),
            chat=replace(ChatSettings(), family="qwen2", system_prompt=system_prompt,
                         cache_system_prompt=cache))
        engine = RKLLMEngine(settings)
        engines.append(engine)
        await engine.load()
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def test_engine_saves_loads_and_releases(make_engine: Any, records: Records,
                                               tmp_path: Path) -> None:
    engine = await make_engine(instances=2)
    block = "<|im_start|>system\nBe brief.<|im_end|>\n"
    saves = [r for r in records.all("run") if r["infer"]["prompt_cache"]]
    assert len(saves) == 2 and all(r["prompt"] == block for r in saves)
    path = Path(saves[0]["infer"]["prompt_cache"]["prompt_cache_path"])
    assert path.parent == tmp_path / "cache" / "rkstream" / "prompt-cache" and path.is_file()
    ends = [r for r in records.all("run_end") if r["prompt_cache_saved"] is not None]
    assert all(r["generated"] <= 1 for r in ends)  # stopped at the first token
    assert [r["ret"] for r in records.all("load_prompt_cache")] == [0, 0]
    for instance in engine.instances:
        assert instance.prompt_cache == LoadedCache(block, len(block.split()))
        assert instance.kv.held == ""
    # every instance cleared its cache after the save, so nothing else is held
    assert len(records.all("clear_kv_cache")) == 2
    await engine.close()
    assert [r["was_loaded"] for r in records.all("release_prompt_cache")] == [True, True]


async def test_engine_goes_on_without_a_cache_it_cannot_make(
        make_engine: Any, records: Records, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rkstream.engine")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    engine = await make_engine()
    assert engine.instances[0].prompt_cache is None
    assert "system prompt not cached" in caplog.text
    caplog.clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    failing = await make_engine(system_prompt="Be brief. [[fail_run=1]]")
    assert failing.instances[0].prompt_cache is None
    assert "the prefill run failed" in caplog.text
    assert not records.all("load_prompt_cache")
    caplog.clear()
    await make_engine(system_prompt="")
    assert "system_prompt is empty" in caplog.text


async def test_engine_without_the_setting_saves_nothing(make_engine: Any,
                                                        records: Records) -> None:
    engine = await make_engine(cache=False)
    assert engine.instances[0].prompt_cache is None
    assert not any(r["infer"]["prompt_cache"] for r in records.all("run"))
    assert not records.all("load_prompt_cache")
