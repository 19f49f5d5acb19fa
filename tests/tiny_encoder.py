"""A tiny, real ONNX vision encoder for tests, and a numpy reference for its output.

The model is a ViT-style patch embedding: Conv (kernel = stride = patch) ->
tokens -> linear projection(s). Weights are fixed random numbers from a seed,
so the same arguments always write the same model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from rkstream.vision.presets import VisionPreset

CHANNELS = 12  # conv output channels (the hidden size of the tiny tower)
OPSET = 17
IR_VERSION = 9  # onnx 1.23 writes a newer IR by default; 9 loads in every recent onnxruntime


def build_tiny_encoder(path: Path, *, size: int = 32, patch: int = 8, width: int = 16,
                       outputs: int = 1, seed: int = 0, batch_dim: bool = True,
                       dynamic_size: bool = False, extra_input: bool = False) -> Path:
    """Write a tiny ONNX vision encoder to ``path``.

    Args:
        path: where to write the ``.onnx`` file.
        size: square input size (H = W); must be a multiple of ``patch``.
        patch: conv kernel and stride; tokens = (size / patch) ** 2.
        width: floats per token of each output.
        outputs: number of outputs, each its own projection (> 1 is DeepStack-like).
        seed: seed of the random weights.
        batch_dim: outputs are ``[1, tokens, width]`` when True, else ``[tokens, width]``.
        dynamic_size: declare H and W symbolic (``height``, ``width``) in the input.
        extra_input: add an unused int64 ``grid_thw`` [1, 3] input, like a Qwen export.

    Returns:
        ``path``.
    """
    if size % patch:
        raise ValueError("size must be a multiple of patch")
    rng = np.random.default_rng(seed)
    tokens = (size // patch) ** 2
    weights: dict[str, np.ndarray] = {
        "conv_w": (rng.standard_normal((CHANNELS, 3, patch, patch)) * 0.1).astype(np.float32),
        "conv_b": (rng.standard_normal(CHANNELS) * 0.1).astype(np.float32),
        "feat_shape": np.array([1, CHANNELS, -1], dtype=np.int64),
    }
    if not batch_dim:
        weights["out_shape"] = np.array([-1, width], dtype=np.int64)
    nodes = [
        helper.make_node("Conv", ["pixel", "conv_w", "conv_b"], ["grid"],
                         kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Reshape", ["grid", "feat_shape"], ["flat"]),  # [1, C, T]
        helper.make_node("Transpose", ["flat"], ["feats"], perm=[0, 2, 1]),  # [1, T, C]
    ]
    graph_outputs = []
    for index in range(outputs):
        weights[f"proj{index}_w"] = (
            rng.standard_normal((CHANNELS, width)) * 0.2).astype(np.float32)
        weights[f"proj{index}_b"] = (rng.standard_normal(width) * 0.1).astype(np.float32)
        name = "embeds" if index == 0 else f"deepstack{index}"
        projected = name if batch_dim else f"{name}_batched"
        nodes += [
            helper.make_node("MatMul", ["feats", f"proj{index}_w"], [f"mm{index}"]),
            helper.make_node("Add", [f"mm{index}", f"proj{index}_b"], [projected]),
        ]
        if not batch_dim:
            nodes.append(helper.make_node("Reshape", [projected, "out_shape"], [name]))
        count: int | str = "tokens" if dynamic_size else tokens
        shape = [1, count, width] if batch_dim else [count, width]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    side: list[int | str] = ["height", "width"] if dynamic_size else [size, size]
    inputs = [helper.make_tensor_value_info("pixel", TensorProto.FLOAT, [1, 3, *side])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("grid_thw", TensorProto.INT64, [1, 3]))
    graph = helper.make_graph(
        nodes, "tiny_vision_encoder", inputs, graph_outputs,
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rkstream-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def reference_embedding(path: Path, tensor_uint8_nhwc: np.ndarray,
                        preset: VisionPreset) -> npt.NDArray[np.float32]:
    """Compute what a tiny encoder should return, with numpy only.

    Reads the weights back from the file, normalises with the preset's
    mean/std, runs the conv as a matmul over flattened patches, projects, and
    interleaves the outputs per token.

    Args:
        path: a model written by :func:`build_tiny_encoder`.
        tensor_uint8_nhwc: ``(1, H, W, 3)`` uint8 image.
        preset: supplies mean and std (0-255 units).

    Returns:
        float32 ``(tokens, width * outputs)``.
    """
    model = onnx.load_model(str(path))
    weights = {init.name: numpy_helper.to_array(init).astype(np.float64)
               for init in model.graph.initializer}
    conv_w, conv_b = weights["conv_w"], weights["conv_b"]
    channels, _, patch, _ = conv_w.shape
    image = tensor_uint8_nhwc[0].astype(np.float64)  # H, W, 3
    image = (image - np.array(preset.mean)) / np.array(preset.std)
    height, width, _ = image.shape
    rows, cols = height // patch, width // patch
    # Patches in row-major grid order, each flattened as (channel, dy, dx) like the kernel.
    patches = (image.reshape(rows, patch, cols, patch, 3)
               .transpose(0, 2, 4, 1, 3)
               .reshape(rows * cols, 3 * patch * patch))
    feats = patches @ conv_w.reshape(channels, -1).T + conv_b
    projections = sorted((name for name in weights if name.startswith("proj")
                          and name.endswith("_w")), key=lambda name: int(name[4:-2]))
    parts = [feats @ weights[name] + weights[name[:-2] + "_b"] for name in projections]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
