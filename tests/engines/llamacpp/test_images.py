"""Image embeddings into llama.cpp: the ONNX test encoder plugs in as on the NPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rkstream.core.embeddings import ImageEmbedding, ImageTags
from rkstream.core.messages import ImagePart, Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job
from rkstream.engines.llamacpp.engine import LlamaCppEngine
from rkstream.vision.onnx_encoder import OnnxEncoder
from rkstream.vision.presets import PRESETS

from helpers import Sink
from tiny_encoder import build_tiny_encoder

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the shared engine's loop

N_EMBD = 576  # SmolLM2-135M's embedding size


def job(images: tuple[ImageEmbedding, ...], prompt: str = "Describe the picture.") -> Job:
    parts: tuple[ImagePart | TextPart, ...] = (
        *(ImagePart(image_id=f"i{n}") for n in range(len(images))), TextPart(prompt))
    return Job(request_id="r", messages=(Message("user", parts),), instructions=None,
               sampling=SamplingSettings(max_tokens=12, temperature=0.0, top_p=1.0, top_k=1,
                                         repeat_penalty=1.0, frequency_penalty=0.0,
                                         presence_penalty=0.0),
               images=images, image_tags=ImageTags("", "", ""))


def encoded(tmp_path: Path, width: int, seed: int) -> ImageEmbedding:
    path = build_tiny_encoder(tmp_path / f"enc{width}.onnx", size=32, patch=8, width=width)
    encoder = OnnxEncoder(path, PRESETS["smolvlm"])
    pixels = np.random.default_rng(seed).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    rows = encoder.encode_sync(pixels)
    encoder.close()
    return ImageEmbedding(embedding=rows, size=(32, 32))


async def test_embeddings_take_the_place_of_tokens(engine: LlamaCppEngine,
                                                   tmp_path: Path) -> None:
    text_only = job(())
    sink = Sink()
    plain = await engine.instances[0].start(text_only, sink).wait()
    image = encoded(tmp_path, N_EMBD, 1)
    with_image = Sink()
    outcome = await engine.instances[0].start(job((image,)), with_image).wait()
    assert outcome.finish_reason in ("stop", "length") and with_image.text.strip()
    assert outcome.prompt_tokens == plain.prompt_tokens + 16  # 16 image rows, no tokens
    two = await engine.instances[0].start(job((image, image)), Sink()).wait()
    assert two.prompt_tokens == plain.prompt_tokens + 32
    # The image rows never leak into a later text-only run.
    again = Sink()
    await engine.instances[0].start(text_only, again).wait()
    assert again.text == sink.text


async def test_width_mismatch_is_refused(engine: LlamaCppEngine, tmp_path: Path) -> None:
    outcome = await engine.instances[0].start(job((encoded(tmp_path, 16, 2),)), Sink()).wait()
    assert outcome.finish_reason == "error" and outcome.error_code == "encoder_error"
    assert "576" in (outcome.error_message or "")
