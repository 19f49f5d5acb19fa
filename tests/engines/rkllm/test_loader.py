"""Finding librkllmrt.so, detecting its runtime line, and vetting the model path.

Tests that need a real shared library compile a tiny fake of librkllmrt.so
with the system C compiler (skipped when there is none): it exports every
rkllm_* function and embeds the version text the real runtime carries.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from rkstream.engines.rkllm import abi_1_2, abi_1_3, loader
from rkstream.engines.rkllm.loader import (
    LIBRARY_NAME,
    SUPPORTED,
    candidate_paths,
    check_model_file,
    default_lib_dirs,
    detect_version,
    line_of_version,
    load_runtime,
)
from rkstream.errors import ConfigError, ModelFileError, RuntimeLibraryError, RuntimeVersionError

# Every function both lines export, minus the two the fake defines with a body.
PLAIN_FUNCTIONS = (
    "rkllm_load_lora",
    "rkllm_load_prompt_cache",
    "rkllm_release_prompt_cache",
    "rkllm_destroy",
    "rkllm_run",
    "rkllm_run_async",
    "rkllm_is_running",
    "rkllm_clear_kv_cache",
    "rkllm_get_kv_cache_size",
    "rkllm_set_chat_template",
    "rkllm_set_function_tools",
    "rkllm_set_cross_attn_params",
)

FAKE_HANDLE = 0x1234

# RKLLMParam is 184 bytes in 1.3 and 208 in 1.2; top_k sits at offset 16 in both.
FAKE_SOURCE = """
#include <stdint.h>
#include <string.h>

const char rkstream_fake_banner[] = "%(banner)s";

typedef struct { void* model_path; char rest[%(rest)d]; } FakeParam;

FakeParam rkllm_createDefaultParam(void) {
    FakeParam param;
    int32_t top_k = 40;
    memset(&param, 0, sizeof param);
    memcpy((char*)&param + 16, &top_k, sizeof top_k);
    return param;
}

int rkllm_init(void** handle, void* param, void* callback) {
    (void)param; (void)callback;
    *handle = (void*)%(handle)d;
    return 0;
}

int rkllm_abort(void* handle) { return handle == (void*)%(handle)d ? 0 : -1; }
%(plain)s
"""

FakeLibrary = Callable[..., Path]


@pytest.fixture(scope="session")
def fake_library(tmp_path_factory: pytest.TempPathFactory) -> FakeLibrary:
    """Build (once per variant) a directory holding a fake librkllmrt.so."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a fake librkllmrt.so")
    built: dict[tuple[str, int], Path] = {}

    def build(banner: str = "rkllm-runtime version: 1.3.0", param_size: int = 184) -> Path:
        key = (banner, param_size)
        if key not in built:
            directory = tmp_path_factory.mktemp("fakelib")
            source = directory / "fake.c"
            plain = "\n".join(f"int {name}() {{ return 0; }}" for name in PLAIN_FUNCTIONS)
            source.write_text(
                FAKE_SOURCE
                % {"banner": banner, "rest": param_size - 8, "handle": FAKE_HANDLE, "plain": plain}
            )
            library = directory / LIBRARY_NAME
            subprocess.run(
                [compiler, "-shared", "-fPIC", "-o", str(library), str(source)],
                check=True,
                timeout=120,
            )
            built[key] = directory
        return built[key]

    return build


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def system_has_runtime() -> bool:
    try:
        ctypes.CDLL(LIBRARY_NAME)
    except OSError:
        return False
    return True


# --- candidate_paths / default_lib_dirs --------------------------------------


def test_candidates_are_lib_dirs_then_system_name(tmp_path: Path) -> None:
    """Without a configured path: each lib dir's librkllmrt.so, then the bare name."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert candidate_paths(None, [first, second, first]) == [
        first / LIBRARY_NAME,
        second / LIBRARY_NAME,
        LIBRARY_NAME,
    ]


def test_empty_configured_path_means_unset(tmp_path: Path) -> None:
    """An empty rkllm.library searches like an unset one."""
    assert candidate_paths("", [tmp_path]) == [tmp_path / LIBRARY_NAME, LIBRARY_NAME]


def test_configured_path_is_the_only_candidate(tmp_path: Path) -> None:
    """A configured library that exists is tried alone."""
    library = write(tmp_path / "custom.so", b"x")
    assert candidate_paths(str(library), [tmp_path / "lib"]) == [library]


def test_configured_missing_path_is_refused(tmp_path: Path) -> None:
    """A configured path that does not exist stops the search with its name."""
    missing = tmp_path / "nope" / LIBRARY_NAME
    with pytest.raises(RuntimeLibraryError, match="does not exist") as info:
        candidate_paths(missing, [tmp_path])
    assert f"rkllm.library = '{missing}'" in str(info.value)


def test_configured_directory_is_refused(tmp_path: Path) -> None:
    """A configured directory is refused with the fix."""
    with pytest.raises(RuntimeLibraryError, match="is a directory"):
        candidate_paths(tmp_path, [])


def test_default_lib_dirs_are_repo_lib_then_cwd_lib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository's lib/ comes first, then ./lib, without duplicates."""
    repo_lib = Path(__file__).resolve().parents[3] / "lib"
    monkeypatch.chdir(tmp_path)
    assert default_lib_dirs() == [repo_lib, tmp_path.resolve() / "lib"]
    monkeypatch.chdir(repo_lib.parent)
    assert default_lib_dirs() == [repo_lib]


# --- detect_version / line_of_version ----------------------------------------


@pytest.mark.parametrize(
    ("content", "version"),
    [
        (b"\x00junk rkllm-runtime version: 1.3.0\x00", "1.3.0"),
        (b"\x7fELF...rkllm-runtime version: 1.2.3, rknpu driver", "1.2.3"),
        (b"rkllm-runtime version: 1.2.1b1\x00", "1.2.1b1"),
        (b"rkllm-runtime version v1.2.2\x00", "1.2.2"),
        (b"\x00nothing to see\x00", None),
        (b"rkllm-runtime version: %s\x00", None),
        (b"", None),
    ],
)
def test_detect_version(tmp_path: Path, content: bytes, version: str | None) -> None:
    """The version is read from the text the runtime embeds, or None."""
    assert detect_version(write(tmp_path / LIBRARY_NAME, content)) == version


def test_detect_version_deep_in_a_large_file(tmp_path: Path) -> None:
    """The text is found far into a file of library size."""
    library = tmp_path / LIBRARY_NAME
    with open(library, "wb") as file:
        file.seek(40 * 1024 * 1024)  # sparse: no 40 MB actually written
        file.write(b"\x00rkllm-runtime version: 1.3.0\x00")
    assert detect_version(library) == "1.3.0"


@pytest.mark.parametrize(
    ("version", "line"),
    [
        ("1.3.0", "1.3"),
        ("1.3.1", "1.3"),
        ("1.3.1b1", "1.3"),
        ("1.2.1", "1.2"),
        ("1.2.2", "1.2"),
        ("1.2.3", "1.2"),
        ("1.2.2b1", "1.2"),
    ],
)
def test_supported_versions(version: str, line: str) -> None:
    """1.3.x and 1.2.1-1.2.3 map to their ABI line."""
    assert line_of_version(version) == line


@pytest.mark.parametrize(
    "version",
    ["1.0.1", "1.1.4", "1.2.0", "1.2.1b1", "1.2.4", "1.3.0b1", "1.4.0", "2.0.0", "1.3"],
)
def test_unsupported_versions(version: str) -> None:
    """Other versions are refused with the supported lines and the fix."""
    with pytest.raises(RuntimeVersionError) as info:
        line_of_version(version)
    message = str(info.value)
    assert version in message
    if version != "1.3":
        assert "1.3.x, or 1.2.1-1.2.3" in message
        assert "rkllm-toolkit version" in message


def test_supported_lines_have_their_modules() -> None:
    assert SUPPORTED == {"1.3": abi_1_3, "1.2": abi_1_2}


# --- load_runtime without a library ------------------------------------------


def test_nothing_found_lists_every_path_tried(tmp_path: Path) -> None:
    """With no library anywhere, the error names each place and the fix."""
    if system_has_runtime():
        pytest.skip("this machine has librkllmrt.so on the system path")
    with pytest.raises(RuntimeLibraryError) as info:
        load_runtime(None, "auto", lib_dirs=[tmp_path])
    message = str(info.value)
    assert f"{tmp_path / LIBRARY_NAME} (not found)" in message
    assert f"{LIBRARY_NAME} (not on the system library path)" in message
    assert "set rkllm.library in config.toml" in message
    assert "make -C lib" in message


def test_configured_file_that_is_no_library(tmp_path: Path) -> None:
    """A configured file that cannot be loaded is reported, never silently skipped."""
    bogus = write(tmp_path / LIBRARY_NAME, b"not an ELF file")
    with pytest.raises(RuntimeLibraryError) as info:
        load_runtime(bogus, "auto", lib_dirs=[tmp_path / "empty"])
    assert f"{bogus} (cannot be loaded:" in str(info.value)
    assert "tried" in str(info.value)


def test_unknown_runtime_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rkllm.runtime = '1.1'"):
        load_runtime(None, cast(Any, "1.1"), lib_dirs=[tmp_path])


# --- load_runtime with a fake library ----------------------------------------


def test_auto_binds_1_3(fake_library: FakeLibrary) -> None:
    """A 1.3.0 library found in a lib dir is bound with abi_1_3 and works."""
    directory = fake_library()
    runtime = load_runtime(None, "auto", lib_dirs=[directory.parent / "missing", directory])
    assert runtime.path == directory / LIBRARY_NAME
    assert (runtime.line, runtime.version) == ("1.3", "1.3.0")
    assert runtime.abi is abi_1_3
    functions = runtime.functions
    assert isinstance(functions, abi_1_3.RKLLMFunctions)
    assert functions.rkllm_createDefaultParam().top_k == 40
    handle = abi_1_3.LLMHandle()
    param = abi_1_3.RKLLMParam()
    callbacks = abi_1_3.RKLLMCallback()
    assert (
        functions.rkllm_init(ctypes.byref(handle), ctypes.byref(param), ctypes.byref(callbacks))
        == 0
    )
    assert handle.value == FAKE_HANDLE
    assert functions.rkllm_abort(handle) == 0
    assert functions.rkllm_clear_kv_cache(handle, 1, None, None) == 0


def test_configured_1_2_library(fake_library: FakeLibrary) -> None:
    """A configured 1.2.3 library is bound with abi_1_2 (208-byte RKLLMParam)."""
    directory = fake_library("rkllm-runtime version: 1.2.3", 208)
    runtime = load_runtime(str(directory / LIBRARY_NAME), "auto", lib_dirs=[])
    assert (runtime.line, runtime.version, runtime.abi) == ("1.2", "1.2.3", abi_1_2)
    functions = runtime.functions
    assert isinstance(functions, abi_1_2.RKLLMFunctions)
    assert functions.rkllm_createDefaultParam().top_k == 40
    handle = abi_1_2.LLMHandle()
    param = abi_1_2.RKLLMParam()
    callback = abi_1_2.LLMResultCallback(lambda result, userdata, state: 0)
    assert functions.rkllm_init(ctypes.byref(handle), ctypes.byref(param), callback) == 0
    assert handle.value == FAKE_HANDLE


def test_forced_line_must_match_the_detected_version(fake_library: FakeLibrary) -> None:
    """Forcing 1.2 onto a 1.3.0 library is refused instead of crashing later."""
    library = fake_library() / LIBRARY_NAME
    with pytest.raises(RuntimeVersionError, match=r'rkllm.runtime = "1.2"'):
        load_runtime(library, "1.2")
    assert load_runtime(library, "1.3").line == "1.3"


def test_forced_line_without_a_version(fake_library: FakeLibrary) -> None:
    """A library that names no version needs a forced line; auto refuses it."""
    library = fake_library("no banner here") / LIBRARY_NAME
    with pytest.raises(RuntimeVersionError, match="could not detect the runtime version"):
        load_runtime(library, "auto")
    runtime = load_runtime(library, "1.3")
    assert (runtime.line, runtime.version) == ("1.3", None)


def test_unsupported_library_version(fake_library: FakeLibrary) -> None:
    """A 1.1.4 library is refused, naming the file and the version."""
    library = fake_library("rkllm-runtime version: 1.1.4", 200) / LIBRARY_NAME
    with pytest.raises(RuntimeVersionError, match="1.1.4") as info:
        load_runtime(library, "auto")
    assert str(library) in str(info.value)


def test_loaded_file_is_resolved_from_the_process_maps(fake_library: FakeLibrary) -> None:
    """The file behind a loaded library is found (used for the bare system name)."""
    library = fake_library() / LIBRARY_NAME
    cdll = ctypes.CDLL(str(library))
    assert loader._loaded_file(cdll) == library.resolve()


# --- check_model_file ---------------------------------------------------------


def test_good_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A readable file is accepted and returned resolved."""
    model = write(tmp_path / "qwen.rkllm", b"RKLLM\x00\x01")
    monkeypatch.chdir(tmp_path)
    assert check_model_file("qwen.rkllm") == model.resolve()


def test_empty_model_path() -> None:
    with pytest.raises(ModelFileError, match="set rkllm.model to the path of your .rkllm"):
        check_model_file("")


def test_missing_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        check_model_file(tmp_path / "missing.rkllm")


def test_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="is a directory"):
        check_model_file(tmp_path)


def test_empty_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="empty file"):
        check_model_file(write(tmp_path / "m.rkllm", b""))


def test_rknn_given_as_model(tmp_path: Path) -> None:
    """An .rknn vision model is refused with what to pass instead."""
    model = write(tmp_path / "vision.rknn", b"RKNN\x00\x00\x00\x06")
    with pytest.raises(ModelFileError) as info:
        check_model_file(model)
    message = str(info.value)
    assert "is an RKNN vision model (.rknn), not a language model" in message
    assert "pass the .rkllm file as rkllm.model and the .rknn as the vision encoder" in message


def test_unreadable_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write(tmp_path / "m.rkllm", b"data")
    real_open = open

    def refuse(file: Any, *args: Any, **kwargs: Any) -> Any:
        # chmod 0 does not stop root, so the refusal is simulated at open().
        if Path(file) == model:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(ModelFileError, match="cannot be read .Permission denied."):
        check_model_file(model)
