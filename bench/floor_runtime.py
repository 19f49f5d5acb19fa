"""The stand-in runtime driven the way the peers drive librkllmrt.so, for the floors.

One handle (rkllm_init through ctypes, with rkstream's own header binding
and its UTF-8 stitching), one run at a time, and the runtime's result
callback, on the runtime's thread, handing each token's text to
``on_text``. The floors add only their own handoff and socket write after
that, so they start from the same C stamp as rkstream's rows: the
stand-in stamps each token with CLOCK_MONOTONIC just before its callback
fires (``[[stamp=1]]``).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.config.settings import RKLLMSettings
from rkstream.core.params import Params, effective_sampling
from rkstream.engines.rkllm.loader import load_runtime
from rkstream.engines.rkllm.native import NativeModel, Order, Steps

MAX_TOKENS = 200_000


class StandinRuntime:
    """The stand-in library with one loaded handle; :meth:`generate` is serialised."""

    def __init__(self, library: str) -> None:
        self._folder = tempfile.TemporaryDirectory()
        model = Path(self._folder.name) / "floor.rkllm"
        model.write_text("#rkstream-standin\n", encoding="utf-8")
        self._runtime = load_runtime(library, "auto")
        settings = replace(RKLLMSettings(), model=str(model), max_new_tokens=MAX_TOKENS,
                           max_context_len=1 << 17)
        self._defaults = SamplingDefaults()
        self._model = NativeModel(self._runtime, settings, self._defaults, str(model), 0)
        self._model.init()
        self._lock = threading.Lock()

    def generate(self, prompt: str, on_text: Callable[[str], None]) -> None:
        """Run ``prompt`` on the calling thread; ``on_text`` gets each token's text
        on the runtime's callback thread, in order."""
        sampling = effective_sampling(self._defaults, MAX_TOKENS, Params(max_tokens=MAX_TOKENS))
        with self._lock:
            steps = Steps(self._runtime.abi, MAX_TOKENS, on_text)
            self._model.run(Order(prompt, "user", sampling, MAX_TOKENS, clear=True), steps)
