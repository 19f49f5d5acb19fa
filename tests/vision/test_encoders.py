"""Vision encoders: ONNX on tiny real models, RKNN on a fake RKNNLite, and dispatch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rkstream.errors import ConfigError, EngineInitError, ModelFileError, VisionError
from rkstream.vision.encoder import VisionEncoder, interleave
from rkstream.vision.loader import load_encoder
from rkstream.vision.onnx_encoder import OnnxEncoder
from rkstream.vision.presets import PRESETS, preset_with_overrides
from rkstream.vision.rknn_encoder import RknnEncoder

from tiny_encoder import build_tiny_encoder, reference_embedding

QWEN2 = PRESETS["qwen2-vl"]  # CLIP mean/std, so normalisation is really exercised


def image(size: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


# --- interleave -------------------------------------------------------------------------

def test_interleave_joins_rows_per_token() -> None:
    a = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    b = 100 + np.arange(3, dtype=np.float64).reshape(3, 1)
    out = interleave([a, b])
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert out.tolist() == [[0, 1, 100], [2, 3, 101], [4, 5, 102]]


def test_interleave_single_output_squeezes_leading_ones() -> None:
    out = interleave([np.ones((1, 1, 4, 5), dtype=np.float32)])
    assert out.shape == (4, 5) and out.flags.c_contiguous


@pytest.mark.parametrize("outputs", [
    [], [np.ones((3, 2)), np.ones((4, 2))], [np.ones(6)], [np.ones((2, 3, 4))]])
def test_interleave_refuses_what_cannot_be_joined(outputs: list[np.ndarray]) -> None:
    with pytest.raises(VisionError) as info:
        interleave(outputs)
    assert info.value.code == "encoder_error"
    assert info.value.error_type == "server_error"


# --- ONNX -------------------------------------------------------------------------------

@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("batch_dim", [True, False])
def test_onnx_matches_the_numpy_reference(tmp_path: Path, outputs: int, batch_dim: bool) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", outputs=outputs, batch_dim=batch_dim)
    with OnnxEncoder(path, QWEN2) as encoder:
        assert encoder.name == "onnx"
        assert encoder.input_size == (32, 32)
        assert (encoder.n_tokens, encoder.width, encoder.n_outputs) == (16, 16 * outputs, outputs)
        for seed in (1, 2):
            tensor = image(seed=seed)
            out = encoder.encode_sync(tensor)
            assert out.shape == (16, 16 * outputs)
            assert out.dtype == np.float32 and out.flags.c_contiguous
            np.testing.assert_allclose(out, reference_embedding(path, tensor, QWEN2), atol=1e-4)


def test_onnx_applies_the_preset_normalisation(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx")
    tensor = image()
    clip = OnnxEncoder(path, QWEN2).encode_sync(tensor)
    half = OnnxEncoder(path, PRESETS["qwen3-vl"]).encode_sync(tensor)
    assert not np.allclose(clip, half, atol=1e-3)
    np.testing.assert_allclose(
        half, reference_embedding(path, tensor, PRESETS["qwen3-vl"]), atol=1e-4)


def test_onnx_learns_shapes_from_the_file(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", size=48, patch=16, width=24, outputs=3)
    encoder = OnnxEncoder(path, QWEN2, threads=1)  # the preset's 392 must not win
    assert encoder.input_size == (48, 48)
    assert (encoder.n_tokens, encoder.width, encoder.n_outputs) == (9, 72, 3)
    np.testing.assert_allclose(encoder.encode_sync(image(48)),
                               reference_embedding(path, image(48), QWEN2), atol=1e-4)


def test_onnx_symbolic_size_takes_the_preset_size(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", dynamic_size=True)
    encoder = OnnxEncoder(path, preset_with_overrides("qwen3-vl", {"size": 24}))
    assert encoder.input_size == (24, 24)
    assert (encoder.n_tokens, encoder.width) == (9, 16)


def test_onnx_symbolic_size_without_preset_size_is_refused(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", dynamic_size=True)
    with pytest.raises(ConfigError, match="size"):
        OnnxEncoder(path, preset_with_overrides("qwen3-vl", {"size": None}))


def test_onnx_wrong_size_for_the_model_fails_at_load(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", dynamic_size=True)
    with pytest.raises(EngineInitError, match="first run"):
        OnnxEncoder(path, preset_with_overrides("qwen3-vl", {"size": 4}))  # < one patch


def test_onnx_with_grid_thw_input_is_refused(tmp_path: Path) -> None:
    path = build_tiny_encoder(tmp_path / "enc.onnx", extra_input=True)
    with pytest.raises(EngineInitError, match="grid_thw"):
        OnnxEncoder(path, QWEN2)


def test_onnx_corrupt_file_is_an_init_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x09garbage")
    with pytest.raises(EngineInitError, match="cannot load"):
        OnnxEncoder(path, QWEN2)


def test_onnx_negative_threads_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="threads"):
        OnnxEncoder(build_tiny_encoder(tmp_path / "enc.onnx"), QWEN2, threads=-1)


@pytest.mark.parametrize("tensor", [
    np.zeros((1, 32, 32, 3), dtype=np.float32),
    np.zeros((32, 32, 3), dtype=np.uint8),
    np.zeros((1, 3, 32, 32), dtype=np.uint8),
    np.zeros((1, 16, 16, 3), dtype=np.uint8),
    [[0]],
])
def test_encode_refuses_the_wrong_tensor(tmp_path: Path, tensor: Any) -> None:
    encoder = OnnxEncoder(build_tiny_encoder(tmp_path / "enc.onnx"), QWEN2)
    with pytest.raises(VisionError) as info:
        encoder.encode_sync(tensor)
    assert info.value.code == "encoder_error"
    assert "(1, 32, 32, 3)" in info.value.message


def test_onnx_close_is_idempotent(tmp_path: Path) -> None:
    encoder = OnnxEncoder(build_tiny_encoder(tmp_path / "enc.onnx"), QWEN2)
    encoder.close()
    encoder.close()
    with pytest.raises(VisionError, match="closed"):
        encoder.encode_sync(image())


# --- RKNN on a fake RKNNLite ------------------------------------------------------------

class FakeRKNNLite:
    """Records calls and returns canned results, like RKNNLite's return-code API."""

    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    def __init__(self, outputs: list[Any], load_ret: int = 0, init_ret: int | Exception = 0,
                 ) -> None:
        self.outputs = outputs  # one entry per inference call; the last one repeats
        self.load_ret = load_ret
        self.init_ret = init_ret
        self.calls: list[tuple[str, Any]] = []
        self.inputs: list[np.ndarray] = []

    def load_rknn(self, path: str) -> int:
        self.calls.append(("load_rknn", path))
        return self.load_ret

    def init_runtime(self, core_mask: int = 0) -> int:
        self.calls.append(("init_runtime", core_mask))
        if isinstance(self.init_ret, Exception):
            raise self.init_ret
        return self.init_ret

    def inference(self, inputs: list[np.ndarray], data_type: str | None = None,
                  data_format: str | None = None) -> Any:
        assert isinstance(inputs, list)
        self.calls.append(("inference", (data_type, data_format)))
        self.inputs.append(inputs[0].copy())
        index = min(len(self.inputs) - 1, len(self.outputs) - 1)
        result = self.outputs[index]
        if isinstance(result, Exception):
            raise result
        return result

    def release(self) -> None:
        self.calls.append(("release", None))


def factory(fake: FakeRKNNLite) -> Callable[[], Any]:
    return lambda: fake


def rknn(tmp_path: Path, fake: FakeRKNNLite, **kwargs: Any) -> RknnEncoder:
    path = tmp_path / "enc.rknn"
    path.write_bytes(b"RKNN\x00fake")
    preset = preset_with_overrides("qwen3-vl", {"size": 32})
    return RknnEncoder(path, preset, rknnlite_factory=factory(fake), **kwargs)


def embeds(tokens: int = 4, width: int = 3, offset: float = 0.0) -> np.ndarray:
    return (offset + np.arange(tokens * width, dtype=np.float32)).reshape(1, tokens, width)


def test_rknn_learns_shapes_and_feeds_uint8_as_is(tmp_path: Path) -> None:
    fake = FakeRKNNLite([embeds()])
    encoder = rknn(tmp_path, fake, core_mask="0_1_2")
    assert encoder.name == "rknn"
    assert encoder.input_size == (32, 32)
    assert (encoder.n_tokens, encoder.width, encoder.n_outputs) == (4, 3, 1)
    assert fake.calls[:2] == [("load_rknn", str(tmp_path / "enc.rknn")), ("init_runtime", 7)]
    tensor = image()
    out = encoder.encode_sync(tensor)
    np.testing.assert_array_equal(out, embeds()[0])
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert fake.inputs[0].shape == (1, 32, 32, 3) and not fake.inputs[0].any()  # warm-up
    np.testing.assert_array_equal(fake.inputs[1], tensor)  # no mean/std: baked into .rknn
    assert fake.inputs[1].dtype == np.uint8
    assert fake.calls[-1] == ("inference", ("uint8", "nhwc"))


def test_rknn_two_outputs_are_interleaved(tmp_path: Path) -> None:
    pair = [embeds(4, 3), embeds(4, 2, offset=100)[0]]
    encoder = rknn(tmp_path, FakeRKNNLite([pair]))
    assert (encoder.n_tokens, encoder.width, encoder.n_outputs) == (4, 5, 2)
    out = encoder.encode_sync(image())
    assert out[1].tolist() == [3, 4, 5, 102, 103]


@pytest.mark.parametrize("mask, value", [("auto", 0), ("0", 1), ("1", 2), ("2", 4),
                                         ("0_1", 3), ("0_1_2", 7), ("all", 0xFFFF)])
def test_rknn_core_masks_map_to_the_constants(tmp_path: Path, mask: str, value: int) -> None:
    fake = FakeRKNNLite([embeds()])
    rknn(tmp_path, fake, core_mask=mask)
    assert ("init_runtime", value) in fake.calls


def test_rknn_unknown_core_mask_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="0_1_2"):
        rknn(tmp_path, FakeRKNNLite([embeds()]), core_mask="3")


def test_rknn_inference_none_is_an_encoder_error(tmp_path: Path) -> None:
    fake = FakeRKNNLite([embeds(), None])
    encoder = rknn(tmp_path, fake)
    with pytest.raises(VisionError) as info:
        encoder.encode_sync(image())
    assert info.value.code == "encoder_error"
    assert "returned None" in info.value.message and "core mask" in info.value.message


def test_rknn_inference_raising_is_an_encoder_error(tmp_path: Path) -> None:
    encoder = rknn(tmp_path, FakeRKNNLite([embeds(), RuntimeError("npu timeout")]))
    with pytest.raises(VisionError, match="npu timeout") as info:
        encoder.encode_sync(image())
    assert info.value.code == "encoder_error"


def test_rknn_changed_output_shape_is_an_encoder_error(tmp_path: Path) -> None:
    encoder = rknn(tmp_path, FakeRKNNLite([embeds(), embeds(5, 3)]))
    with pytest.raises(VisionError, match=r"\(4, 3\)"):
        encoder.encode_sync(image())


def test_rknn_warm_up_none_fails_the_load_and_releases(tmp_path: Path) -> None:
    fake = FakeRKNNLite([None])
    with pytest.raises(EngineInitError, match="returned None"):
        rknn(tmp_path, fake)
    assert fake.calls[-1] == ("release", None)


def test_rknn_load_failure(tmp_path: Path) -> None:
    fake = FakeRKNNLite([embeds()], load_ret=-1)
    with pytest.raises(EngineInitError, match="load_rknn"):
        rknn(tmp_path, fake)
    assert [call[0] for call in fake.calls] == ["load_rknn", "release"]


@pytest.mark.parametrize("init_ret", [-1, Exception("Can not find dynamic library on RK3588")])
def test_rknn_init_runtime_failure(tmp_path: Path, init_ret: int | Exception) -> None:
    fake = FakeRKNNLite([embeds()], init_ret=init_ret)
    with pytest.raises(EngineInitError, match="init_runtime"):
        rknn(tmp_path, fake)
    assert fake.calls[-1] == ("release", None)


def test_rknn_needs_an_input_size(tmp_path: Path) -> None:
    path = tmp_path / "enc.rknn"
    preset = preset_with_overrides("qwen3-vl", {"size": None})
    with pytest.raises(ConfigError, match="size"):
        RknnEncoder(path, preset, rknnlite_factory=factory(FakeRKNNLite([embeds()])))
    encoder = RknnEncoder(path, preset, input_size=(24, 40),
                          rknnlite_factory=factory(FakeRKNNLite([embeds()])))
    assert encoder.input_size == (24, 40)


def test_rknn_close_releases_once(tmp_path: Path) -> None:
    fake = FakeRKNNLite([embeds()])
    encoder = rknn(tmp_path, fake)
    encoder.close()
    encoder.close()
    assert [call for call in fake.calls if call[0] == "release"] == [("release", None)]
    with pytest.raises(VisionError, match="closed"):
        encoder.encode_sync(image())


def test_rknn_without_the_toolkit_is_vision_unavailable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rknnlite", None)  # import of it now fails
    monkeypatch.setitem(sys.modules, "rknnlite.api", None)
    path = tmp_path / "enc.rknn"
    path.write_bytes(b"RKNN")
    with pytest.raises(VisionError) as info:
        RknnEncoder(path, PRESETS["qwen3-vl"])
    assert info.value.code == "vision_unavailable"
    assert "aarch64" in info.value.message


# --- load_encoder -----------------------------------------------------------------------

def test_load_picks_rknn_by_magic(tmp_path: Path) -> None:
    path = tmp_path / "vision.bin"
    path.write_bytes(b"RKNN" + bytes(64))
    fake = FakeRKNNLite([embeds()])
    encoder = load_encoder(str(path), PRESETS["qwen3-vl"], core_mask="2",
                           rknnlite_factory=factory(fake))
    assert isinstance(encoder, RknnEncoder)
    assert fake.calls[:2] == [("load_rknn", str(path)), ("init_runtime", 4)]


@pytest.mark.parametrize("name", ["enc.onnx", "enc.model"])
def test_load_picks_onnx(tmp_path: Path, name: str) -> None:
    path = build_tiny_encoder(tmp_path / name, outputs=2)
    encoder = load_encoder(str(path), QWEN2, threads=1)
    assert isinstance(encoder, OnnxEncoder) and isinstance(encoder, VisionEncoder)
    assert encoder.width == 32


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        load_encoder(str(tmp_path / "nope.rknn"), QWEN2)
    with pytest.raises(ModelFileError, match="no vision encoder"):
        load_encoder("", QWEN2)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a file"):
        load_encoder(str(tmp_path), QWEN2)


@pytest.mark.parametrize("name, content", [
    ("model.rkllm", b"RKLLM model bytes"), ("enc.bin", b"hello"), ("empty.bin", b"")])
def test_load_refuses_other_files(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="neither an RKNN model"):
        load_encoder(str(path), QWEN2)


def test_load_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auto, onnx, rknn"):
        load_encoder(str(tmp_path / "x.onnx"), QWEN2, kind="tflite")


def test_load_kind_forces_the_backend(tmp_path: Path) -> None:
    path = tmp_path / "enc.dat"
    path.write_bytes(b"not really rknn")
    fake = FakeRKNNLite([embeds()])
    encoder = load_encoder(str(path), PRESETS["qwen3-vl"], kind="rknn",
                           rknnlite_factory=factory(fake))
    assert isinstance(encoder, RknnEncoder)
