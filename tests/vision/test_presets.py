"""Model-family presets: tags, normalisation, sizes, and config overrides."""

from __future__ import annotations

import dataclasses

import pytest

from rkstream.errors import ConfigError
from rkstream.vision.presets import PRESETS, VisionPreset, preset_with_overrides

QWEN = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
TAGS = {
    "qwen2-vl": QWEN,
    "qwen2.5-vl": QWEN,
    "qwen3-vl": QWEN,
    "qwen3.5": QWEN,
    "internvl3": ("<img>", "</img>", "<IMG_CONTEXT>"),
    "minicpm-v": ("<image>", "</image>", "<unk>"),
    "smolvlm": ("<fake_token_around_image><global-img>", "<fake_token_around_image>",
                "<image>"),
    "deepseekocr": ("", "", "<｜▁pad▁｜>"),
}
SIZES = {"qwen2-vl": 392, "qwen2.5-vl": 392, "qwen3-vl": 448, "qwen3.5": 448,
         "internvl3": 448, "minicpm-v": 448, "smolvlm": 512, "deepseekocr": 448}


def test_every_family_is_present() -> None:
    assert set(PRESETS) == set(TAGS)
    for name, preset in PRESETS.items():
        assert preset.name == name


@pytest.mark.parametrize("name", sorted(TAGS))
def test_tags_size_and_background(name: str) -> None:
    preset = PRESETS[name]
    assert (preset.image_start, preset.image_end, preset.image_content) == TAGS[name]
    assert preset.size == SIZES[name]
    assert preset.background == 127.5


def test_deepseek_pad_token_uses_fullwidth_bars() -> None:
    assert PRESETS["deepseekocr"].image_content == "<\uff5c\u2581pad\u2581\uff5c>"


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen2_family_uses_clip_values_times_255(name: str) -> None:
    preset = PRESETS[name]
    assert preset.mean == pytest.approx((122.7709383, 116.7460125, 104.09373615))
    assert preset.std == pytest.approx((68.5005327, 66.6321579, 70.32316305))


def test_internvl3_uses_imagenet_values_times_255() -> None:
    preset = PRESETS["internvl3"]
    assert preset.mean == pytest.approx((123.675, 116.28, 103.53))
    assert preset.std == pytest.approx((58.395, 57.12, 57.375))


@pytest.mark.parametrize("name", ["qwen3-vl", "qwen3.5", "minicpm-v", "smolvlm", "deepseekocr"])
def test_other_families_use_half(name: str) -> None:
    assert PRESETS[name].mean == (127.5, 127.5, 127.5)
    assert PRESETS[name].std == (127.5, 127.5, 127.5)


def test_presets_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["qwen3-vl"].size = 672  # type: ignore[misc]


def test_overrides_replace_fields_and_leave_the_table_alone() -> None:
    preset = preset_with_overrides("qwen3-vl", {
        "size": 672, "mean": [0, 0, 0], "std": [255, 255, 255.0], "background": 0,
        "image_start": "<s>", "image_end": "</s>", "image_content": "<p>"})
    assert isinstance(preset, VisionPreset)
    assert preset.name == "qwen3-vl"
    assert preset.size == 672
    assert preset.mean == (0.0, 0.0, 0.0)
    assert preset.std == (255.0, 255.0, 255.0)
    assert isinstance(preset.mean, tuple)
    assert preset.background == 0.0
    assert (preset.image_start, preset.image_end, preset.image_content) == ("<s>", "</s>", "<p>")
    assert PRESETS["qwen3-vl"].size == 448


def test_no_overrides_returns_the_preset() -> None:
    assert preset_with_overrides("internvl3", {}) == PRESETS["internvl3"]


def test_size_may_be_cleared() -> None:
    assert preset_with_overrides("smolvlm", {"size": None}).size is None


def test_unknown_preset_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        preset_with_overrides("llava", {})
    assert "llava" in str(info.value)
    for name in PRESETS:
        assert name in str(info.value)


@pytest.mark.parametrize("field", ["name", "colour", "patch"])
def test_unknown_field_names_the_allowed_ones(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        preset_with_overrides("qwen2-vl", {field: 1})
    assert repr(field) in str(info.value)
    assert "image_content" in str(info.value) and "size" in str(info.value)


@pytest.mark.parametrize("field, value", [
    ("size", 0), ("size", -448), ("size", True), ("size", 448.0), ("size", "448"),
    ("mean", [1, 2]), ("mean", "abc"), ("mean", 5), ("mean", [1, 2, "x"]),
    ("std", [1, 0, 1]), ("std", [float("nan"), 1, 1]),
    ("background", 300), ("background", "grey"), ("background", True),
    ("image_start", 5), ("image_content", ""),
])
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        preset_with_overrides("qwen3-vl", {field: value})
    assert field in str(info.value)
