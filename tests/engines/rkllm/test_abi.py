"""The ctypes mirrors match the layouts compiled from the real rkllm.h headers.

tests/data/rkllm_abi_1_3.json and rkllm_abi_1_2.json hold sizeof, alignof and
offsetof of every struct and member, enum values and macros, as printed by a
program compiled against each header (identical on x86-64 and aarch64).
"""

from __future__ import annotations

import ctypes
import json
import types
from pathlib import Path
from typing import Any, cast

import pytest

from rkstream.engines.rkllm import abi_1_2, abi_1_3
from rkstream.errors import RuntimeLibraryError

DATA = Path(__file__).resolve().parents[2] / "data"

MODULES = {"1.3": abi_1_3, "1.2": abi_1_2}
JSON_FILES = {"1.3": "rkllm_abi_1_3.json", "1.2": "rkllm_abi_1_2.json"}

# The header gives these struct types no name; the modules name them.
UNNAMED_STRUCTS = {
    "RKLLMMultiModalInput.image": "RKLLMImageInput",
    "RKLLMMultiModalInput.video": "RKLLMVideoInput",
}


def load_abi(line: str) -> dict[str, Any]:
    """The compiled layout of one runtime line."""
    data: dict[str, Any] = json.loads((DATA / JSON_FILES[line]).read_text())
    return data


def struct_class(module: types.ModuleType, key: str) -> type[ctypes.Structure]:
    """The class that mirrors the JSON struct ``key``."""
    cls: type[ctypes.Structure] = getattr(module, UNNAMED_STRUCTS.get(key, key))
    return cls


def field_layout(cls: type[ctypes.Structure], name: str) -> tuple[int, int]:
    """(offset, size) of a member, reaching anonymous union members through the union."""
    if hasattr(cls, "_anonymous_"):
        for union_field in cls._anonymous_:
            union = getattr(cls, union_field)
            union_type: Any = {entry[0]: entry[1] for entry in cls._fields_}[union_field]
            if hasattr(union_type, name):
                member = getattr(union_type, name)
                return int(union.offset) + int(member.offset), int(member.size)
    field = getattr(cls, name)
    return int(field.offset), int(field.size)


def declared_fields(cls: type[ctypes.Structure]) -> list[str]:
    """Member names as C sees them, anonymous unions flattened."""
    names: list[str] = []
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for entry in cls._fields_:
        name, ctype = entry[0], cast(Any, entry[1])
        if name in anonymous:
            names.extend(member[0] for member in ctype._fields_)
        else:
            names.append(name)
    return names


def struct_cases() -> list[tuple[str, str]]:
    return [(line, key) for line in MODULES for key in load_abi(line)["structs"]]


@pytest.mark.parametrize(("line", "key"), struct_cases())
def test_struct_size_and_alignment(line: str, key: str) -> None:
    """Every struct has the size and alignment the compiler gave it."""
    expected = load_abi(line)["structs"][key]
    cls = struct_class(MODULES[line], key)
    assert ctypes.sizeof(cls) == expected["size"]
    assert ctypes.alignment(cls) == expected["align"]


@pytest.mark.parametrize(("line", "key"), struct_cases())
def test_struct_fields(line: str, key: str) -> None:
    """Every member sits at the compiled offset with the compiled size, in header order."""
    expected = load_abi(line)["structs"][key]
    cls = struct_class(MODULES[line], key)
    assert declared_fields(cls) == list(expected["fields"])
    for name, offset in expected["fields"].items():
        assert field_layout(cls, name) == (offset, expected["field_sizes"][name]), name


@pytest.mark.parametrize("line", list(MODULES))
def test_no_struct_beyond_the_header(line: str) -> None:
    """Each module declares exactly the header's structs (plus the anonymous union)."""
    module = MODULES[line]
    declared = {
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, ctypes.Structure)
        and value.__module__ == module.__name__
    }
    expected = {UNNAMED_STRUCTS.get(key, key) for key in load_abi(line)["structs"]}
    assert declared == expected


@pytest.mark.parametrize("line", list(MODULES))
def test_enums(line: str) -> None:
    """Every enum constant has the header's value and every enum type is 4 bytes."""
    module = MODULES[line]
    for enum_name, constants in load_abi(line)["enums"].items():
        assert ctypes.sizeof(getattr(module, enum_name)) == constants["__sizeof__"]
        for name, value in constants.items():
            if name != "__sizeof__":
                assert getattr(module, name) == value, name


@pytest.mark.parametrize("line", list(MODULES))
def test_macros(line: str) -> None:
    """CPU0..CPU7 have the header's values."""
    module = MODULES[line]
    for name, value in load_abi(line)["macros"].items():
        assert getattr(module, name) == value, name


@pytest.mark.parametrize("line", list(MODULES))
def test_line_and_json_version_agree(line: str) -> None:
    """Each module's LINE is the line of the header its JSON was compiled from."""
    version: str = load_abi(line)["version"]
    assert MODULES[line].LINE == line
    assert version.startswith(line + ".")


@pytest.mark.parametrize("line", list(MODULES))
def test_result_callback_returns_int(line: str) -> None:
    """The result callback returns int: a void prototype leaves the return register undefined."""
    callback = MODULES[line].LLMResultCallback
    assert callback._restype_ is ctypes.c_int
    assert callback._argtypes_ == (
        ctypes.POINTER(MODULES[line].RKLLMResult),
        ctypes.c_void_p,
        ctypes.c_int,
    )


def test_only_1_3_has_the_callback_struct_and_per_run_sampling() -> None:
    """The 1.3-only types are absent from the 1.2 module, so engines can feature-test."""
    for name in (
        "RKLLMCallback",
        "RKLLMSamplingParam",
        "LLMTokenizerCallback",
        "LLMGetEmbedCallback",
    ):
        assert hasattr(abi_1_3, name)
        assert not hasattr(abi_1_2, name)


def test_anonymous_union_members_read_through_the_input() -> None:
    """RKLLMInput's union members are reachable as if they were its own fields."""
    for module in MODULES.values():
        inp = module.RKLLMInput()
        inp.prompt_input = b"hello"
        assert inp.prompt_input == b"hello"
        assert inp._union.prompt_input == b"hello"


@pytest.mark.parametrize("line", list(MODULES))
def test_binding_a_library_without_the_symbols_is_refused(line: str) -> None:
    """Binding a library that lacks rkllm_* names the missing symbol."""
    process = ctypes.CDLL(None)  # the Python process itself: no rkllm_* symbols
    with pytest.raises(RuntimeLibraryError, match="rkllm_createDefaultParam"):
        MODULES[line].RKLLMFunctions(process)


@pytest.mark.parametrize("line", list(MODULES))
def test_functions_are_named_like_the_c_functions(line: str) -> None:
    """RKLLMFunctions has one public method per exported C function, same names in both lines."""
    methods = {name for name in vars(MODULES[line].RKLLMFunctions) if not name.startswith("_")}
    assert methods == {
        "rkllm_createDefaultParam",
        "rkllm_init",
        "rkllm_load_lora",
        "rkllm_load_prompt_cache",
        "rkllm_release_prompt_cache",
        "rkllm_destroy",
        "rkllm_run",
        "rkllm_run_async",
        "rkllm_abort",
        "rkllm_is_running",
        "rkllm_clear_kv_cache",
        "rkllm_get_kv_cache_size",
        "rkllm_set_chat_template",
        "rkllm_set_function_tools",
        "rkllm_set_cross_attn_params",
    }
