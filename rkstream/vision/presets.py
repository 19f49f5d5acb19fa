"""Per-family settings of vision-language models: image tags, normalisation, size.

The tags are the three strings RKLLM uses to expand ``<image>`` into the
model's own special tokens (start, end, and the per-token content). Mean and
std are in 0-255 units and are applied only by the ONNX encoder: an ``.rknn``
encoder has them baked in at conversion and takes raw uint8 pixels.

Sources: /work/shared/reference/vision_models.md and rkllm_demos.md (the
rknn-llm multimodal demo and its export scripts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rkstream.core.embeddings import ImageTags
from rkstream.errors import ConfigError

_QWEN_TAGS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")

# Normalisation used by rknn-llm's export_vision_rknn.py, already multiplied by 255.
_CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
_CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_HALF = (127.5, 127.5, 127.5)


@dataclass(frozen=True)
class VisionPreset:
    """What rkstream needs to know about one model family's vision side.

    Attributes:
        name: the preset name (``qwen2-vl``, ``internvl3``, ...).
        image_start: text placed before the image tokens (may be empty).
        image_end: text placed after the image tokens (may be empty).
        image_content: the special token repeated once per image embedding row.
        background: grey level (0-255) used to pad an image to a square.
        mean: per-channel RGB mean in 0-255 units (ONNX encoders only).
        std: per-channel RGB std in 0-255 units (ONNX encoders only).
        size: square encoder input size used when the model file does not fix it.
    """

    name: str
    image_start: str
    image_end: str
    image_content: str
    background: float = 127.5
    mean: tuple[float, float, float] = _HALF
    std: tuple[float, float, float] = _HALF
    size: int | None = None

    @property
    def tags(self) -> ImageTags:
        """The strings the runtime wraps around each image's embedding rows."""
        return ImageTags(start=self.image_start, end=self.image_end,
                         content=self.image_content)


PRESETS: dict[str, VisionPreset] = {
    preset.name: preset
    for preset in (
        # Size 392 is what the rknn-llm demo and benchmark use for Qwen2-VL / Qwen2.5-VL.
        VisionPreset("qwen2-vl", *_QWEN_TAGS, mean=_CLIP_MEAN, std=_CLIP_STD, size=392),
        VisionPreset("qwen2.5-vl", *_QWEN_TAGS, mean=_CLIP_MEAN, std=_CLIP_STD, size=392),
        VisionPreset("qwen3-vl", *_QWEN_TAGS, size=448),
        # Qwen3.5: the demo uses the Qwen tags by default; 448 per the benchmark.
        VisionPreset("qwen3.5", *_QWEN_TAGS, size=448),
        VisionPreset("internvl3", "<img>", "</img>", "<IMG_CONTEXT>",
                     mean=_IMAGENET_MEAN, std=_IMAGENET_STD, size=448),
        # The demo calls MiniCPM-V tags "model-specific"; these are the im_start /
        # im_end / unk tokens of MiniCPM-V's own processor (also rkllama's example).
        VisionPreset("minicpm-v", "<image>", "</image>", "<unk>", size=448),
        # SmolVLM tags are "model-specific" in the demo; these follow the HF
        # Idefics3/SmolVLM processor for one global image (not confirmed on RK).
        VisionPreset("smolvlm", "<fake_token_around_image><global-img>",
                     "<fake_token_around_image>", "<image>", size=512),
        # DeepSeekOCR: empty start/end, full-width bars and U+2581 in the pad token.
        VisionPreset("deepseekocr", "", "", "<\uff5c\u2581pad\u2581\uff5c>", size=448),
    )
}

_OVERRIDABLE = ("image_start", "image_end", "image_content", "background", "mean", "std",
                "size")


def preset_with_overrides(name: str, overrides: Mapping[str, object]) -> VisionPreset:
    """Return preset ``name`` with some fields replaced.

    Args:
        name: a key of :data:`PRESETS`.
        overrides: field name -> new value, e.g. from the ``[vision]`` config
            section. ``mean`` and ``std`` take any 3-number sequence (TOML lists).

    Returns:
        A new frozen preset; the entry in :data:`PRESETS` is unchanged.

    Raises:
        ConfigError: the preset name or a field is unknown, or a value is not
            allowed; the message lists what is allowed.
    """
    base = PRESETS.get(name)
    if base is None:
        raise ConfigError(
            f"unknown vision preset {name!r}; allowed: {', '.join(sorted(PRESETS))}")
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in _OVERRIDABLE:
            raise ConfigError(
                f"unknown vision preset field {key!r}; allowed: {', '.join(_OVERRIDABLE)}")
        changes[key] = _check_field(key, value)
    return dataclasses.replace(base, **changes)


def _check_field(key: str, value: object) -> object:
    """Validate one override and return it in the dataclass's own type."""
    if key in ("image_start", "image_end", "image_content"):
        if not isinstance(value, str):
            raise ConfigError(f"vision preset field {key!r} must be a string, got {value!r}")
        if key == "image_content" and not value:
            raise ConfigError("vision preset field 'image_content' must not be empty")
        return value
    if key == "background":
        number = _number(key, value)
        if not 0.0 <= number <= 255.0:
            raise ConfigError(f"vision preset field 'background' must be 0-255, got {value!r}")
        return number
    if key in ("mean", "std"):
        try:
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise ValueError("not a list")
            return rgb(value, std=key == "std")
        except ValueError as exc:
            raise ConfigError(
                f"vision preset field {key!r} must be 3 numbers (R, G, B) in 0-255 units"
                f"{', above 0' if key == 'std' else ''}, got {value!r} ({exc})") from None
    # size
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"vision preset field 'size' must be a positive integer (pixels), got {value!r}")
    return value


def rgb(values: Iterable[object], *, std: bool) -> tuple[float, float, float]:
    """Check a mean (``std=False``) or std: three numbers, R, G, B, in 0-255
    units; a std also above 0, since the ONNX encoder divides by it.

    rkstream.config checks ``vision.mean``/``vision.std`` text with this rule too.

    Raises:
        ValueError: saying what is wrong (count, a non-number, a value out of range).
    """
    items = list(values)
    if len(items) != 3:
        raise ValueError(f"{len(items)} values, not 3")
    numbers: list[float] = []
    for item in items:
        # bool is an int subclass; true/false in a config is a mistake, not 1/0.
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"{item!r} is not a number")
        number = float(item)
        # NaN fails every comparison, so it is refused here too.
        if not ((number > 0.0 if std else number >= 0.0) and number <= 255.0):
            raise ValueError(f"{item!r} is out of range")
        numbers.append(number)
    return (numbers[0], numbers[1], numbers[2])


def _number(key: str, value: object) -> float:
    # bool is an int subclass; true/false in a config is a mistake, not 1/0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"vision preset field {key!r} takes numbers, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"vision preset field {key!r} takes finite numbers, got {value!r}")
    return number
