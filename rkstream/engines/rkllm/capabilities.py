"""What each RKLLM runtime line can do, as data.

``abi_1_3`` and ``abi_1_2`` mirror the C headers; this module says what
their differences mean to the engine. The loader puts the line's
capabilities on :class:`~rkstream.engines.rkllm.loader.RuntimeLibrary`, and
the engine reads ``runtime.caps`` instead of probing the ABI module or
comparing version strings. ``tests/engines/rkllm/test_capabilities.py``
checks each line's values against its ABI module.

Both supported lines' result callbacks return ``int`` (0 continue, 1 pause),
which the engine relies on to stop a run; runtimes whose callback returns
``void`` (1.2.0, 1.2.1b1) are refused by the loader, so that is no field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from rkstream.errors import RuntimeVersionError

RuntimeLine: TypeAlias = Literal["1.2", "1.3"]
"""A supported runtime line; selects the ABI module and the capabilities."""


@dataclass(frozen=True)
class RuntimeCapabilities:
    """How one runtime line differs from the others, seen from the engine.

    Attributes:
        line: the runtime line these describe.
        per_run_sampling: ``RKLLMInferParam`` takes sampling for each run;
            otherwise the init-time sampling applies to every request.
        per_run_max_new_tokens: ``RKLLMInferParam`` takes ``max_new_tokens``
            for each run; otherwise the init-time value is a hard cap on
            every run, whatever the request asks for.
        image_tags_at_init: the image tag strings go in ``RKLLMParam`` once,
            at init; otherwise they go with each multimodal run.
        nested_image_input: ``RKLLMMultiModalInput`` holds the image fields
            in a nested ``image`` struct; otherwise they are its own fields.
        callbacks_in_struct: ``rkllm_init`` takes an ``RKLLMCallback*``;
            otherwise it takes the result callback itself.
        hidden_states_return: what the result callback returns once it has
            copied the hidden states of RKLLM_INFER_GET_LAST_HIDDEN_LAYER:
            2 on 1.3 releases the runtime's output buffer at once (rknn-llm
            #504); 1.2 has no such value (0: go on).
        notes: what clients should know about serving on this line, shown
            in the model info.
    """

    line: RuntimeLine
    per_run_sampling: bool
    per_run_max_new_tokens: bool
    image_tags_at_init: bool
    nested_image_input: bool
    callbacks_in_struct: bool
    hidden_states_return: int = 0
    notes: tuple[str, ...] = ()


LINE_1_3: Final = RuntimeCapabilities(
    line="1.3",
    per_run_sampling=True,
    per_run_max_new_tokens=True,
    image_tags_at_init=False,
    nested_image_input=True,
    callbacks_in_struct=True,
    hidden_states_return=2,
)

LINE_1_2: Final = RuntimeCapabilities(
    line="1.2",
    per_run_sampling=False,
    per_run_max_new_tokens=False,
    image_tags_at_init=True,
    nested_image_input=False,
    callbacks_in_struct=False,
    notes=(
        "runtime 1.2 has no per-request sampling: temperature, top_p, top_k and the "
        "penalties use the server's configured values; max_tokens is still honoured",
    ),
)

CAPABILITIES: Final[Mapping[str, RuntimeCapabilities]] = {"1.3": LINE_1_3, "1.2": LINE_1_2}
"""The capabilities of each supported runtime line."""


def capabilities_of(line: str) -> RuntimeCapabilities:
    """Return the capabilities of a runtime line.

    Raises:
        RuntimeVersionError: ``line`` is not a supported line.
    """
    try:
        return CAPABILITIES[line]
    except KeyError:
        raise RuntimeVersionError(
            f"runtime line '{line}' is not supported; rkstream supports "
            f"{', '.join(CAPABILITIES)}") from None
