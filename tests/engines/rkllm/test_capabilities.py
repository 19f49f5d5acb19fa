"""Runtime-line capabilities: they match the ABI modules, and the engine obeys them.

The behaviour tests give a 1.3 stand-in library the capabilities of a line
without per-run sampling: if the engine still probed the ABI module, the
runtime would get per-run values anyway.
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkstream.config import RKLLMSettings, Settings
from rkstream.core.embeddings import ImageEmbedding, ImageTags
from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job
from rkstream.engines.rkllm import abi_1_2, abi_1_3
from rkstream.engines.rkllm import engine as engine_module
from rkstream.engines.rkllm.capabilities import (
    CAPABILITIES,
    LINE_1_2,
    LINE_1_3,
    RuntimeCapabilities,
    capabilities_of,
)
from rkstream.engines.rkllm.engine import RKLLMEngine
from rkstream.engines.rkllm.loader import SUPPORTED, RuntimeLibrary, load_runtime
from rkstream.errors import RuntimeVersionError

from conftest import ModelFactory, Records
from helpers import Sink

LINES = ("1.3", "1.2")
TAGS = ImageTags("<img>", "</img>", "<pad>")
OTHER_TAGS = ImageTags("<other>", "</other>", "<x>")


def fields_of(struct: type[ctypes.Structure]) -> set[str]:
    return {entry[0] for entry in struct._fields_}


def settings_for(lib: Path, model: Path, line: str, max_new_tokens: int = 8000) -> Settings:
    # In-process: the tests patch the capabilities in this process.
    return replace(Settings(), rkllm=replace(
        RKLLMSettings(), library=str(lib), model=str(model), runtime=line,
        max_new_tokens=max_new_tokens, isolation="thread"))


def job(prompt: str, max_tokens: int, images: tuple[ImageEmbedding, ...] = (),
        tags: ImageTags | None = None) -> Job:
    return Job(request_id="r", messages=(Message("user", (TextPart(prompt),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=max_tokens, temperature=0.5, top_p=0.7,
                                         top_k=3, repeat_penalty=1.2, frequency_penalty=0.1,
                                         presence_penalty=0.2),
               images=images, image_tags=tags)


async def generate(engine: RKLLMEngine, j: Job) -> str:
    sink = Sink()
    await engine.instances[0].start(j, sink).wait()
    return sink.text


@pytest.mark.parametrize("line", LINES)
def test_capabilities_match_the_abi_module(line: str) -> None:
    caps, abi = capabilities_of(line), SUPPORTED[line]
    assert caps.line == abi.LINE
    infer = fields_of(abi.RKLLMInferParam)
    assert caps.per_run_sampling is ("sampling_params" in infer)
    assert caps.per_run_sampling is hasattr(abi, "RKLLMSamplingParam")
    assert caps.per_run_max_new_tokens is ("max_new_tokens" in infer)
    assert caps.image_tags_at_init is ("img_start" in fields_of(abi.RKLLMParam))
    multimodal = fields_of(abi.RKLLMMultiModalInput)
    assert caps.nested_image_input is ("image" in multimodal)
    assert caps.nested_image_input is not ("image_embed" in multimodal)
    if caps.nested_image_input:  # per-run tags exist exactly where init tags do not
        assert ("image_start" in fields_of(abi.RKLLMImageInput)) is not caps.image_tags_at_init
    assert caps.callbacks_in_struct is hasattr(abi, "RKLLMCallback")
    # Both lines' callbacks return int, so returning PAUSE stops a run on either.
    assert abi.LLMResultCallback._restype_ is ctypes.c_int


def test_the_lines_differ_as_their_headers_do() -> None:
    assert hasattr(abi_1_3, "RKLLMSamplingParam") and LINE_1_3.per_run_sampling
    assert not hasattr(abi_1_2, "RKLLMSamplingParam") and not LINE_1_2.per_run_sampling
    assert LINE_1_2.image_tags_at_init and not LINE_1_3.image_tags_at_init
    assert LINE_1_3.callbacks_in_struct and not LINE_1_2.callbacks_in_struct
    assert LINE_1_3.notes == () and "no per-request sampling" in LINE_1_2.notes[0]


def test_lookup_by_line() -> None:
    assert set(CAPABILITIES) == set(SUPPORTED)
    assert capabilities_of("1.3") is LINE_1_3 and capabilities_of("1.2") is LINE_1_2
    with pytest.raises(RuntimeVersionError, match="'1.1' is not supported"):
        capabilities_of("1.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        LINE_1_3.per_run_sampling = False  # type: ignore[misc]


@pytest.mark.parametrize("line", LINES)
def test_loaded_library_carries_its_line_capabilities(standin_libs: dict[str, Path],
                                                      line: str) -> None:
    assert load_runtime(standin_libs[line], "auto").caps is CAPABILITIES[line]


@pytest.fixture
def runtime_caps(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the engine load its library with the given capabilities."""

    def use(caps: RuntimeCapabilities) -> None:
        def load(*args: Any, **keys: Any) -> RuntimeLibrary:
            return replace(load_runtime(*args, **keys), caps=caps)

        monkeypatch.setattr(engine_module, "load_runtime", load)

    return use


@pytest.mark.parametrize("per_run", [True, False])
async def test_engine_follows_capabilities_not_the_abi(
        standin_libs: dict[str, Path], standin_model: ModelFactory, records: Records,
        runtime_caps: Any, per_run: bool) -> None:
    caps = replace(LINE_1_3, per_run_sampling=per_run, per_run_max_new_tokens=per_run,
                   notes=() if per_run else ("fixed sampling",))
    runtime_caps(caps)
    model = standin_model(record=records.path, n_tokens=20, reply="t")
    engine = RKLLMEngine(settings_for(standin_libs["1.3"], model, "1.3", max_new_tokens=5))
    await engine.load()
    try:
        assert engine.info.per_request_sampling is per_run
        assert engine.info.notes == caps.notes
        text = await generate(engine, job("x", max_tokens=10))
    finally:
        await engine.close()
    # Without per-run max_new_tokens the init value (5) is a hard cap.
    assert text == "t" * (10 if per_run else 5)
    infer = records.all("run")[0]["infer"]
    assert infer["max_new_tokens"] == (10 if per_run else 0)  # 0: the init value
    assert (infer["sampling"] is not None) is per_run
    if per_run:
        assert infer["sampling"]["top_k"] == 3


@pytest.mark.parametrize("line", LINES)
async def test_image_tags_go_where_the_line_takes_them(
        standin_libs: dict[str, Path], standin_model: ModelFactory, records: Records,
        line: str) -> None:
    model = standin_model(record=records.path)
    engine = RKLLMEngine(settings_for(standin_libs[line], model, line), image_tags=TAGS)
    await engine.load()
    image = ImageEmbedding(np.ones((4, 16), dtype=np.float32), (32, 32))
    try:
        # The job's own tags differ, to show which ones the runtime got.
        await generate(engine, job("<image>what", 5, (image,), OTHER_TAGS))
    finally:
        await engine.close()
    init = records.all("init")[0]
    assert init["extend_param"]["base_domain_id"] == 1  # an encoder shares the NPU
    run = records.all("run")[0]
    assert run["input_type"] == "multimodal" and run["n_image_tokens"] == 4
    if CAPABILITIES[line].image_tags_at_init:
        assert init["img_start"] == TAGS.start
        assert (run["image_start"], run["image_content"]) == (TAGS.start, TAGS.content)
    else:
        assert "img_start" not in init
        assert (run["image_start"], run["image_content"]) == (OTHER_TAGS.start,
                                                              OTHER_TAGS.content)
