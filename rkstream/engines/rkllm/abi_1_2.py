"""ctypes mirror of rkllm.h for librkllmrt.so runtimes 1.2.1, 1.2.2 and 1.2.3.

Mirrors airockchip/rknn-llm tag ``release-v1.2.3``, file
``rkllm-runtime/Linux/librkllm_api/include/rkllm.h``, one to one and in header
order: macros, the handle, enums, structs, the callback type, then the
exported functions as the methods of :class:`RKLLMFunctions`. The headers of
1.2.1 and 1.2.2 differ from 1.2.3 only in spelling the multimodal struct
``RKLLMMultiModelInput``; all three share one binary layout. 1.2.0 and the
1.2.1 beta are a different ABI (the result callback returned ``void``).

The names are those of ``abi_1_3``, so an engine can use either module
through the same attributes; the lines differ in ``RKLLMParam`` (image tags
here, no ``ignore_eos_token``), a flat ``RKLLMMultiModalInput``, a shorter
``RKLLMInferParam`` with no per-run sampling, and ``rkllm_init`` taking the
result callback itself instead of an ``RKLLMCallback`` struct. Do not use
this module with a 1.3.x library: the process would crash instead of failing.

Every struct's size, alignment and field offsets are asserted against the
compiled header (``tests/data/rkllm_abi_1_2.json``) by
``tests/engines/rkllm/test_abi.py``. The layout is LP64 and identical on
aarch64 and x86-64.

Struct fields are repeated as annotations under ``if TYPE_CHECKING:`` so a
type checker knows what reading a field returns; ``_fields_`` alone is
invisible to it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rkstream.errors import RuntimeLibraryError

if TYPE_CHECKING:
    # Type-checking only: some of these names exist only in the type stubs,
    # so they may appear in annotations (strings here), never in executed code.
    from _ctypes import CFuncPtr
    from ctypes import _CArgObject, _CData, _Pointer
    from typing import TypeAlias, TypeVar

    _CT = TypeVar("_CT", bound=_CData)

    #: What a C ``T*`` parameter accepts: ``ctypes.pointer(x)``,
    #: ``ctypes.byref(x)`` or an array of ``T``.
    CPointer: TypeAlias = "_Pointer[_CT] | ctypes.Array[_CT] | _CArgObject"
    #: What a C ``void*`` parameter accepts (None is NULL).
    CVoidPointer: TypeAlias = (
        "int | None | ctypes.c_void_p | _Pointer[Any] | ctypes.Array[Any] | _CArgObject"
    )

LINE = "1.2"
"""The runtime line this module mirrors (1.2.1-1.2.3)."""

# --- Macros: bits of RKLLMExtendParam.enabled_cpus_mask --------------------
# On RK3588 cores 0-3 are Cortex-A55 and 4-7 are Cortex-A76.
CPU0 = 1 << 0
CPU1 = 1 << 1
CPU2 = 1 << 2
CPU3 = 1 << 3
CPU4 = 1 << 4
CPU5 = 1 << 5
CPU6 = 1 << 6
CPU7 = 1 << 7

# --- typedef void* LLMHandle ------------------------------------------------
LLMHandle = ctypes.c_void_p
"""Opaque model handle; ``rkllm_init`` writes it through an ``LLMHandle*``."""

# --- Enums: C enums are 4-byte ints; the constants stay plain ints ----------
LLMCallState = ctypes.c_int
RKLLM_RUN_NORMAL = 0
"""A step produced output (normally the text of one token)."""
RKLLM_RUN_WAITING = 1
"""The step's bytes are an incomplete UTF-8 character; join with the next step."""
RKLLM_RUN_FINISH = 2
"""The run finished; ``RKLLMResult.perf`` is filled in this state only."""
RKLLM_RUN_ERROR = 3
"""The run failed."""

RKLLMInputType = ctypes.c_int
RKLLM_INPUT_PROMPT = 0
RKLLM_INPUT_TOKEN = 1
RKLLM_INPUT_EMBED = 2
RKLLM_INPUT_MULTIMODAL = 3

RKLLMInferMode = ctypes.c_int
RKLLM_INFER_GENERATE = 0
RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1
RKLLM_INFER_GET_LOGITS = 2


# --- Structs ----------------------------------------------------------------


class RKLLMExtendParam(ctypes.Structure):
    """Extended init parameters, embedded by value in :class:`RKLLMParam`."""

    _fields_ = [
        ("base_domain_id", ctypes.c_int32),  # NPU memory domain to allocate from
        ("embed_flash", ctypes.c_int8),  # 1: read word embeddings from the file
        ("enabled_cpus_num", ctypes.c_int8),
        ("enabled_cpus_mask", ctypes.c_uint32),  # CPUn bits
        ("n_batch", ctypes.c_uint8),
        ("use_cross_attn", ctypes.c_int8),
        ("reserved", ctypes.c_uint8 * 104),  # uint8_t[104]; keep zeroed
    ]
    if TYPE_CHECKING:
        base_domain_id: int
        embed_flash: int
        enabled_cpus_num: int
        enabled_cpus_mask: int
        n_batch: int
        use_cross_attn: int
        reserved: ctypes.Array[ctypes.c_uint8]


class RKLLMParam(ctypes.Structure):
    """Init parameters of one model instance; start from ``rkllm_createDefaultParam``."""

    _fields_ = [
        ("model_path", ctypes.c_char_p),  # const char*
        ("max_context_len", ctypes.c_int32),
        ("max_new_tokens", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("n_keep", ctypes.c_int32),  # KV entries kept when the window shifts
        ("top_p", ctypes.c_float),
        ("temperature", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("frequency_penalty", ctypes.c_float),
        ("presence_penalty", ctypes.c_float),
        ("mirostat", ctypes.c_int32),
        ("mirostat_tau", ctypes.c_float),
        ("mirostat_eta", ctypes.c_float),
        ("skip_special_token", ctypes.c_bool),
        ("is_async", ctypes.c_bool),
        ("img_start", ctypes.c_char_p),  # const char*, e.g. "<|vision_start|>"
        ("img_end", ctypes.c_char_p),  # const char*
        ("img_content", ctypes.c_char_p),  # const char*, the image pad token
        ("extend_param", RKLLMExtendParam),  # by value
    ]
    if TYPE_CHECKING:
        model_path: bytes | None
        max_context_len: int
        max_new_tokens: int
        top_k: int
        n_keep: int
        top_p: float
        temperature: float
        repeat_penalty: float
        frequency_penalty: float
        presence_penalty: float
        mirostat: int
        mirostat_tau: float
        mirostat_eta: float
        skip_special_token: bool
        is_async: bool
        img_start: bytes | None
        img_end: bytes | None
        img_content: bytes | None
        extend_param: RKLLMExtendParam


class RKLLMLoraAdapter(ctypes.Structure):
    """A LoRA adapter file to load with ``rkllm_load_lora``."""

    _fields_ = [
        ("lora_adapter_path", ctypes.c_char_p),  # const char*
        ("lora_adapter_name", ctypes.c_char_p),  # const char*
        ("scale", ctypes.c_float),
    ]
    if TYPE_CHECKING:
        lora_adapter_path: bytes | None
        lora_adapter_name: bytes | None
        scale: float


class RKLLMEmbedInput(ctypes.Structure):
    """Input as embeddings: ``n_tokens`` x hidden size float32, row-major."""

    _fields_ = [
        ("embed", ctypes.POINTER(ctypes.c_float)),  # float*
        ("n_tokens", ctypes.c_size_t),
    ]
    if TYPE_CHECKING:
        embed: _Pointer[ctypes.c_float]
        n_tokens: int


class RKLLMTokenInput(ctypes.Structure):
    """Input as token ids."""

    _fields_ = [
        ("input_ids", ctypes.POINTER(ctypes.c_int32)),  # int32_t*
        ("n_tokens", ctypes.c_size_t),
    ]
    if TYPE_CHECKING:
        input_ids: _Pointer[ctypes.c_int32]
        n_tokens: int


class RKLLMMultiModalInput(ctypes.Structure):
    """Text with ``<image>`` placeholders plus the images' embeddings.

    Spelled ``RKLLMMultiModelInput`` in the 1.2.1 and 1.2.2 headers.
    """

    _fields_ = [
        ("prompt", ctypes.c_char_p),  # char*
        ("image_embed", ctypes.POINTER(ctypes.c_float)),  # n_image x n_image_tokens x dim
        ("n_image_tokens", ctypes.c_size_t),  # tokens per image
        ("n_image", ctypes.c_size_t),  # number of <image> tags in the prompt
        ("image_width", ctypes.c_size_t),  # encoder input size, for M-RoPE
        ("image_height", ctypes.c_size_t),
    ]
    if TYPE_CHECKING:
        prompt: bytes | None
        image_embed: _Pointer[ctypes.c_float]
        n_image_tokens: int
        n_image: int
        image_width: int
        image_height: int


class RKLLMInputUnion(ctypes.Union):
    """The anonymous union inside :class:`RKLLMInput` (not named in C)."""

    _fields_ = [
        ("prompt_input", ctypes.c_char_p),  # const char*
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]
    if TYPE_CHECKING:
        prompt_input: bytes | None
        embed_input: RKLLMEmbedInput
        token_input: RKLLMTokenInput
        multimodal_input: RKLLMMultiModalInput


class RKLLMInput(ctypes.Structure):
    """One input of ``rkllm_run``; ``input_type`` selects the union member.

    The union is anonymous in C; ``_anonymous_`` makes its members read and
    write as if they were fields of this struct (``inp.prompt_input``).
    """

    _anonymous_ = ("_union",)
    _fields_ = [
        ("role", ctypes.c_char_p),  # const char*: "user" or "tool"
        ("enable_thinking", ctypes.c_bool),
        ("input_type", RKLLMInputType),
        ("_union", RKLLMInputUnion),  # anonymous union
    ]
    if TYPE_CHECKING:
        role: bytes | None
        enable_thinking: bool
        input_type: int
        _union: RKLLMInputUnion
        prompt_input: bytes | None
        embed_input: RKLLMEmbedInput
        token_input: RKLLMTokenInput
        multimodal_input: RKLLMMultiModalInput


class RKLLMLoraParam(ctypes.Structure):
    """Selects a loaded LoRA adapter for one run."""

    _fields_ = [
        ("lora_adapter_name", ctypes.c_char_p),  # const char*
    ]
    if TYPE_CHECKING:
        lora_adapter_name: bytes | None


class RKLLMPromptCacheParam(ctypes.Structure):
    """Asks a run to save its prompt cache to a file."""

    _fields_ = [
        ("save_prompt_cache", ctypes.c_int),  # 1: save at the end of the run
        ("prompt_cache_path", ctypes.c_char_p),  # const char*
    ]
    if TYPE_CHECKING:
        save_prompt_cache: int
        prompt_cache_path: bytes | None


class RKLLMCrossAttnParam(ctypes.Structure):
    """Encoder outputs for cross-attention decoders (``use_cross_attn = 1``)."""

    _fields_ = [
        ("encoder_k_cache", ctypes.POINTER(ctypes.c_float)),  # [layers][tokens][kv_heads][head_dim]
        ("encoder_v_cache", ctypes.POINTER(ctypes.c_float)),  # [layers][kv_heads][head_dim][tokens]
        ("encoder_mask", ctypes.POINTER(ctypes.c_float)),  # [tokens]
        ("encoder_pos", ctypes.POINTER(ctypes.c_int32)),  # [tokens]
        ("num_tokens", ctypes.c_int),
    ]
    if TYPE_CHECKING:
        encoder_k_cache: _Pointer[ctypes.c_float]
        encoder_v_cache: _Pointer[ctypes.c_float]
        encoder_mask: _Pointer[ctypes.c_float]
        encoder_pos: _Pointer[ctypes.c_int32]
        num_tokens: int


class RKLLMInferParam(ctypes.Structure):
    """Parameters of one run; NULL pointers mean "not used".

    Sampling and ``max_new_tokens`` cannot change per run in 1.2: the values
    given to ``rkllm_init`` apply to every run.
    """

    _fields_ = [
        ("mode", RKLLMInferMode),
        ("lora_params", ctypes.POINTER(RKLLMLoraParam)),  # NULL: no LoRA
        ("prompt_cache_params", ctypes.POINTER(RKLLMPromptCacheParam)),  # NULL: do not save
        ("keep_history", ctypes.c_int),  # 1: keep the KV cache for the next turn
    ]
    if TYPE_CHECKING:
        mode: int
        lora_params: _Pointer[RKLLMLoraParam]
        prompt_cache_params: _Pointer[RKLLMPromptCacheParam]
        keep_history: int


class RKLLMResultLastHiddenLayer(ctypes.Structure):
    """Last-layer hidden states (``RKLLM_INFER_GET_LAST_HIDDEN_LAYER``); callback-only."""

    _fields_ = [
        ("hidden_states", ctypes.POINTER(ctypes.c_float)),  # const float*, num_tokens x embd_size
        ("embd_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]
    if TYPE_CHECKING:
        hidden_states: _Pointer[ctypes.c_float]
        embd_size: int
        num_tokens: int


class RKLLMResultLogits(ctypes.Structure):
    """Logits (``RKLLM_INFER_GET_LOGITS``); valid in the callback only."""

    _fields_ = [
        ("logits", ctypes.POINTER(ctypes.c_float)),  # const float*, num_tokens x vocab_size
        ("vocab_size", ctypes.c_int),
        ("num_tokens", ctypes.c_int),
    ]
    if TYPE_CHECKING:
        logits: _Pointer[ctypes.c_float]
        vocab_size: int
        num_tokens: int


class RKLLMPerfStat(ctypes.Structure):
    """Timings and peak memory of a run, filled at ``RKLLM_RUN_FINISH``."""

    _fields_ = [
        ("prefill_time_ms", ctypes.c_float),
        ("prefill_tokens", ctypes.c_int),
        ("generate_time_ms", ctypes.c_float),
        ("generate_tokens", ctypes.c_int),
        ("memory_usage_mb", ctypes.c_float),  # VmHWM
    ]
    if TYPE_CHECKING:
        prefill_time_ms: float
        prefill_tokens: int
        generate_time_ms: float
        generate_tokens: int
        memory_usage_mb: float


class RKLLMResult(ctypes.Structure):
    """What the result callback receives; copy out before returning from it."""

    _fields_ = [
        ("text", ctypes.c_char_p),  # const char*; may be NULL
        ("token_id", ctypes.c_int32),  # negative in batch mode: that row finished
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),  # by value, despite the header comment
    ]
    if TYPE_CHECKING:
        text: bytes | None
        token_id: int
        last_hidden_layer: RKLLMResultLastHiddenLayer
        logits: RKLLMResultLogits
        perf: RKLLMPerfStat


# --- Callback type ----------------------------------------------------------
# Keep a Python reference to the instance for as long as the runtime can call
# it: ctypes frees the trampoline when the object is collected.

LLMResultCallback = ctypes.CFUNCTYPE(
    ctypes.c_int,  # 0 continue, 1 pause (int since 1.2.1; void before)
    ctypes.POINTER(RKLLMResult),  # RKLLMResult* result
    ctypes.c_void_p,  # void* userdata
    LLMCallState,  # LLMCallState state
)
"""``int (*)(RKLLMResult* result, void* userdata, LLMCallState state)``."""


# --- Functions --------------------------------------------------------------


def _bind(
    cdll: ctypes.CDLL,
    name: str,
    argtypes: Sequence[type[Any]],
    restype: type[Any] | None,
) -> Callable[..., Any]:
    """Look up one exported function and declare its C prototype.

    ``cdll[name]`` makes a fresh function object, unlike ``cdll.name``, which
    is cached on the CDLL: prototypes set here cannot leak into other
    bindings of the same library.
    """
    try:
        function = cdll[name]
    except AttributeError:
        library = cdll._name or "the main program"
        raise RuntimeLibraryError(
            f"{library} does not export {name}, which runtime 1.2.1-1.2.3 has; "
            f"it is not a librkllmrt.so of the {LINE} line"
        ) from None
    function.argtypes = list(argtypes)
    function.restype = restype
    return function


class RKLLMFunctions:
    """The exported functions of librkllmrt.so 1.2.1-1.2.3, typed, bound to one ``ctypes.CDLL``.

    Each method is the C function of the same name: arguments go straight to
    C, so pointers must be ``ctypes.byref(x)``, ``ctypes.pointer(x)`` or
    arrays, and strings must be ``bytes``. Every call but
    ``rkllm_createDefaultParam`` returns the C ``int`` status (0 success,
    -1 failure unless said otherwise). ctypes releases the GIL during each
    call.

    Args:
        cdll: the loaded library.

    Raises:
        RuntimeLibraryError: the library lacks one of the functions.
    """

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self.cdll = cdll
        handle_p = ctypes.POINTER(LLMHandle)
        c_int_p = ctypes.POINTER(ctypes.c_int)
        self._createDefaultParam = _bind(cdll, "rkllm_createDefaultParam", [], RKLLMParam)
        self._init = _bind(
            cdll,
            "rkllm_init",
            [handle_p, ctypes.POINTER(RKLLMParam), LLMResultCallback],
            ctypes.c_int,
        )
        self._load_lora = _bind(
            cdll, "rkllm_load_lora", [LLMHandle, ctypes.POINTER(RKLLMLoraAdapter)], ctypes.c_int
        )
        self._load_prompt_cache = _bind(
            cdll, "rkllm_load_prompt_cache", [LLMHandle, ctypes.c_char_p], ctypes.c_int
        )
        self._release_prompt_cache = _bind(
            cdll, "rkllm_release_prompt_cache", [LLMHandle], ctypes.c_int
        )
        self._destroy = _bind(cdll, "rkllm_destroy", [LLMHandle], ctypes.c_int)
        run_argtypes: list[type[Any]] = [
            LLMHandle,
            ctypes.POINTER(RKLLMInput),
            ctypes.POINTER(RKLLMInferParam),
            ctypes.c_void_p,
        ]
        self._run = _bind(cdll, "rkllm_run", run_argtypes, ctypes.c_int)
        self._run_async = _bind(cdll, "rkllm_run_async", run_argtypes, ctypes.c_int)
        self._abort = _bind(cdll, "rkllm_abort", [LLMHandle], ctypes.c_int)
        self._is_running = _bind(cdll, "rkllm_is_running", [LLMHandle], ctypes.c_int)
        self._clear_kv_cache = _bind(
            cdll,
            "rkllm_clear_kv_cache",
            [LLMHandle, ctypes.c_int, c_int_p, c_int_p],
            ctypes.c_int,
        )
        self._get_kv_cache_size = _bind(
            cdll, "rkllm_get_kv_cache_size", [LLMHandle, c_int_p], ctypes.c_int
        )
        self._set_chat_template = _bind(
            cdll,
            "rkllm_set_chat_template",
            [LLMHandle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p],
            ctypes.c_int,
        )
        self._set_function_tools = _bind(
            cdll,
            "rkllm_set_function_tools",
            [LLMHandle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p],
            ctypes.c_int,
        )
        self._set_cross_attn_params = _bind(
            cdll,
            "rkllm_set_cross_attn_params",
            [LLMHandle, ctypes.POINTER(RKLLMCrossAttnParam)],
            ctypes.c_int,
        )

    def rkllm_createDefaultParam(self) -> RKLLMParam:
        """Return an :class:`RKLLMParam` filled with the runtime's defaults.

        ``RKLLMParam rkllm_createDefaultParam();``

        The struct comes back by value. Documented defaults: top_k 40, top_p
        0.9, temperature 0.8, repeat_penalty 1.1, enabled_cpus_num 4, n_batch
        1; set every other field explicitly.
        """
        param: RKLLMParam = self._createDefaultParam()
        return param

    def rkllm_init(
        self,
        handle: CPointer[LLMHandle],
        param: CPointer[RKLLMParam],
        callback: CFuncPtr,
        /,
    ) -> int:
        """Load the model file and bind the result callback.

        ``int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);``

        Slow (seconds to tens of seconds). On success ``*handle`` holds the new
        handle. ``callback`` is an :data:`LLMResultCallback` instance, passed
        by value; it must stay referenced until ``rkllm_destroy``.
        """
        return int(self._init(handle, param, callback))

    def rkllm_load_lora(
        self, handle: LLMHandle | int, lora_adapter: CPointer[RKLLMLoraAdapter], /
    ) -> int:
        """Load one LoRA adapter; a run selects it through ``RKLLMInferParam.lora_params``.

        ``int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter* lora_adapter);``
        """
        return int(self._load_lora(handle, lora_adapter))

    def rkllm_load_prompt_cache(self, handle: LLMHandle | int, prompt_cache_path: bytes, /) -> int:
        """Load a prompt-cache file saved by an earlier run.

        ``int rkllm_load_prompt_cache(LLMHandle handle, const char* prompt_cache_path);``
        """
        return int(self._load_prompt_cache(handle, prompt_cache_path))

    def rkllm_release_prompt_cache(self, handle: LLMHandle | int, /) -> int:
        """Drop the loaded prompt cache.

        ``int rkllm_release_prompt_cache(LLMHandle handle);``
        """
        return int(self._release_prompt_cache(handle))

    def rkllm_destroy(self, handle: LLMHandle | int, /) -> int:
        """Free the instance's CPU and NPU resources; the handle is invalid afterwards.

        ``int rkllm_destroy(LLMHandle handle);``
        """
        return int(self._destroy(handle))

    def rkllm_run(
        self,
        handle: LLMHandle | int,
        rkllm_input: CPointer[RKLLMInput],
        rkllm_infer_params: CPointer[RKLLMInferParam],
        userdata: CVoidPointer,
        /,
    ) -> int:
        """Run prefill and decode, calling the result callback for every step.

        ``int rkllm_run(LLMHandle handle, RKLLMInput* rkllm_input,
        RKLLMInferParam* rkllm_infer_params, void* userdata);``

        Blocks until the run ends; the final callback (FINISH or ERROR) comes
        before it returns. ``userdata`` reaches the callback unchanged. With
        ``n_batch > 1``, ``rkllm_input`` points to an array of ``n_batch``
        inputs.
        """
        return int(self._run(handle, rkllm_input, rkllm_infer_params, userdata))

    def rkllm_run_async(
        self,
        handle: LLMHandle | int,
        rkllm_input: CPointer[RKLLMInput],
        rkllm_infer_params: CPointer[RKLLMInferParam],
        userdata: CVoidPointer,
        /,
    ) -> int:
        """Start a run and return at once; callbacks come from a runtime thread.

        ``int rkllm_run_async(LLMHandle handle, RKLLMInput* rkllm_input,
        RKLLMInferParam* rkllm_infer_params, void* userdata);``

        Historically unreliable (no official demo uses it); prefer
        ``rkllm_run`` on a worker thread.
        """
        return int(self._run_async(handle, rkllm_input, rkllm_infer_params, userdata))

    def rkllm_abort(self, handle: LLMHandle | int, /) -> int:
        """Ask the running task to stop; meant to be called from another thread.

        ``int rkllm_abort(LLMHandle handle);``

        The stop is not immediate (it can wait for the current prefill); wait
        for ``rkllm_run`` to return.
        """
        return int(self._abort(handle))

    def rkllm_is_running(self, handle: LLMHandle | int, /) -> int:
        """Return 1 while a task runs and 0 when idle.

        ``int rkllm_is_running(LLMHandle handle);``

        The 1.2 header comment says the opposite; the maintainers confirmed
        that was a documentation error (fixed in the 1.3.0 header).
        """
        return int(self._is_running(handle))

    def rkllm_clear_kv_cache(
        self,
        handle: LLMHandle | int,
        keep_system_prompt: int,
        start_pos: CPointer[ctypes.c_int] | None,
        end_pos: CPointer[ctypes.c_int] | None,
        /,
    ) -> int:
        """Clear all of the KV cache, or position ranges of it.

        ``int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt,
        int* start_pos, int* end_pos);``

        Args:
            handle: the instance.
            keep_system_prompt: 1 keeps the system prompt when clearing everything.
            start_pos: None (NULL) to clear everything; else one inclusive start
                per batch row.
            end_pos: None (NULL) to clear everything; else one exclusive end per
                batch row. Ranges apply only with ``keep_history == 0`` after a
                run paused by returning 1 from the callback.
        """
        return int(self._clear_kv_cache(handle, keep_system_prompt, start_pos, end_pos))

    def rkllm_get_kv_cache_size(
        self, handle: LLMHandle | int, cache_sizes: CPointer[ctypes.c_int], /
    ) -> int:
        """Write the number of cached positions of each batch row into ``cache_sizes``.

        ``int rkllm_get_kv_cache_size(LLMHandle handle, int* cache_sizes);``

        ``cache_sizes`` must have room for ``n_batch`` ints.
        """
        return int(self._get_kv_cache_size(handle, cache_sizes))

    def rkllm_set_chat_template(
        self,
        handle: LLMHandle | int,
        system_prompt: bytes | None,
        prompt_prefix: bytes | None,
        prompt_postfix: bytes | None,
        /,
    ) -> int:
        """Replace the chat template parsed from the model at conversion time.

        ``int rkllm_set_chat_template(LLMHandle handle, const char* system_prompt,
        const char* prompt_prefix, const char* prompt_postfix);``

        Once set, ``RKLLMInput.enable_thinking`` has no effect.
        """
        return int(self._set_chat_template(handle, system_prompt, prompt_prefix, prompt_postfix))

    def rkllm_set_function_tools(
        self,
        handle: LLMHandle | int,
        system_prompt: bytes | None,
        tools: bytes | None,
        tool_response_str: bytes | None,
        /,
    ) -> int:
        """Enable function calling with an OpenAI-style JSON array of tools.

        ``int rkllm_set_function_tools(LLMHandle handle, const char* system_prompt,
        const char* tools, const char* tool_response_str);``

        ``tool_response_str`` is the tag that marks tool results; results are
        then sent as inputs with ``role = b"tool"``.
        """
        return int(self._set_function_tools(handle, system_prompt, tools, tool_response_str))

    def rkllm_set_cross_attn_params(
        self, handle: LLMHandle | int, cross_attn_params: CPointer[RKLLMCrossAttnParam], /
    ) -> int:
        """Feed encoder K/V, mask and positions to a cross-attention decoder.

        ``int rkllm_set_cross_attn_params(LLMHandle handle,
        RKLLMCrossAttnParam* cross_attn_params);``
        """
        return int(self._set_cross_attn_params(handle, cross_attn_params))
