"""The one interface every vision encoder implements, and the output interleave.

An encoder takes the preprocessed image as a uint8 NHWC tensor ``(1, H, W, 3)``
and returns float32 embeddings ``(n_tokens, width)`` that replace the image
tokens in the language model. Token count, width and input size are learned
from the model file at load time, never hard-coded.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from types import TracebackType

import numpy as np
import numpy.typing as npt

from rkstream.errors import VisionError
from rkstream.vision.presets import VisionPreset


class VisionEncoder(abc.ABC):
    """A loaded vision encoder (vision tower + projector).

    Attributes:
        input_size: ``(H, W)`` of the uint8 NHWC tensor it takes.
        n_tokens: embedding rows per image.
        width: floats per row fed to the LLM; with several outputs this is the
            sum of their widths (they are interleaved per token).
        n_outputs: how many output tensors the model has (Qwen3-VL DeepStack > 1).
        preset: the model family's tags and normalisation.
        name: ``"onnx"`` or ``"rknn"``.

    ``encode_sync`` blocks (seconds on the board); run it in a thread executor,
    one call at a time per encoder.
    """

    input_size: tuple[int, int]
    n_tokens: int
    width: int
    n_outputs: int
    preset: VisionPreset
    name: str

    @abc.abstractmethod
    def encode_sync(self, tensor: np.ndarray) -> npt.NDArray[np.float32]:
        """Encode one image.

        Args:
            tensor: uint8 array of shape ``(1, H, W, 3)``, RGB, ``(H, W) == input_size``.

        Returns:
            float32 C-contiguous array of shape ``(n_tokens, width)``.

        Raises:
            VisionError: code ``encoder_error`` when the tensor is not what the
                encoder takes, the encoder is closed, or inference fails.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model. Safe to call more than once."""

    def learn_output_shapes(self, run: Callable[[np.ndarray], Sequence[np.ndarray]]) -> None:
        """Run ``run`` once on a black image and take n_outputs, n_tokens and
        width from what it returns, so no number is written by hand."""
        height, width = self.input_size
        outputs = run(np.zeros((1, height, width, 3), dtype=np.uint8))
        embeds = interleave(outputs)
        self.n_outputs = len(outputs)
        self.n_tokens, self.width = (int(n) for n in embeds.shape)

    def check_tensor(self, tensor: np.ndarray) -> None:
        """Refuse anything but a uint8 ``(1, H, W, 3)`` tensor of the input size.

        Raises:
            VisionError: code ``encoder_error``, naming the expected shape.
        """
        height, width = self.input_size
        expected = (1, height, width, 3)
        if not isinstance(tensor, np.ndarray) or tensor.dtype != np.uint8:
            got = tensor.dtype if isinstance(tensor, np.ndarray) else type(tensor).__name__
            raise VisionError(
                "encoder_error",
                f"the {self.name} vision encoder takes a uint8 RGB tensor of shape "
                f"{expected} (NHWC), got dtype {got}; preprocess the image first")
        if tensor.shape != expected:
            raise VisionError(
                "encoder_error",
                f"the {self.name} vision encoder takes a tensor of shape {expected} "
                f"(1, H, W, 3 - NHWC), got {tensor.shape}; resize the image to "
                f"{width}x{height} first")

    def __enter__(self) -> VisionEncoder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.preset.name} input={self.input_size} "
                f"tokens={self.n_tokens} width={self.width} outputs={self.n_outputs}>")


def interleave(outputs: Sequence[np.ndarray]) -> npt.NDArray[np.float32]:
    """Join an encoder's outputs per token, the layout RKLLM expects.

    Each output is squeezed of leading 1-dims to ``(n_tokens, w_i)``; row i of
    the result is ``out0[i], out1[i], ...`` (the multimodal demo's layout for
    Qwen3-VL's main embedding plus DeepStack maps).

    Args:
        outputs: one array per model output.

    Returns:
        float32 C-contiguous ``(n_tokens, sum(w_i))``.

    Raises:
        VisionError: code ``encoder_error`` when there are no outputs, one is not
            2-D after squeezing, or their token counts differ.
    """
    if not outputs:
        raise VisionError("encoder_error", "the vision encoder returned no outputs")
    rows: list[np.ndarray] = []
    for index, output in enumerate(outputs):
        array = np.asarray(output)
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise VisionError(
                "encoder_error",
                f"vision encoder output {index} has shape {np.shape(output)}; expected "
                "(n_tokens, width) with optional leading 1-dims - is this a vision encoder?")
        rows.append(array)
    counts = [row.shape[0] for row in rows]
    if len(set(counts)) != 1:
        raise VisionError(
            "encoder_error",
            f"vision encoder outputs disagree on the token count ({counts}); they cannot be "
            "interleaved per token")
    if len(rows) == 1:
        # Avoids a copy when the single output is already float32 and contiguous.
        return np.ascontiguousarray(rows[0], dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(rows, axis=1), dtype=np.float32)
