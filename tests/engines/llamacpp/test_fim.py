"""Fill-in-the-middle on llama.cpp: <pre> prefix <suf> suffix <mid>, no template.

The bundled SmolLM2 defines no FIM tokens, so /v1/completions refuses a
suffix for it; the token layout is checked by giving the engine stand-in
FIM ids (three ordinary special tokens of the model).
"""

from __future__ import annotations

import pytest

from rkstream.core.messages import Message, TextPart
from rkstream.core.params import SamplingSettings
from rkstream.engines.base import Job
from rkstream.engines.llamacpp.engine import LlamaCppEngine
from rkstream.engines.llamacpp.instance import LlamaInstance

from helpers import Sink

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the shared engine's loop


def fim_job(prefix: str, suffix: str) -> Job:
    return Job(request_id="f", messages=(Message("user", (TextPart(prefix),)),),
               instructions=None,
               sampling=SamplingSettings(max_tokens=8, temperature=0.0, top_p=1.0, top_k=1,
                                         repeat_penalty=1.0, frequency_penalty=0.0,
                                         presence_penalty=0.0),
               fim=(prefix, suffix))


async def test_bundled_model_has_no_fim(engine: LlamaCppEngine) -> None:
    assert engine.info.fim is False
    assert engine.info.as_dict()["fim"] is False


async def test_fim_prompt_layout(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    instance = engine.instances[0]
    assert isinstance(instance, LlamaInstance)
    # Stand-in ids (<|im_start|>, <|im_end|>, ...), undone after: the engine is shared.
    monkeypatch.setattr(instance, "fim_tokens", (1, 2, 3))
    prefix, suffix = "def add(a, b):\n    ", "\n    return result\n"
    tokens = instance._fim_tokens((prefix, suffix))
    assert tokens[0] == 1 and tokens[-1] == 3 and 2 in tokens
    sink = Sink()
    outcome = await instance.start(fim_job(prefix, suffix), sink).wait()
    assert outcome.finish_reason in ("stop", "length")
    assert outcome.prompt_tokens == len(tokens)
