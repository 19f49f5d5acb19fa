"""Fill the native structs of either ABI line from rkstream's settings.

Both ABI modules use the header's names, so one function serves both lines;
where the lines differ, the runtime's capabilities (``runtime.caps``) decide.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from rkstream.config import RKLLMSettings
from rkstream.config import SamplingSettings as SamplingDefaults
from rkstream.core.embeddings import ImageEmbedding, ImageTags
from rkstream.core.params import SamplingSettings
from rkstream.engines.rkllm.loader import RuntimeLibrary

# What a result callback returns: go on, or pause (stop) generation.
CONTINUE, PAUSE = 0, 1


def make_param(runtime: RuntimeLibrary, settings: RKLLMSettings, defaults: SamplingDefaults,
               model_path: bytes, tags: ImageTags | None = None) -> Any:
    """An RKLLMParam for rkllm_init, zeroed first, every field set explicitly.

    Where ``caps.image_tags_at_init`` (1.2) the image tag strings live here,
    fixed at init; otherwise they go with each multimodal run. The returned
    struct keeps the bytes it points to alive (``_keep``).
    """
    param = runtime.abi.RKLLMParam()
    ctypes.memset(ctypes.addressof(param), 0, ctypes.sizeof(param))
    param.model_path = model_path
    param.max_context_len = settings.max_context_len
    param.max_new_tokens = settings.max_new_tokens
    param.n_keep = settings.n_keep
    param.top_k = defaults.top_k
    param.top_p = defaults.top_p
    param.temperature = defaults.temperature
    param.repeat_penalty = defaults.repeat_penalty
    param.frequency_penalty = defaults.frequency_penalty
    param.presence_penalty = defaults.presence_penalty
    param.mirostat = settings.mirostat
    param.mirostat_tau = settings.mirostat_tau
    param.mirostat_eta = settings.mirostat_eta
    param.skip_special_token = settings.skip_special_token
    param.is_async = False
    ext = param.extend_param
    # The demo moves the LLM to domain 1 when a vision model shares the process,
    # which avoids "failed to malloc npu memory" (rknn-llm issues #139, #195).
    ext.base_domain_id = (settings.base_domain_id if settings.base_domain_id >= 0
                          else 1 if tags is not None else 0)
    ext.embed_flash = 1 if settings.embed_flash else 0
    ext.enabled_cpus_num = settings.enabled_cpus_num
    ext.enabled_cpus_mask = settings.enabled_cpus_mask
    ext.n_batch = 1
    ext.use_cross_attn = 0
    if tags is not None and runtime.caps.image_tags_at_init:
        kept = [t.encode() for t in (tags.start, tags.end, tags.content)]
        param.img_start, param.img_end, param.img_content = kept
        param._keep = kept
    return param


@dataclass
class RunStructs:
    """The structs of one rkllm_run call; they (and what they point to) must
    outlive the call, so they are kept here until it returns."""

    input: Any
    infer: Any
    sampling: Any | None
    prompt: bytes
    role: bytes
    embeddings: Any = None
    tags: tuple[bytes, bytes, bytes] | None = None
    prompt_cache: Any = None  # RKLLMPromptCacheParam when the run saves a prompt cache
    prompt_cache_path: bytes | None = None


def _fill_images(runtime: RuntimeLibrary, inp: Any, structs: RunStructs,
                 images: tuple[ImageEmbedding, ...], tags: ImageTags | None) -> None:
    """Point the multimodal input at all images' embeddings, back to back."""
    n_tokens = {image.embedding.shape[0] for image in images}
    sizes = {image.size for image in images}
    if len(n_tokens) != 1 or len(sizes) != 1:
        raise ValueError("all images of one run must come from one encoder")
    embeddings = np.ascontiguousarray(
        np.concatenate([image.embedding for image in images]), dtype=np.float32)
    structs.embeddings = embeddings
    pointer = embeddings.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    height, width = sizes.pop()
    caps = runtime.caps
    inp.input_type = runtime.abi.RKLLM_INPUT_MULTIMODAL
    mm = inp.multimodal_input
    mm.prompt = structs.prompt
    target = mm.image if caps.nested_image_input else mm
    target.image_embed = pointer
    target.n_image_tokens = n_tokens.pop()
    target.n_image = len(images)
    target.image_width = width
    target.image_height = height
    if not caps.image_tags_at_init and tags is not None:  # else rkllm_init got them
        structs.tags = (tags.start.encode(), tags.end.encode(), tags.content.encode())
        target.image_start, target.image_end, target.image_content = structs.tags


def make_run_structs(runtime: RuntimeLibrary, prompt: str, role: str,
                     sampling: SamplingSettings, settings: RKLLMSettings,
                     images: tuple[ImageEmbedding, ...] = (),
                     tags: ImageTags | None = None, *, keep_history: bool = False,
                     save_prompt_cache: str | None = None,
                     enable_thinking: bool = False, hidden_states: bool = False) -> RunStructs:
    """Build RKLLMInput (a text prompt, or text with images) and RKLLMInferParam.

    The request's sampling and max_tokens go into the per-run fields where
    the line has them (``caps.per_run_sampling``, ``caps.per_run_max_new_tokens``);
    otherwise the init values apply (the engine still enforces max_tokens by
    pausing generation from the callback). ``save_prompt_cache``: a file the
    runtime saves the run's prompt cache to when the run ends. ``hidden_states``:
    RKLLM_INFER_GET_LAST_HIDDEN_LAYER instead of generation (an embedding).
    """
    abi, caps = runtime.abi, runtime.caps
    prompt_bytes = prompt.encode("utf-8")
    role_bytes = role.encode("ascii")
    inp = abi.RKLLMInput()
    ctypes.memset(ctypes.addressof(inp), 0, ctypes.sizeof(inp))
    inp.role = role_bytes
    inp.enable_thinking = enable_thinking
    inp.input_type = abi.RKLLM_INPUT_PROMPT
    inp.prompt_input = prompt_bytes
    infer = abi.RKLLMInferParam()
    ctypes.memset(ctypes.addressof(infer), 0, ctypes.sizeof(infer))
    infer.mode = (abi.RKLLM_INFER_GET_LAST_HIDDEN_LAYER if hidden_states
                  else abi.RKLLM_INFER_GENERATE)
    infer.keep_history = 1 if keep_history else 0
    native_sampling = None
    if caps.per_run_sampling:
        native_sampling = abi.RKLLMSamplingParam()
        native_sampling.top_k = sampling.top_k
        native_sampling.top_p = sampling.top_p
        native_sampling.temperature = sampling.temperature
        native_sampling.repeat_penalty = sampling.repeat_penalty
        native_sampling.frequency_penalty = sampling.frequency_penalty
        native_sampling.presence_penalty = sampling.presence_penalty
        native_sampling.mirostat = settings.mirostat
        native_sampling.mirostat_tau = settings.mirostat_tau
        native_sampling.mirostat_eta = settings.mirostat_eta
        infer.sampling_params = ctypes.pointer(native_sampling)
    if caps.per_run_max_new_tokens:
        infer.max_new_tokens = sampling.max_tokens
    structs = RunStructs(input=inp, infer=infer, sampling=native_sampling,
                         prompt=prompt_bytes, role=role_bytes)
    if save_prompt_cache is not None:
        structs.prompt_cache_path = save_prompt_cache.encode()
        structs.prompt_cache = abi.RKLLMPromptCacheParam()
        structs.prompt_cache.save_prompt_cache = 1
        structs.prompt_cache.prompt_cache_path = structs.prompt_cache_path
        infer.prompt_cache_params = ctypes.pointer(structs.prompt_cache)
    if images:
        _fill_images(runtime, inp, structs, images, tags)
    return structs
