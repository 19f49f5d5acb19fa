"""Loading: defaults, then config.toml, then RKSTREAM_* variables, then flags;
every value checked, with the key named in the refusal."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from rkstream.config.settings import ENV_KEYS, ModelEntry, Settings, VisionSettings
from rkstream.config.values import MODEL_NAME
from rkstream.errors import ConfigError
from rkstream.vision.presets import VisionPreset, preset_with_overrides

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older board images
    import tomli as tomllib

def _describe(f: Any) -> str:
    meta = f.metadata
    if meta.get("allowed"):
        return str(meta["allowed"])
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[
        _field_type(f)]
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        return f"{kind} of at least {lo}"
    return kind


def _field_type(f: Any) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[str(f.type)]


def _check(key: str, f: Any, value: Any, *, from_text: bool) -> Any:
    kind = _field_type(f)
    if from_text and isinstance(value, str) and kind is not str:
        value = _from_text(key, f, value)
    ok = (
        isinstance(value, bool) if kind is bool
        else isinstance(value, str) if kind is str
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        and (kind is float or isinstance(value, int))
    )
    if not ok:
        raise ConfigError(f"config: {key} = {value!r} is not allowed; use {_describe(f)}")
    if kind is float:
        value = float(value)
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"config: {key} = {value!r} is not allowed; use {_describe(f)}")
    if (meta.get("min") is not None and value < meta["min"]) or (
        meta.get("max") is not None and value > meta["max"]
    ):
        raise ConfigError(f"config: {key} = {value!r} is out of range; use {_describe(f)}")
    _parse(key, f, value)
    return value


def _parse(key: str, f: Any, value: Any) -> Any:
    parse = f.metadata.get("parse")
    if parse is None:
        return value
    try:
        return parse(value)
    except ValueError as exc:
        raise ConfigError(
            f"config: {key} = {value!r} is not allowed ({exc}); use {_describe(f)}") from None


def _field_at(key: str) -> Any:
    obj: Any = Settings()
    *sections, name = key.split(".")
    if sections[:1] == ["models"]:  # models.<name>.<key>: the entry's fields
        obj, sections = ModelEntry(), []
    for section in sections:
        obj = getattr(obj, section)
    return {f.name: f for f in fields(obj)}[name]


def parsed(key: str, value: Any) -> Any:
    """The structured form of setting ``key`` (e.g. ``"vision.mean"`` ->
    ``(r, g, b)`` or None): what its parse hook returns, else ``value``.

    Raises:
        ConfigError: naming the key, for a value load_settings refuses too
            (settings built in code with ``replace`` skip load_settings).
    """
    return _parse(key, _field_at(key), value)


def _from_text(key: str, f: Any, text: str) -> Any:
    kind = _field_type(f)
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    else:
        try:
            return int(text, 0) if kind is int else float(text)
        except ValueError:
            pass
    raise ConfigError(f"config: {key} = {text!r} is not allowed; use {_describe(f)}")


def _apply_models(current: dict[str, ModelEntry], data: Any, *, from_text: bool
                  ) -> dict[str, ModelEntry]:
    if not isinstance(data, Mapping):
        raise ConfigError("config: models must be a table of [models.<name>] entries")
    out = dict(current)
    for name, table in data.items():
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(
                f"config: [models.{name}]: a model name is letters, digits and . _ : / + -, "
                "starting with a letter or digit, at most 128 characters")
        if not isinstance(table, Mapping):
            raise ConfigError(f"config: models.{name} must be a table [models.{name}]")
        out[name] = _apply(out.get(name, ModelEntry()), table, f"models.{name}.",
                           from_text=from_text)
    return out


def _apply(obj: Any, data: Mapping[str, Any], prefix: str, *, from_text: bool) -> Any:
    by_name = {f.name: f for f in fields(obj)}
    changes: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        f = by_name.get(name)
        if f is None:
            raise ConfigError(
                f"config: unknown key {key}; known keys here: " + ", ".join(by_name))
        current = getattr(obj, name)
        if isinstance(current, dict):
            changes[name] = _apply_models(current, value, from_text=from_text)
        elif is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config: {key} must be a table [{key}]")
            changes[name] = _apply(current, value, f"{key}.", from_text=from_text)
        else:
            changes[name] = _check(key, f, value, from_text=from_text)
    return replace(obj, **changes)


def _nest(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _overlay(settings: Settings, overrides: Mapping[str, str]) -> Settings:
    for key, text in overrides.items():
        settings = _apply(settings, _nest(key, text), "", from_text=True)
    return settings


def entry_engine(name: str, entry: ModelEntry) -> str:
    """``rkllm`` or ``llamacpp``: the entry's engine, by its file's extension for auto.

    Raises:
        ConfigError: auto with a file that is neither .rkllm nor .gguf.
    """
    if entry.engine != "auto":
        return entry.engine
    suffix = Path(entry.model).suffix.lower()
    if suffix in (".rkllm", ".gguf"):
        return "rkllm" if suffix == ".rkllm" else "llamacpp"
    raise ConfigError(
        f"config: models.{name}.model = {entry.model!r}: engine auto needs a .rkllm or .gguf "
        f"file; set models.{name}.engine to \"rkllm\" or \"llamacpp\"")


def _check_models(settings: Settings) -> None:
    for name, entry in settings.models.items():
        if not entry.model:
            raise ConfigError(f"config: [models.{name}] has no model file; set "
                              f"models.{name}.model to a .rkllm or .gguf path")
        entry_engine(name, entry)
    default = settings.pool.default_model
    if default and default not in settings.models:
        known = ", ".join(settings.models) or "none are configured"
        raise ConfigError(f"config: pool.default_model = {default!r} names no [models.<name>] "
                          f"entry (entries: {known})")


def _check_together(settings: Settings) -> Settings:
    """Rules between keys, checked once every layer is applied."""
    _check_models(settings)
    if bool(settings.server.tls_cert) != bool(settings.server.tls_key):
        empty = "server.tls_key" if settings.server.tls_cert else "server.tls_cert"
        raise ConfigError(f"config: {empty} is empty, but server.tls_cert and server.tls_key "
                          "go together: set both (PEM files) for https, or neither for http")
    default, cap = settings.sampling.max_tokens, settings.limits.max_tokens
    if default > cap:
        # Otherwise every request that does not name max_tokens is refused.
        raise ConfigError(
            f"config: sampling.max_tokens = {default} is above limits.max_tokens = {cap}; "
            "the default must be at most the cap: lower sampling.max_tokens or raise "
            "limits.max_tokens")
    return settings


def with_overrides(settings: Settings, overrides: Mapping[str, str]) -> Settings:
    """Apply ``section.key -> text`` overrides (environment or CLI).

    Raises:
        ConfigError: a key is unknown or a value is refused.
    """
    return _check_together(_overlay(settings, overrides))


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings rkstream starts with.

    Args:
        path: a config.toml; None = ``RKSTREAM_CONFIG`` or no file.
        overrides: ``section.key -> value text`` from the command line; last word.
        environ: the environment to read RKSTREAM_* from (default os.environ).

    Raises:
        ConfigError: the file cannot be read or parsed, or a value is refused.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("RKSTREAM_CONFIG"):
        path = env["RKSTREAM_CONFIG"]
    settings = Settings()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
        settings = _apply(settings, data, "", from_text=False)
    env_overrides = {key: env[name] for name, key in ENV_KEYS.items() if env.get(name)}
    settings = _overlay(settings, env_overrides)
    return _check_together(_overlay(settings, overrides or {}))


def describe_settings() -> list[tuple[str, str, str]]:
    """(key, default, description) of every setting, for docs and ``--help``."""
    rows: list[tuple[str, str, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, dict):
                walk(ModelEntry(), f"{prefix}{f.name}.<name>.")
            elif is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", repr(value), f.metadata["help"]))

    walk(Settings(), "")
    return rows


def vision_preset(settings: VisionSettings) -> VisionPreset:
    """The configured preset with any [vision] overrides applied.

    Loaded settings were checked by load_settings, so this does not fail for
    them; settings built in code are refused with the same ConfigError.
    """
    overrides: dict[str, object] = {}
    for key in ("image_start", "image_end", "image_content"):
        value = getattr(settings, key)
        if value:
            overrides[key] = value
    if settings.background >= 0:
        overrides["background"] = settings.background
    for key in ("mean", "std"):
        # Checked when the settings loaded; parsed() refuses, with the key named,
        # only settings built in code past load_settings.
        rgb = parsed(f"vision.{key}", getattr(settings, key))
        if rgb is not None:
            overrides[key] = rgb
    if settings.size:
        overrides["size"] = settings.size
    return preset_with_overrides(settings.preset, overrides)
