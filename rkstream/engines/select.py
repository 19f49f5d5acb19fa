"""Which engine serves the model: ``engine = "auto" | "rkllm" | "llamacpp"``.

auto picks RKLLM when an .rkllm model is configured and it and the runtime
library load, and llama.cpp otherwise, and says why in the log.
"""

from __future__ import annotations

from rkstream.config import Settings
from rkstream.core.embeddings import ImageTags
from rkstream.engines.base import Engine
from rkstream.errors import RkstreamError
from rkstream.log import engine_log


def choose_engine(settings: Settings) -> tuple[str, str]:
    """Return ``(engine, reason)``; may load the runtime library (blocking)."""
    if settings.engine != "auto":
        return settings.engine, f'engine = "{settings.engine}" in the configuration'
    rk = settings.rkllm
    if not rk.model:
        return "llamacpp", "no .rkllm model is configured (rkllm.model is empty)"
    from rkstream.engines.rkllm.loader import check_model_file, load_runtime

    try:
        check_model_file(rk.model)
        runtime = load_runtime(rk.library or None, rk.runtime)  # type: ignore[arg-type]
    except RkstreamError as exc:
        return "llamacpp", f"the RKLLM runtime cannot be used: {exc}"
    return "rkllm", f"{runtime.path} (runtime {runtime.version or runtime.line}) and {rk.model}"


def make_engine(settings: Settings, image_tags: ImageTags | None = None) -> Engine:
    """Build (not load) the engine the settings ask for.

    ``image_tags`` are the vision encoder's tags (None without an encoder);
    the RKLLM engine needs them at init, llama.cpp does not use them.
    """
    kind, reason = choose_engine(settings)
    log = engine_log.warning if settings.engine == "auto" and settings.rkllm.model and (
        kind == "llamacpp") else engine_log.info
    log("engine %s: %s", kind, reason)
    if kind == "rkllm":
        from rkstream.engines.rkllm.engine import RKLLMEngine

        return RKLLMEngine(settings, image_tags)
    from rkstream.engines.llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine(settings)
