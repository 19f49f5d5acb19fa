"""Vision encoder on the RK3588 NPU through rknn-toolkit-lite2 (``RKNNLite``).

The ``.rknn`` model has mean/std baked in at conversion, so the uint8 NHWC
tensor is fed as is. RKNNLite reports most failures as return codes or a
``None`` result instead of exceptions; every one is checked here and turned
into an error that says what to do.

RKNNLite has no query for the input shape, so the input size comes from the
``input_size`` argument or ``preset.size``; a wrong size shows up as a failed
warm-up run at load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rkstream.errors import ConfigError, EngineInitError, VisionError
from rkstream.vision.encoder import VisionEncoder, interleave
from rkstream.vision.presets import VisionPreset

log = logging.getLogger("rkstream.vision")

#: core_mask name -> RKNNLite class constant (bit values 0, 1, 2, 4, 3, 7, 0xffff).
CORE_MASKS: dict[str, str] = {
    "auto": "NPU_CORE_AUTO",
    "0": "NPU_CORE_0",
    "1": "NPU_CORE_1",
    "2": "NPU_CORE_2",
    "0_1": "NPU_CORE_0_1",
    "0_1_2": "NPU_CORE_0_1_2",
    "all": "NPU_CORE_ALL",
}

_NONE_ADVICE = ("check the RKNN log above, the NPU driver (RKNPU >= 0.9.6 for large models) "
                "and the core mask")


def _default_factory() -> Any:
    """Create a real RKNNLite; imported here because it only exists on aarch64 boards."""
    try:
        from rknnlite.api import RKNNLite
    except ImportError as exc:
        raise VisionError(
            "vision_unavailable",
            "rknn-toolkit-lite2 is not installed, so .rknn vision encoders cannot run; "
            "`pip install rknn-toolkit-lite2` on the board (it only exists for aarch64 Linux, "
            "Python 3.7-3.12) and put librknnrt.so in /usr/lib, or use an .onnx encoder "
            "elsewhere") from exc
    return RKNNLite(verbose=False)


class RknnEncoder(VisionEncoder):
    """A vision encoder loaded from an ``.rknn`` file and run on the NPU.

    Args:
        path: the ``.rknn`` file.
        preset: tags of the model family (its mean/std are not used: baked in).
        core_mask: NPU cores, one of :data:`CORE_MASKS` (``"0_1_2"`` = all three
            RK3588 cores, ``"2"`` = leave cores 0+1 to a 2-core LLM).
        input_size: ``(H, W)`` the model was converted for; default
            ``(preset.size, preset.size)``.
        rknnlite_factory: makes the RKNNLite object; tests pass a fake.

    Raises:
        VisionError: code ``vision_unavailable`` when rknn-toolkit-lite2 is missing.
        ConfigError: unknown ``core_mask``, or no input size known.
        EngineInitError: load_rknn / init_runtime fail, or the warm-up run fails.
    """

    name = "rknn"

    def __init__(self, path: Path, preset: VisionPreset, *, core_mask: str = "auto",
                 input_size: tuple[int, int] | None = None,
                 rknnlite_factory: Callable[[], Any] | None = None) -> None:
        if core_mask not in CORE_MASKS:
            raise ConfigError(
                f"unknown NPU core mask {core_mask!r}; allowed: {', '.join(CORE_MASKS)}")
        self.preset = preset
        self.input_size = _input_size(input_size, preset)
        self._path = Path(path)
        self._lock = threading.Lock()
        factory = rknnlite_factory or _default_factory
        self._rknn: Any = factory()
        try:
            self._load(core_mask)
            self._warm_up()
        except BaseException:
            self.close()
            raise

    def _load(self, core_mask: str) -> None:
        ret = self._rknn.load_rknn(str(self._path))
        if ret != 0:
            raise EngineInitError(
                f"RKNNLite.load_rknn({self._path}) returned {ret}; check that the file exists "
                "and is an .rknn model converted for this board (see the RKNN log above)")
        constant = CORE_MASKS[core_mask]
        mask = getattr(self._rknn, constant, None)
        if mask is None:
            raise EngineInitError(
                f"this rknn-toolkit-lite2 has no RKNNLite.{constant} (core mask "
                f"{core_mask!r}); upgrade it or pick another core mask")
        try:
            ret = self._rknn.init_runtime(core_mask=mask)
        except Exception as exc:  # raises plain Exception on unsupported platforms
            raise EngineInitError(
                f"RKNNLite.init_runtime failed: {exc}; the NPU runtime needs an RK3588-class "
                "board with /usr/lib/librknnrt.so from rknn-toolkit2 "
                "(rknpu2/runtime/Linux/librknn_api/aarch64)") from exc
        if ret != 0:
            raise EngineInitError(
                f"RKNNLite.init_runtime(core_mask={core_mask!r}) returned {ret}; check the "
                "RKNN log above, the NPU driver and librknnrt.so version, and the core mask; "
                "'failed to malloc npu memory' next to an LLM needs rkllm.base_domain_id = 1")

    def _warm_up(self) -> None:
        height, width = self.input_size
        try:
            self.learn_output_shapes(self._infer)
        except VisionError as exc:
            raise EngineInitError(
                f"the RKNN vision encoder {self._path} failed its first run at "
                f"{width}x{height}: {exc.message}; also check that the input size (preset "
                "size or vision input size) is the size the model was converted for") from exc

    def _infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        try:
            outputs = self._rknn.inference(inputs=[tensor], data_type="uint8",
                                           data_format="nhwc")
        except Exception as exc:  # the compiled runtime may raise anything
            raise VisionError("encoder_error", f"RKNNLite.inference raised {exc!r}") from exc
        if outputs is None:
            raise VisionError(
                "encoder_error", f"RKNNLite.inference returned None: {_NONE_ADVICE}")
        return list(outputs)

    def encode_sync(self, tensor: np.ndarray) -> npt.NDArray[np.float32]:
        """Encode one ``(1, H, W, 3)`` uint8 RGB image; see :class:`VisionEncoder`."""
        self.check_tensor(tensor)
        # One RKNNLite context must not be used from two threads at once.
        with self._lock:
            if self._rknn is None:
                raise VisionError("encoder_error", "the RKNN vision encoder is closed")
            outputs = self._infer(tensor)
        embeds = interleave(outputs)
        if embeds.shape != (self.n_tokens, self.width):
            raise VisionError(
                "encoder_error",
                f"the RKNN vision encoder returned {embeds.shape}, not the "
                f"({self.n_tokens}, {self.width}) it returned at load")
        return embeds

    def close(self) -> None:
        """Release the NPU runtime (idempotent); waits for a running encode."""
        with self._lock:
            rknn, self._rknn = self._rknn, None
        if rknn is None:
            return
        try:
            rknn.release()
        except Exception:  # shutdown must go on; the process exit frees the NPU anyway
            log.warning("RKNNLite.release failed for %s", self._path, exc_info=True)


def _input_size(input_size: tuple[int, int] | None, preset: VisionPreset) -> tuple[int, int]:
    if input_size is None:
        if preset.size is None:
            raise ConfigError(
                f"preset {preset.name!r} has no size and RKNNLite cannot report the input "
                "shape of an .rknn model; set the vision preset size to the size the model "
                "was converted for (e.g. 448)")
        return (preset.size, preset.size)
    height, width = input_size
    if height <= 0 or width <= 0:
        raise ConfigError(f"vision input size must be positive, got {input_size}")
    return (int(height), int(width))
