"""The default ``config.toml``, written from the settings schema in rkstream.config.

One source: the repository's config.toml is this text (a test checks it), and
``rkstream config --default`` prints it, so an installed rkstream needs no clone.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import fields, is_dataclass
from typing import Any

from rkstream.config import Settings
from rkstream.config.settings import ModelEntry

HEADER = """\
# rkstream's configuration: every key at its built-in default. Every key is
# optional; keep only the ones you change. `rkstream config` prints each key
# with its effective value. RKSTREAM_* variables and command-line flags
# override this file (see README.md, "Configuration").
#
# Generated from the settings in rkstream/config/ by
# `rkstream config --default`; a test keeps the repository's copy in step.
"""
WIDTH = 88


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (the setting types: bool, int, float, str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are a subset of TOML's basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no TOML form for {value!r}")


def _allowed(meta: Any) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(toml_value(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    if lo is not None:
        return f"at least {lo}"
    return ""


def _key_lines(name: str, value: Any, meta: Any) -> list[str]:
    comment = textwrap.wrap(meta["help"], WIDTH - 2, break_long_words=False,
                            break_on_hyphens=False)
    allowed = _allowed(meta)
    if allowed:
        # Kept whole, at the end of the last line if it fits.
        suffix = f"[{allowed}]"
        if len(comment[-1]) + 1 + len(suffix) <= WIDTH - 2:
            comment[-1] += " " + suffix
        else:
            comment += textwrap.wrap(suffix, WIDTH - 2, break_long_words=False,
                                     break_on_hyphens=False)
    return [*(f"# {line}" for line in comment), f"{name} = {toml_value(value)}"]


def _models_example() -> list[str]:
    """The [models.<name>] table, commented out: every key of an entry."""
    lines = ["# More models, each served under its name and loaded when a request names it",
             "# (README, \"Several models\"). Quote a name with a dot: [models.\"qwen2.5\"].",
             "# Every key of an entry, at its default:", "#", "# [models.coder]"]
    entry = ModelEntry()
    for n, f in enumerate(fields(entry)):
        lines += ["#"] * (n > 0) + [
            f"# {line}" for line in _key_lines(f.name, getattr(entry, f.name), f.metadata)]
    return lines


def default_config_text() -> str:
    """The commented default config.toml, every key at its default."""
    defaults = Settings()
    top: list[str] = []
    tables: list[str] = []
    for f in fields(defaults):
        value = getattr(defaults, f.name)
        if isinstance(value, dict):
            tables += ["", *_models_example()]
        elif is_dataclass(value):
            tables += ["", f"[{f.name}]"]
            for n, inner in enumerate(fields(value)):
                tables += [""] * (n > 0) + _key_lines(
                    inner.name, getattr(value, inner.name), inner.metadata)
        else:
            top += ["", *_key_lines(f.name, value, f.metadata)]
    return HEADER + "\n".join(top + tables) + "\n"
