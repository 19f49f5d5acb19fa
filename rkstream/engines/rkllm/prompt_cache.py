"""The system-prompt cache on RKLLM (``[chat] cache_system_prompt``).

The configured default system prompt opens every conversation that brings
none, so its rendered system block is a prefix of all of them. Each instance
prefills that block once at load with ``save_prompt_cache = 1``, stops at the
first token, clears its KV cache and loads the saved file with
``rkllm_load_prompt_cache``. The runtime matches a loaded prompt cache
against the input from the start, so a run that starts the KV cache afresh
(after a clear, or the first run) with that block needs to prefill only what
follows it.

Whether Rockchip's runtime really skips the block after
``rkllm_clear_kv_cache`` and with ``keep_history = 1`` is unverified (a
maintainer report, rknn-llm #399, saw no speed-up in multi-turn mode); the
stand-in models it as described in lib/README.md ("Prompt cache"). Every
failure here logs a warning and the instance goes on without the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkstream.chat.format import ChatFormat
from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.messages import IMAGE_PLACEHOLDER, Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.kv import KVPlan, common_prefix
from rkstream.engines.rkllm.loader import RuntimeLibrary
from rkstream.engines.rkllm.structs import CONTINUE, PAUSE, make_run_structs
from rkstream.errors import ChatTemplateError
from rkstream.log import engine_log
from rkstream.resources import cache_dir


@dataclass(frozen=True)
class SystemBlock:
    """The rendered system block and the file its prompt cache goes to."""

    text: str
    path: Path


@dataclass(frozen=True)
class LoadedCache:
    """A prompt cache loaded into one handle."""

    text: str
    tokens: int


def system_block(fmt: ChatFormat, system_prompt: str, *,
                 enable_thinking: bool | None = None) -> tuple[str | None, str]:
    """The text every conversation with ``system_prompt`` (and no system
    message of its own) starts with, up to the end of the system block; or
    None and why not.

    It is the longest common prefix of two one-turn conversations, cut back
    to just after the last end-of-turn marker (and its newline): a cut at a
    special token, so the runtime tokenizes the rest the same way.
    """
    def render(text: str) -> str:
        return fmt.render((Message("user", (TextPart(text),)),), system_prompt,
                          enable_thinking=enable_thinking)

    try:
        a, b = render("a"), render("b")
    except ChatTemplateError as exc:
        return None, f"the chat format cannot render a system prompt: {exc}"
    shared = a[:common_prefix(a, b)]
    eot = fmt.end_of_turn
    end = shared.rfind(eot) if eot else -1
    if end < 0:
        return None, ("the chat format has no system block of its own (it puts the system "
                      "prompt inside the first user turn)")
    end += len(eot)
    if shared.startswith("\n", end):
        end += 1
    text = shared[:end]
    if system_prompt.strip() not in text:
        return None, "the chat format's system block does not hold the system prompt"
    if IMAGE_PLACEHOLDER in text:
        return None, f"the system prompt holds {IMAGE_PLACEHOLDER}"
    return text, "ok"


def cache_file(model_path: str, line: str, text: str, folder: Path | None = None) -> Path:
    """Where the prompt cache of ``text`` for this model and runtime line goes."""
    digest = hashlib.sha256("\0".join((model_path, line, text)).encode()).hexdigest()[:24]
    return (folder or cache_dir() / "prompt-cache") / f"system-{digest}.bin"


def plan_system_cache(fmt: ChatFormat | None, system_prompt: str, model_path: str,
                      line: str, *, enable_thinking: bool | None = None) -> SystemBlock | None:
    """The system block each instance caches at load, or None (with a warning why not)."""
    if not system_prompt:
        engine_log.warning("[chat] cache_system_prompt is on but [chat] system_prompt is "
                           "empty; there is nothing to cache")
        return None
    if fmt is None:
        engine_log.warning("[chat] cache_system_prompt needs a chat format; the runtime's own "
                           "template is in use, so the system prompt is not cached")
        return None
    text, why = system_block(fmt, system_prompt, enable_thinking=enable_thinking)
    if text is None:
        engine_log.warning("system prompt not cached: %s", why)
        return None
    return SystemBlock(text, cache_file(model_path, line, text))


class PrefillOnly:
    """The callbacks of the save run: pause at the first token, so nothing is
    generated beyond it; keep FINISH's prefill count."""

    def __init__(self, abi: Any) -> None:
        self._abi = abi
        self.generated = 0
        self.prefill_tokens = 0
        self.error = False

    def on_step(self, result: Any, state: int) -> int:
        abi = self._abi
        if state == abi.RKLLM_RUN_NORMAL or state == abi.RKLLM_RUN_WAITING:
            self.generated += 1
            return PAUSE
        if state == abi.RKLLM_RUN_FINISH:
            self.prefill_tokens = int(result.contents.perf.prefill_tokens)
        elif state == abi.RKLLM_RUN_ERROR:
            self.error = True
        return CONTINUE


def save_and_load(runtime: RuntimeLibrary, handle: Any, block: SystemBlock,
                  steps: PrefillOnly, settings: RKLLMSettings,
                  defaults: SamplingDefaults) -> LoadedCache | None:
    """Prefill ``block`` once into its file, clear the KV cache, load the file.

    Runs on the handle's owner thread, with ``steps`` receiving the callbacks.
    Returns None (after a warning) when any step fails; the KV cache is then
    cleared all the same.
    """
    fns = runtime.functions
    try:
        block.path.parent.mkdir(parents=True, exist_ok=True)
        block.path.unlink(missing_ok=True)  # a stale file must not pass for a new one
    except OSError as exc:
        engine_log.warning("system prompt not cached: cannot prepare %s: %s", block.path, exc)
        return None
    # max_tokens 1 as well as the pause: on 1.3 the runtime stops by itself.
    sampling = SamplingSettings(
        max_tokens=1, temperature=defaults.temperature, top_p=defaults.top_p,
        top_k=defaults.top_k, repeat_penalty=defaults.repeat_penalty,
        frequency_penalty=defaults.frequency_penalty, presence_penalty=defaults.presence_penalty)
    structs = make_run_structs(runtime, block.text, "user", sampling, settings,
                               save_prompt_cache=str(block.path))
    ret = fns.rkllm_run(handle, ctypes.byref(structs.input), ctypes.byref(structs.infer), None)
    held = ctypes.c_int(0)
    if fns.rkllm_get_kv_cache_size(handle, ctypes.byref(held)) != 0:
        held.value = 0
    fns.rkllm_clear_kv_cache(handle, 0, None, None)
    if ret != 0 or steps.error:
        engine_log.warning("system prompt not cached: the prefill run failed (rkllm_run "
                           "returned %d); see the runtime's message above", ret)
        return None
    if not block.path.is_file():
        engine_log.warning("system prompt not cached: the runtime wrote no prompt cache to %s",
                           block.path)
        return None
    ret = fns.rkllm_load_prompt_cache(handle, str(block.path).encode())
    if ret != 0:
        engine_log.warning("system prompt not cached: rkllm_load_prompt_cache(%s) returned %d",
                           block.path, ret)
        return None
    # FINISH's count; else what the cache held less the token generated before the pause.
    tokens = steps.prefill_tokens or max(0, held.value - steps.generated)
    return LoadedCache(block.text, tokens)


def cached_tokens(cache: LoadedCache | None, plan: KVPlan) -> int:
    """Tokens of ``plan``'s prompt the loaded prompt cache covers: only for a run
    whose input starts the KV cache (after a clear, into an empty cache, or with
    ``keep_history = 0``, which the runtime matches from the start)."""
    if cache is None:
        return 0
    starts_cache = plan.clear or not plan.keep_history or plan.reused == 0
    return cache.tokens if starts_cache and plan.send.startswith(cache.text) else 0
