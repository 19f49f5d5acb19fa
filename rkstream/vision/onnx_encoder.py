"""Vision encoder on ONNX Runtime (CPU): runs anywhere, used off the board and in tests.

The ONNX export of a vision tower takes normalised float32 NCHW pixels, so this
encoder converts the uint8 NHWC tensor and applies the preset's mean/std
itself (an ``.rknn`` has them baked in instead).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rkstream.errors import ConfigError, EngineInitError, VisionError
from rkstream.vision.encoder import VisionEncoder, interleave
from rkstream.vision.presets import VisionPreset


class OnnxEncoder(VisionEncoder):
    """A vision encoder loaded from an ``.onnx`` file.

    The model must have exactly one input, float32 ``[1, 3, H, W]``. A fixed H/W
    in the file wins; a symbolic one takes ``preset.size``. One warm-up run on
    zeros learns ``n_tokens``, ``width`` and ``n_outputs`` from the real outputs.

    Args:
        path: the ``.onnx`` file.
        preset: tags and normalisation of the model family.
        threads: intra-op threads for ONNX Runtime (0 = its default).

    Raises:
        EngineInitError: onnxruntime is missing, the file does not load, the
            model has another input signature, or the warm-up run fails.
        ConfigError: ``threads`` is negative, or the model leaves H/W open and
            the preset has no ``size``.
    """

    name = "onnx"

    def __init__(self, path: Path, preset: VisionPreset, *, threads: int = 0) -> None:
        if threads < 0:
            raise ConfigError(f"vision threads must be >= 0 (0 = default), got {threads}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineInitError(
                "onnxruntime is not installed; `pip install onnxruntime` to run .onnx vision "
                "encoders (on the board use the .rknn encoder instead)") from exc
        self.preset = preset
        self._path = Path(path)
        self._lock = threading.Lock()
        # Broadcast over the channel (last) axis of NHWC before the transpose.
        self._mean = np.asarray(preset.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.asarray(preset.std, dtype=np.float64)).astype(np.float32)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session: Any = ort.InferenceSession(
                str(self._path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind error classes
            raise EngineInitError(
                f"cannot load the ONNX vision encoder {self._path}: {exc}; check that it is a "
                "complete .onnx export (with its external data files next to it)") from exc
        self._input_name, self.input_size = self._read_input()
        self._warm_up()

    def _read_input(self) -> tuple[str, tuple[int, int]]:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(f"{arg.name} {arg.shape}" for arg in inputs)
            raise EngineInitError(
                f"the ONNX vision encoder {self._path} has {len(inputs)} inputs ({names}); "
                "rkstream feeds one image tensor [1, 3, H, W]. Qwen exports also take "
                "grid_thw: re-export with grid_thw fixed for one image, as the RKNN "
                "conversion does, so that pixel is the only input")
        arg = inputs[0]
        if arg.type != "tensor(float)":
            raise EngineInitError(
                f"the ONNX vision encoder input {arg.name!r} is {arg.type}; expected "
                "tensor(float) with shape [1, 3, H, W] (normalised NCHW pixels)")
        shape = list(arg.shape)
        if len(shape) != 4 or _fixed(shape[1]) not in (None, 3) or _fixed(shape[0]) not in (
                None, 1):
            raise EngineInitError(
                f"the ONNX vision encoder input {arg.name!r} has shape {shape}; expected "
                "[1, 3, H, W] (NCHW, batch 1, RGB)")
        height, width = _fixed(shape[2]), _fixed(shape[3])
        if height is None or width is None:
            if self.preset.size is None:
                raise ConfigError(
                    f"the ONNX vision encoder {self._path} does not fix its input size "
                    f"(shape {shape}) and preset {self.preset.name!r} has no size; set the "
                    "vision preset size (e.g. 448) to the size the model was exported for")
            height = self.preset.size if height is None else height
            width = self.preset.size if width is None else width
        return arg.name, (height, width)

    def _warm_up(self) -> None:
        height, width = self.input_size
        try:
            self.learn_output_shapes(self._run)
        except Exception as exc:
            raise EngineInitError(
                f"the ONNX vision encoder {self._path} failed its first run at "
                f"{width}x{height}: {exc}; check the input size (preset size) matches the "
                "size the model was exported for") from exc

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        pixels = (tensor.astype(np.float32) - self._mean) * self._inv_std
        nchw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        return list(self._session.run(None, {self._input_name: nchw}))

    def encode_sync(self, tensor: np.ndarray) -> npt.NDArray[np.float32]:
        """Encode one ``(1, H, W, 3)`` uint8 RGB image; see :class:`VisionEncoder`."""
        self.check_tensor(tensor)
        with self._lock:
            if self._session is None:
                raise VisionError("encoder_error", "the ONNX vision encoder is closed")
            try:
                outputs = self._run(tensor)
            except Exception as exc:  # onnxruntime's own error classes
                raise VisionError(
                    "encoder_error", f"the ONNX vision encoder failed: {exc}") from exc
        embeds = interleave(outputs)
        if embeds.shape != (self.n_tokens, self.width):
            raise VisionError(
                "encoder_error",
                f"the ONNX vision encoder returned {embeds.shape}, not the "
                f"({self.n_tokens}, {self.width}) it returned at load")
        return embeds

    def close(self) -> None:
        """Drop the ONNX Runtime session (idempotent)."""
        with self._lock:
            self._session = None


def _fixed(dim: object) -> int | None:
    """A dimension's value when the file fixes it, else None (symbolic or unknown)."""
    if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
        return dim
    return None
