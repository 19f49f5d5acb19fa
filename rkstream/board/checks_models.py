"""Doctor checks of the model files: the .rkllm LLM, the vision encoder, the GGUF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from rkstream.board.checks_board import size_text
from rkstream.board.checks_libs import split_message
from rkstream.board.report import Check, Status
from rkstream.chat.format import resolve_chat_format
from rkstream.config import Settings
from rkstream.engines.llamacpp.model import resolve_model
from rkstream.engines.rkllm.loader import check_model_file
from rkstream.errors import ChatTemplateError, ConfigError, ModelFileError

EncoderKind = Literal["rknn", "onnx"]

_ONNX_FIRST_BYTE = 0x08  # protobuf tag of ModelProto.ir_version, first in every export


def _head(path: Path, size: int = 4) -> bytes:
    """The first bytes of a file (b"" if it cannot be read)."""
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_rkllm_model(settings: Settings, mem_available: int | None, rockchip: bool,
                      encoder: Path | None) -> Check:
    """``rkllm.model``: present, readable, an .rkllm file, and fits in free memory.

    Args:
        settings: ``rkllm.model`` and ``engine`` are used.
        mem_available: MemAvailable in bytes, or None if unknown.
        rockchip: whether the board is a Rockchip one (an unset model is then a WARN).
        encoder: the vision encoder file that loads alongside, if any.
    """
    name = "rkllm.model"
    configured = settings.rkllm.model
    if not configured:
        if settings.engine == "rkllm":
            return Check(name, "FAIL", "not set, but engine = rkllm",
                         "set rkllm.model to the path of your .rkllm file")
        if rockchip:
            return Check(name, "WARN", "not set: engine auto will run the CPU engine",
                         "set rkllm.model to a .rkllm file to use the NPU")
        return Check(name, "OK", "not set (the CPU engine serves)")
    try:
        path = check_model_file(configured)
    except ModelFileError as exc:
        return Check(name, "FAIL", *split_message(str(exc)))
    if _head(path) == b"GGUF":
        return Check(name, "FAIL", f"{path} is a GGUF model (llama.cpp), not an .rkllm model",
                     "set it as llamacpp.model (engine = llamacpp), or give the .rkllm file "
                     "converted with rkllm-toolkit")
    size = _size(path)
    detail = f"{path} ({size_text(size)})"
    need = size + (_size(encoder) if encoder is not None else 0)
    if mem_available is not None and need > mem_available:
        with_encoder = " with the vision encoder" if encoder is not None else ""
        return Check(name, "WARN", f"{detail}: needs {size_text(need)}{with_encoder}, but only "
                     f"{size_text(mem_available)} of memory is available",
                     "loading may fail to allocate memory or be killed: stop other programs, "
                     "or use a smaller model")
    return Check(name, "OK", detail)


def encoder_kind(path: Path) -> EncoderKind | None:
    """Tell an RKNN from an ONNX encoder by its first bytes (None: neither)."""
    head = _head(path)
    if head == b"RKNN":
        return "rknn"
    if path.suffix.lower() == ".onnx" or head[:1] == bytes([_ONNX_FIRST_BYTE]):
        return "onnx"
    return None


def check_vision_encoder(settings: Settings) -> tuple[Check, Path | None, EncoderKind | None]:
    """``vision.encoder``: present and an RKNN or ONNX model.

    Returns:
        The check, the encoder file (None if unset or unusable) and its kind.
    """
    name = "vision.encoder"
    configured = settings.vision.encoder
    if not configured:
        return Check(name, "OK", "not set (no image input)"), None, None
    path = Path(configured).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        return Check(name, "FAIL", f"{path} {what}", "set vision.encoder to the .rknn or "
                     ".onnx file of your model's vision encoder, or leave it empty"), None, None
    if not _head(path):
        return Check(name, "FAIL", f"{path} is empty or cannot be read",
                     "make the file readable, or copy it again"), None, None
    kind = encoder_kind(path)
    if kind is None:
        hint = " (it looks like the .rkllm language model)" if path.suffix == ".rkllm" else ""
        return Check(name, "FAIL", f"{path} is neither an RKNN nor an ONNX model{hint}",
                     "give the vision encoder converted with rknn-toolkit2 (.rknn) or "
                     "exported to .onnx"), None, None
    detail = f"{path} ({kind.upper()}, {size_text(_size(path))})"
    if kind == "rknn" and settings.rkllm.model and settings.rkllm.base_domain_id == 0:
        return Check(name, "WARN", detail + "; rkllm.base_domain_id = 0 while it shares the "
                     "NPU with the LLM", "leave rkllm.base_domain_id = -1 (auto: 1 when an "
                     "encoder shares the process); with 0 the encoder's NPU memory "
                     "allocation can fail"), path, kind
    return Check(name, "OK", detail), path, kind


def check_gguf_model(settings: Settings, bundled: Callable[[], Path | None]) -> Check:
    """``llamacpp.model`` (or the bundled SmolLM2 GGUF) for the CPU engine.

    Args:
        settings: ``llamacpp.model`` and ``engine`` are used.
        bundled: finds the bundled GGUF (None if ``rkstream setup`` has not run).
    """
    name = "llamacpp.model"
    missing: Status = "FAIL" if settings.engine == "llamacpp" else "WARN"
    configured = settings.llamacpp.model
    if configured:
        try:
            path = resolve_model(configured)
        except (ModelFileError, OSError) as exc:
            detail, fix = split_message(str(exc))
            return Check(name, missing, detail, fix or "set llamacpp.model to a .gguf file")
        return Check(name, "OK", f"{path} ({size_text(_size(path))})")
    found = bundled()
    if found is None:
        return Check(name, missing, "not set, and the bundled SmolLM2-135M is not installed",
                     "run `rkstream setup`, or set llamacpp.model to a .gguf file")
    return Check(name, "OK", f"bundled SmolLM2-135M-Instruct ({found})")


def check_chat_format(settings: Settings) -> Check | None:
    """``chat``: the format conversations are rendered in on the NPU (None without a
    .rkllm model: the CPU engine uses its GGUF's own template)."""
    if not settings.rkllm.model:
        return None
    chat = settings.chat
    try:
        fmt, reason = resolve_chat_format(chat.template, chat.family, settings.rkllm.model)
    except (ConfigError, ChatTemplateError) as exc:
        return Check("chat format", "FAIL", str(exc),
                     "fix [chat] template, or set [chat] family to a built-in family")
    if fmt is None:
        return Check("chat format", "WARN", reason,
                     "set [chat] family (qwen2, qwen3, llama3, ...) or [chat] template to the "
                     "model's tokenizer_config.json, so conversations keep their roles and "
                     "follow-up turns reuse the KV cache")
    return Check("chat format", "OK",
                 f"{reason}; check once on the board that the runtime passes it through: "
                 "RKLLM_LOG_LEVEL=2 rkstream serve logs each run's final prompt text, which "
                 "must be the rendered prompt with no second template around it")
