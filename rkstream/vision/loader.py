"""Pick and load the right vision encoder for a model file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rkstream.errors import ConfigError, ModelFileError
from rkstream.vision.encoder import VisionEncoder
from rkstream.vision.presets import VisionPreset

KINDS = ("auto", "onnx", "rknn")
RKNN_MAGIC = b"RKNN"


def load_encoder(path: str, preset: VisionPreset, *, kind: str = "auto",
                 core_mask: str = "auto", threads: int = 0,
                 rknnlite_factory: Callable[[], Any] | None = None) -> VisionEncoder:
    """Load a vision encoder, choosing the backend from the file.

    With ``kind="auto"`` a file starting with ``b"RKNN"`` runs on the NPU
    (:class:`RknnEncoder`); an ``.onnx`` file, or any file ONNX can parse, runs
    on ONNX Runtime (:class:`OnnxEncoder`).

    Args:
        path: the encoder model file (``~`` is expanded).
        preset: tags, normalisation and default size of the model family.
        kind: ``"auto"``, ``"onnx"`` or ``"rknn"`` (skip detection).
        core_mask: NPU cores for an RKNN encoder (see ``rknn_encoder.CORE_MASKS``).
        threads: ONNX Runtime intra-op threads (0 = its default).
        rknnlite_factory: makes the RKNNLite object (tests pass a fake).

    Returns:
        The loaded encoder, already warmed up.

    Raises:
        ConfigError: unknown ``kind`` (or a bad setting refused by the encoder).
        ModelFileError: the file is missing, unreadable, or neither RKNN nor ONNX.
        EngineInitError: the backend could not load the model.
        VisionError: code ``vision_unavailable`` when an ``.rknn`` is given but
            rknn-toolkit-lite2 is not installed.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown vision encoder kind {kind!r}; allowed: {', '.join(KINDS)}")
    if not str(path):
        raise ModelFileError("no vision encoder model given; set the vision model path to an "
                             ".rknn file (on the board) or an .onnx file")
    file = Path(path).expanduser()
    if not file.exists():
        raise ModelFileError(
            f"vision encoder model {file} does not exist; set the vision model path to an "
            ".rknn file (on the board) or an .onnx file")
    if not file.is_file():
        raise ModelFileError(f"vision encoder model {file} is not a file; give the path of "
                             "the .rknn or .onnx file itself")
    if kind == "auto":
        kind = _detect(file)
    if kind == "rknn":
        from rkstream.vision.rknn_encoder import RknnEncoder
        return RknnEncoder(file, preset, core_mask=core_mask,
                           rknnlite_factory=rknnlite_factory)
    from rkstream.vision.onnx_encoder import OnnxEncoder
    return OnnxEncoder(file, preset, threads=threads)


def _detect(file: Path) -> str:
    """Return ``"rknn"`` or ``"onnx"`` from the file's content, or refuse it."""
    try:
        with file.open("rb") as stream:
            head = stream.read(len(RKNN_MAGIC))
    except OSError as exc:
        raise ModelFileError(f"cannot read vision encoder model {file}: {exc}") from exc
    if head == RKNN_MAGIC:
        return "rknn"
    if file.suffix.lower() == ".onnx" or _parses_as_onnx(file):
        return "onnx"
    hint = ""
    if file.suffix.lower() == ".rkllm":
        hint = " (it looks like the .rkllm language model)"
    raise ModelFileError(
        f"vision encoder model {file} is neither an RKNN model (starts with b'RKNN') nor an "
        f"ONNX model{hint}; give the vision encoder converted with rknn-toolkit2 (.rknn) or "
        "exported to .onnx")


def _parses_as_onnx(file: Path) -> bool:
    """Whether ONNX can parse the file as a model with a graph input."""
    try:
        import onnx
    except ImportError:
        return False
    try:
        model = onnx.load_model(str(file), load_external_data=False)
    except Exception:  # protobuf DecodeError and friends: not ONNX
        return False
    # Protobuf parses many byte strings "successfully"; a real model has graph inputs.
    return len(model.graph.input) > 0 and len(model.graph.node) > 0
