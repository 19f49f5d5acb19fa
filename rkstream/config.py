"""Typed settings: defaults, then config.toml, then RKSTREAM_* variables, then CLI.

Each field carries its description and what is allowed, so one definition
documents, validates and sets the default. A bad value is refused at start
with a ConfigError naming the key (``section.key``) and what is allowed.

Text settings with a shape of their own (``vision.mean``, origin and key
lists, the host) carry a ``parse`` hook in their metadata: it checks the text
when the settings load, and :func:`parsed` gives callers the structured value
(``(r, g, b)``, a tuple of origins) so none of them parses or checks again.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from rkstream.errors import ConfigError
from rkstream.vision.presets import PRESETS, VisionPreset, preset_with_overrides, rgb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older board images
    import tomli as tomllib


# A parse hook takes a value that has passed the type check and returns its
# structured form, or raises ValueError saying what is wrong with it.
Parse = Callable[[Any], Any]


def _opt(default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
         minimum: float | None = None, maximum: float | None = None,
         parse: Parse | None = None, allowed: str | None = None) -> Any:
    """A setting; ``allowed`` says in words what ``parse`` accepts."""
    return field(default=default, metadata={
        "help": help, "choices": choices, "min": minimum, "max": maximum,
        "parse": parse, "allowed": allowed})


def _rgb(text: str, *, std: bool) -> tuple[float, float, float] | None:
    if not text.strip():
        return None  # the preset's own
    numbers: list[float] = []
    for part in text.split(","):
        try:
            numbers.append(float(part))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number") from None
    return rgb(numbers, std=std)  # the vision presets' own rule


def parse_mean(text: str) -> tuple[float, float, float] | None:
    """``"r,g,b"`` in 0-255 units; None for empty (the preset's)."""
    return _rgb(text, std=False)


def parse_std(text: str) -> tuple[float, float, float] | None:
    """``"r,g,b"`` above 0 and at most 255 (a division); None for empty."""
    return _rgb(text, std=True)


def _items(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if text and not items:
        # "," or " " would look set but mean "none": refuse rather than guess.
        raise ValueError("it lists nothing")
    return items


# scheme://host[:port]; a path never matches a browser's Origin header.
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]+")


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins (a trailing / dropped), or ``*``; () for empty."""
    origins = tuple(item.rstrip("/") for item in _items(text))
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin")
    return origins


def parse_api_keys(text: str) -> tuple[str, ...]:
    """Comma-separated keys of visible ASCII (they travel in HTTP headers and URLs)."""
    keys = _items(text)
    for key in keys:
        if not re.fullmatch(r"[!-~]+", key):
            raise ValueError("a key has a space or a character outside visible ASCII")
    return keys


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_host(text: str) -> str:
    """A host name or IP address to bind; empty = every interface (as asyncio)."""
    if not text:
        return text
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise ValueError("it is not a host name or IP address")
    return text


_ORIGINS_ALLOWED = ("comma-separated origins such as \"https://app.example,"
                    "http://localhost:3000\" (scheme://host[:port], no path), or *")
_RGB_EXAMPLE = "such as \"127.5,127.5,127.5\" (empty = preset)"


@dataclass(frozen=True)
class ServerSettings:
    host: str = _opt("0.0.0.0", "address to listen on (0.0.0.0 = every interface)",
                     parse=parse_host, allowed="a host name or IP address, without scheme "
                                               "or port")
    port: int = _opt(8080, "TCP port", minimum=0, maximum=65535)
    heartbeat_s: float = _opt(20.0, "WebSocket ping interval; a peer silent for half of it "
                                    "after a ping is dropped (0 = off)", minimum=0)
    slow_client_timeout_s: float = _opt(
        10.0, "a client that has not read what was sent to it for this long is dropped "
              "and its requests cancelled", minimum=0.1)
    max_outbound_bytes: int = _opt(
        8 << 20, "bytes waiting to be sent to one client before it is dropped as too slow",
        minimum=4096)
    shutdown_timeout_s: float = _opt(5.0, "how long shutdown waits for handlers", minimum=0)
    static_dir: str = _opt("", "folder served at / (empty = the repository's static/)")
    cors_origins: str = _opt("", "origins allowed to call the HTTP APIs from a browser: "
                                 "comma-separated, or * for any; empty = none",
                             parse=parse_origins, allowed=_ORIGINS_ALLOWED)
    api_keys: str = _opt("", "comma-separated API keys required on /ws and the HTTP APIs; "
                             "empty = no key needed",
                         parse=parse_api_keys,
                         allowed="comma-separated keys of visible ASCII characters, no "
                                 "spaces (empty = no key needed)")
    allowed_origins: str = _opt("", "web pages (origins) besides the server's own that may "
                                    "open /ws from a browser: comma-separated, or *",
                                parse=parse_origins, allowed=_ORIGINS_ALLOWED)


@dataclass(frozen=True)
class RKLLMSettings:
    library: str = _opt("", "path of librkllmrt.so (empty = lib/, then the system path)")
    runtime: str = _opt("auto", "runtime ABI line of the library",
                        choices=("auto", "1.3", "1.2"))
    model: str = _opt("", "path of the .rkllm language model")
    max_context_len: int = _opt(4096, "context window in tokens", minimum=32,
                                maximum=1 << 17)
    max_new_tokens: int = _opt(2048, "init-time cap on generated tokens per run",
                               minimum=1, maximum=1 << 17)
    n_keep: int = _opt(-1, "KV entries kept when the window shifts (-1 = runtime default)",
                       minimum=-1)
    base_domain_id: int = _opt(-1, "NPU memory domain; -1 = auto: 1 when a vision encoder "
                                   "shares the process (as the official demo on RK3588), "
                                   "else 0", minimum=-1, maximum=15)
    embed_flash: bool = _opt(True, "keep the embedding table in the model file, not in RAM")
    enabled_cpus_num: int = _opt(4, "CPU threads the runtime may use", minimum=1, maximum=8)
    enabled_cpus_mask: int = _opt(0xF0, "CPU bitmask (0xF0 = the A76 cores of RK3588)",
                                  minimum=0, maximum=0xFF)
    skip_special_token: bool = _opt(True, "do not emit special tokens as text")
    mirostat: int = _opt(0, "0 off, 1 mirostat, 2 mirostat 2.0", choices=(0, 1, 2))
    mirostat_tau: float = _opt(5.0, "mirostat target entropy", minimum=0)
    mirostat_eta: float = _opt(0.1, "mirostat learning rate", minimum=0)


@dataclass(frozen=True)
class LlamaCppSettings:
    model: str = _opt("", "path of a .gguf model (empty = the bundled SmolLM2-135M-Instruct)")
    n_ctx: int = _opt(4096, "context window in tokens (0 = the model's own)", minimum=0,
                      maximum=1 << 18)
    n_batch: int = _opt(512, "prompt tokens evaluated per batch", minimum=1, maximum=1 << 16)
    n_threads: int = _opt(0, "CPU threads (0 = llama.cpp's choice)", minimum=0, maximum=256)
    seed: int = _opt(0xFFFFFFFF, "sampling seed (4294967295 = random)", minimum=0,
                     maximum=0xFFFFFFFF)


@dataclass(frozen=True)
class VisionSettings:
    encoder: str = _opt("", "vision encoder: a .rknn file (board) or .onnx file (anywhere); "
                            "empty = no vision")
    preset: str = _opt("qwen2-vl", "model family: image tags, pad colour, ONNX mean/std",
                       choices=tuple(PRESETS))
    image_start: str = _opt("", "override the preset's image start tag (empty = preset)")
    image_end: str = _opt("", "override the preset's image end tag (empty = preset)")
    image_content: str = _opt("", "override the preset's image content tag (empty = preset)")
    background: float = _opt(-1.0, "pad colour 0-255 (negative = preset)", minimum=-1,
                             maximum=255)
    mean: str = _opt("", "ONNX input mean per channel, 0-255, as \"r,g,b\" (empty = preset)",
                     parse=parse_mean,
                     allowed="three comma-separated numbers from 0 to 255, " + _RGB_EXAMPLE)
    std: str = _opt("", "ONNX input std per channel, 0-255, as \"r,g,b\" (empty = preset)",
                    parse=parse_std,
                    allowed="three comma-separated numbers above 0 and at most 255, "
                            + _RGB_EXAMPLE)
    size: int = _opt(0, "encoder input size when the model file does not fix it "
                        "(0 = preset)", minimum=0, maximum=4096)
    core_mask: str = _opt("2", "NPU cores for the RKNN encoder (2 = the core an LLM "
                               "converted with num_npu_core=2 leaves free)",
                          choices=("auto", "0", "1", "2", "0_1", "0_1_2", "all"))
    threads: int = _opt(0, "ONNX Runtime threads (0 = its default)", minimum=0, maximum=64)
    cache_bytes: int = _opt(64 << 20, "embedding cache size; repeated images encode once",
                            minimum=0)
    max_image_pixels: int = _opt(4096 * 4096, "largest image accepted (decompression "
                                                "bombs are refused)", minimum=1)
    encode_ahead: bool = _opt(True, "encode the newest camera frame while the model is busy")


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = _opt(512, "tokens generated when a request does not say",
                           minimum=1, maximum=1 << 17)
    temperature: float = _opt(0.8, "default temperature", minimum=0, maximum=5)
    top_p: float = _opt(0.9, "default nucleus sampling mass", minimum=0, maximum=1)
    top_k: int = _opt(1, "default top-k (1 = greedy, as the official demos)", minimum=0)
    repeat_penalty: float = _opt(1.1, "default repeat penalty", minimum=0, maximum=10)
    frequency_penalty: float = _opt(0.0, "default frequency penalty", minimum=-2, maximum=2)
    presence_penalty: float = _opt(0.0, "default presence penalty", minimum=-2, maximum=2)


@dataclass(frozen=True)
class LimitSettings:
    max_message_bytes: int = _opt(8 << 20, "largest WebSocket message accepted; larger "
                                           "closes the socket with 1009",
                                  minimum=1024, maximum=1 << 30)
    max_queue: int = _opt(32, "requests waiting for a model instance; more fail with "
                              "queue_full", minimum=0)
    max_inflight_per_connection: int = _opt(8, "open requests (queued or running) per "
                                               "connection", minimum=1)
    max_tokens: int = _opt(4096, "largest max_tokens a request may ask for",
                           minimum=1, maximum=1 << 17)
    max_images_per_request: int = _opt(4, "images one request may carry", minimum=0)
    max_connections_per_address: int = _opt(16, "open WebSocket connections per client "
                                                "address", minimum=1)
    request_timeout_s: float = _opt(600.0, "a request running longer is stopped "
                                           "(code request_timeout); 0 = never", minimum=0)
    idle_timeout_s: float = _opt(900.0, "a WebSocket with no open request and no message "
                                        "for this long is closed; 0 = never", minimum=0)


@dataclass(frozen=True)
class BoardSettings:
    pin_frequencies: bool = _opt(False, "pin NPU, DDR and CPU clocks to their top speed at "
                                        "start (needs root; logs what changed)")


@dataclass(frozen=True)
class Settings:
    engine: str = _opt("auto", "which engine runs the model: auto = rkllm when its library "
                               "and .rkllm model load, else llamacpp",
                       choices=("auto", "rkllm", "llamacpp"))
    instances: int = _opt(1, "model instances (native handles, one owner thread each)",
                          minimum=1, maximum=16)
    log_level: str = _opt("info", "log level",
                          choices=("debug", "info", "warning", "error"))
    log_format: str = _opt("text", "log lines as plain text or one JSON object each",
                           choices=("text", "json"))
    server: ServerSettings = field(default_factory=ServerSettings)
    rkllm: RKLLMSettings = field(default_factory=RKLLMSettings)
    llamacpp: LlamaCppSettings = field(default_factory=LlamaCppSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    board: BoardSettings = field(default_factory=BoardSettings)


# RKSTREAM_* variables that override one key each.
ENV_KEYS: dict[str, str] = {
    "RKSTREAM_HOST": "server.host",
    "RKSTREAM_PORT": "server.port",
    "RKSTREAM_ENGINE": "engine",
    "RKSTREAM_MODEL": "rkllm.model",
    "RKSTREAM_RKLLM_LIBRARY": "rkllm.library",
    "RKSTREAM_RUNTIME": "rkllm.runtime",
    "RKSTREAM_GGUF": "llamacpp.model",
    "RKSTREAM_VISION_ENCODER": "vision.encoder",
    "RKSTREAM_LOG_LEVEL": "log_level",
    "RKSTREAM_API_KEYS": "server.api_keys",
}


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
        if is_dataclass(current):
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


def _check_together(settings: Settings) -> Settings:
    """Rules between keys, checked once every layer is applied."""
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
            if is_dataclass(value):
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
