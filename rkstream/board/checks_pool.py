"""Doctor checks of the model table: every ``[models.<name>]`` entry's files, and
the served models against ``[pool]``'s limits.

The top-level model is checked by :mod:`.checks_models` as before; an entry is
checked the same way, with its own settings, under its own name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rkstream.board.checks_board import size_text
from rkstream.board.checks_models import (
    check_chat_format,
    check_gguf_model,
    check_rkllm_model,
    check_vision_encoder,
)
from rkstream.board.report import Check
from rkstream.config import Settings, parsed
from rkstream.core.keep_alive import describe_keep_alive
from rkstream.errors import ConfigError
from rkstream.models.table import ModelSpec, ModelTable


def _named(check: Check, name: str) -> Check:
    return replace(check, name=name)


def check_entry(spec: ModelSpec, mem_available: int | None, rockchip: bool,
                bundled: Callable[[], Path | None]) -> list[Check]:
    """One ``[models.<name>]`` entry: its model file, encoder and chat format."""
    prefix = f"models.{spec.name}"
    settings = spec.settings
    encoder_check, encoder, _ = check_vision_encoder(settings)
    checks: list[Check] = []
    if spec.engine == "rkllm":
        checks.append(_named(check_rkllm_model(settings, mem_available, rockchip, encoder),
                             f"{prefix}.model"))
        fmt = check_chat_format(settings)
        if fmt is not None:
            checks.append(_named(fmt, f"{prefix} chat format"))
    else:
        checks.append(_named(check_gguf_model(settings, bundled), f"{prefix}.model"))
    if settings.vision.encoder:
        checks.append(_named(encoder_check, f"{prefix}.vision_encoder"))
    return checks


def check_models(settings: Settings, mem_available: int | None, rockchip: bool,
                 bundled: Callable[[], Path | None]) -> list[Check]:
    """The served models in one line, then each entry's files."""
    try:
        table = ModelTable(settings)
    except ConfigError as exc:
        return [Check("models", "FAIL", str(exc), "rename the entry, or set "
                      "pool.default_model")]
    pool = settings.pool
    names = ", ".join(
        f"{spec.name} ({spec.engine}{', default' if spec.default else ''}, kept "
        f"{describe_keep_alive(spec.keep_alive_s)})" for spec in table)
    budget = parsed("pool.memory_budget", pool.memory_budget)
    limits = (f"at most {pool.max_loaded} loaded" if pool.max_loaded else "no count limit") + (
        f", memory budget {size_text(budget)}" if budget is not None else
        ", memory budget 90% of what is available at start")
    summary = Check("models", "OK", f"{len(table)} served: {names}; {limits}")
    too_big = [spec for spec in table if budget is not None and spec.size_bytes() > budget]
    if too_big:
        summary = Check("models", "WARN", summary.detail,
                        "these models cannot load within pool.memory_budget: "
                        + ", ".join(f"{s.name} ({size_text(s.size_bytes())})" for s in too_big)
                        + "; raise the budget or remove them")
    checks = [summary]
    for spec in table:
        if spec.name in settings.models:
            checks += check_entry(spec, mem_available, rockchip, bundled)
    return checks
