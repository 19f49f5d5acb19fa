"""The stand-in runtime opened directly through the ctypes binding, for tests.

Not a test file: the tests beside it import it (``from native import ...``;
pytest puts a test file's folder on sys.path), and the fault tests' driver
subprocess imports ``init_handle`` and ``run_prompt`` from it. It imports only
rkstream, so the driver can load it without pytest.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageEmbedding, ImageTags
from rkstream.core.params import SamplingSettings
from rkstream.engines.rkllm.loader import RuntimeLibrary, load_runtime
from rkstream.engines.rkllm.structs import make_param, make_run_structs

SAMPLING = SamplingSettings(max_tokens=100, temperature=0.8, top_p=0.9, top_k=1,
                            repeat_penalty=1.1, frequency_penalty=0.0, presence_penalty=0.0)

# rkllm's result callback: (RKLLMResult*, userdata, LLMCallState) -> int.
ResultCallback = Callable[[Any, Any, int], int]


@dataclass
class Opened:
    """What rkllm_init gave: its return code and the handle."""

    ret: int
    handle: Any
    kept: list[Any]  # ctypes objects the runtime holds pointers to: alive as long as handle


def init_handle(runtime: RuntimeLibrary, model: Path | str, on_result: ResultCallback,
                tags: ImageTags | None = None) -> Opened:
    """rkllm_init on ``model`` with default settings and ``on_result`` as the callback."""
    abi = runtime.abi
    param = make_param(runtime, RKLLMSettings(), SamplingDefaults(), str(model).encode(), tags)
    callback = abi.LLMResultCallback(on_result)
    kept: list[Any] = [param, callback]
    if runtime.caps.callbacks_in_struct:  # 1.3 takes a struct of callbacks, 1.2 the function
        callbacks = abi.RKLLMCallback()
        callbacks.result_callback = callback
        kept.append(callbacks)
        target: Any = ctypes.byref(callbacks)
    else:
        target = callback
    handle = abi.LLMHandle()
    ret = runtime.functions.rkllm_init(ctypes.byref(handle), ctypes.byref(param), target)
    return Opened(int(ret), handle, kept)


def run_prompt(runtime: RuntimeLibrary, handle: Any, prompt: str, *,
               keep_history: bool = False, images: tuple[ImageEmbedding, ...] = (),
               tags: ImageTags | None = None, save: Path | None = None) -> int:
    """One rkllm_run of a user prompt with SAMPLING; returns its return code."""
    structs = make_run_structs(runtime, prompt, "user", SAMPLING, RKLLMSettings(),
                               images, tags if images else None, keep_history=keep_history,
                               save_prompt_cache=str(save) if save else None)
    return int(runtime.functions.rkllm_run(handle, ctypes.byref(structs.input),
                                           ctypes.byref(structs.infer), None))


@dataclass
class Result:
    text: str
    prefill_tokens: int  # -1 when the run never finished
    finish: bool


class Native:
    """One stand-in handle whose result callback records what it is given."""

    def __init__(self, lib: Path, model: Path, tags: ImageTags | None = None) -> None:
        self.runtime = load_runtime(lib, "auto")
        self.tags = tags
        self.pieces: list[bytes] = []  # the text of each normal callback
        self.prefill: list[int] = []  # perf.prefill_tokens of each finish callback
        opened = init_handle(self.runtime, model, self._on_result, tags)
        assert opened.ret == 0
        self.handle = opened.handle
        self.kept = opened.kept

    def _on_result(self, result: Any, userdata: Any, state: int) -> int:
        abi = self.runtime.abi
        if state == abi.RKLLM_RUN_NORMAL and result.contents.text is not None:
            self.pieces.append(result.contents.text)
        elif state == abi.RKLLM_RUN_FINISH:
            self.prefill.append(result.contents.perf.prefill_tokens)
        return 0

    def run(self, prompt: str, *, keep_history: bool = True,
            images: tuple[ImageEmbedding, ...] = (), save: Path | None = None) -> Result:
        """One run; ``save``: the file its prompt cache is saved to."""
        self.pieces.clear()
        self.prefill.clear()
        assert run_prompt(self.runtime, self.handle, prompt, keep_history=keep_history,
                          images=images, tags=self.tags, save=save) == 0
        return Result(b"".join(self.pieces).decode(),
                      self.prefill[0] if self.prefill else -1, bool(self.prefill))

    def kv_size(self) -> int:
        size = ctypes.c_int(-1)
        assert self.runtime.functions.rkllm_get_kv_cache_size(self.handle,
                                                              ctypes.byref(size)) == 0
        return size.value

    def pass_through(self) -> None:
        """An empty chat template: the prompt reaches the cache as it is."""
        assert self.runtime.functions.rkllm_set_chat_template(self.handle, b"", b"", b"") == 0

    def clear(self) -> None:
        assert self.runtime.functions.rkllm_clear_kv_cache(self.handle, 0, None, None) == 0

    def load(self, path: Path) -> int:
        return int(self.runtime.functions.rkllm_load_prompt_cache(self.handle,
                                                                  str(path).encode()))

    def destroy(self) -> None:
        assert self.runtime.functions.rkllm_destroy(self.handle) == 0


class Natives:
    """Opens stand-in handles on one ABI line; leaving its ``with`` destroys them all."""

    def __init__(self, lib: Path, line: str, model: Callable[..., Path], record: Path, *,
                 tags: ImageTags | None = None, pass_through: bool = False) -> None:
        self.lib, self.line, self.model, self.record = lib, line, model, record
        self.tags, self.pass_through = tags, pass_through
        self.made: list[Native] = []

    def __call__(self, **keys: Any) -> Native:
        """A handle on a new model file; ``keys`` become its keys."""
        nat = Native(self.lib, self.model(record=self.record, **keys), self.tags)
        assert nat.runtime.line == self.line
        if self.pass_through:
            nat.pass_through()
        self.made.append(nat)
        return nat

    def __enter__(self) -> Natives:
        return self

    def __exit__(self, *exc: object) -> None:
        for nat in self.made:
            nat.destroy()
