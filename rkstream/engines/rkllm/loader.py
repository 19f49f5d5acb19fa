"""Find librkllmrt.so, tell which runtime line it is, and bind the matching ABI.

The 1.2 and 1.3 runtimes export the same function names with incompatible
structs and an incompatible ``rkllm_init``: binding the wrong module does not
fail, it crashes the process. So the line is taken from the version string
inside the library file before anything is called, and a library whose
version is unknown, unsupported, or disagrees with a forced line is refused.

Search order: the configured ``rkllm.library`` path (authoritative: if it is
set, nothing else is tried), then ``librkllmrt.so`` in each lib directory
(the repository's ``lib/``, then ``./lib``), then the bare name for the
system loader (``LD_LIBRARY_PATH``, ``/etc/ld.so.conf``, ``/usr/lib``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import rkstream
from rkstream.engines.rkllm import abi_1_2, abi_1_3
from rkstream.engines.rkllm.capabilities import RuntimeCapabilities, RuntimeLine, capabilities_of
from rkstream.errors import ConfigError, ModelFileError, RuntimeLibraryError, RuntimeVersionError
from rkstream.log import engine_log

LIBRARY_NAME: Final = "librkllmrt.so"
"""File name of the RKLLM runtime library."""

SUPPORTED: Final[Mapping[str, types.ModuleType]] = {"1.3": abi_1_3, "1.2": abi_1_2}
"""The ABI module of each supported runtime line."""

_SUPPORTED_TEXT: Final = "1.3.x, or 1.2.1-1.2.3"

_VERSION_IN_FILE: Final = re.compile(rb"rkllm-runtime version:? v?(\d+\.\d+\.\d+(?:b\d+)?)")
_VERSION: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:b(\d+))?")

_NOT_FOUND_FIX: Final = (
    "set rkllm.library in config.toml or copy librkllmrt.so into lib/; to develop "
    "without a board build the stand-in with `make -C lib` and run `rkstream serve --standin`"
)


@dataclass(frozen=True)
class RuntimeLibrary:
    """A loaded librkllmrt.so bound to the ABI module of its runtime line.

    Attributes:
        path: the library file (the bare name ``librkllmrt.so`` only if the
            system loader found it and its file could not be resolved).
        line: the runtime line, which selects ``abi`` and ``caps``.
        version: the full version found in the file, e.g. ``"1.3.0"``; None
            when the line was forced by config and the file names none.
        cdll: the loaded library.
        abi: ``abi_1_3`` or ``abi_1_2``: the structs, constants and callback
            types to use with ``functions``.
        functions: ``abi.RKLLMFunctions`` bound to ``cdll``.
        caps: what the line can do; read these rather than probing ``abi``.
    """

    path: Path
    line: RuntimeLine
    version: str | None
    cdll: ctypes.CDLL
    abi: types.ModuleType
    functions: abi_1_3.RKLLMFunctions | abi_1_2.RKLLMFunctions
    caps: RuntimeCapabilities


def default_lib_dirs() -> list[Path]:
    """Return the directories searched for librkllmrt.so before the system path.

    Returns:
        The repository's ``lib/`` (next to the ``rkstream`` package), then
        ``lib/`` of the current working directory, without duplicates.
    """
    dirs = [
        Path(rkstream.__file__).resolve().parent.parent / "lib",
        Path.cwd().resolve() / "lib",
    ]
    return list(dict.fromkeys(dirs))


def candidate_paths(
    configured: str | os.PathLike[str] | None, lib_dirs: Sequence[Path]
) -> list[Path | str]:
    """Return where to look for librkllmrt.so, in order.

    Args:
        configured: ``rkllm.library`` from the config; None or empty if unset.
        lib_dirs: directories to look in when nothing is configured.

    Returns:
        ``[configured]`` if it is set; otherwise ``librkllmrt.so`` in each
        of ``lib_dirs``, then the bare name (a ``str``) for the system
        loader's search path.

    Raises:
        RuntimeLibraryError: ``configured`` is set but does not exist or is a
            directory.
    """
    if configured is not None and os.fspath(configured) != "":
        path = Path(configured).expanduser()
        if not path.exists():
            raise RuntimeLibraryError(
                f"rkllm.library = '{path}' does not exist; set it to the path of "
                f"{LIBRARY_NAME}, or leave it empty to search lib/ and the system path"
            )
        if path.is_dir():
            raise RuntimeLibraryError(
                f"rkllm.library = '{path}' is a directory; set it to the {LIBRARY_NAME} file itself"
            )
        return [path]
    candidates: list[Path | str] = list(dict.fromkeys(d / LIBRARY_NAME for d in lib_dirs))
    candidates.append(LIBRARY_NAME)
    return candidates


def detect_version(path: Path) -> str | None:
    """Find the runtime version written inside a library file.

    The real runtime prints ``rkllm-runtime version: X`` at init, so the text
    is in its read-only data; the stand-in library in ``lib/`` embeds the
    same text. The file (tens of MB) is memory-mapped, not read whole.

    Args:
        path: the library file.

    Returns:
        The version, e.g. ``"1.3.0"`` or ``"1.2.1b1"``, or None if the file
        holds no such text.

    Raises:
        OSError: the file cannot be opened.
    """
    with open(path, "rb") as file:
        try:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
                match = _VERSION_IN_FILE.search(view)
                # Copy the group out while the map is still open.
                found = match.group(1) if match else None
        except ValueError:  # an empty file cannot be mapped
            return None
    return found.decode("ascii") if found is not None else None


def line_of_version(version: str) -> RuntimeLine:
    """Return the runtime line whose ABI module fits a runtime version.

    Accepted: every 1.3.x release, and 1.2.1, 1.2.2, 1.2.3. Betas are
    accepted only for later patch releases of a line (1.2.2b1, 1.3.1b1): a
    beta of a line's first release can predate the line's ABI, as 1.2.1b1
    does (its result callback still returns ``void``).

    Args:
        version: a version such as ``"1.3.0"`` or ``"1.2.1b1"``.

    Raises:
        RuntimeVersionError: the version is not one of the supported ones.
    """
    match = _VERSION.fullmatch(version)
    if match is None:
        raise RuntimeVersionError(
            f"'{version}' is not a runtime version (expected e.g. 1.3.0); "
            'set rkllm.runtime = "1.3" or "1.2" to match your librkllmrt.so'
        )
    major, minor, patch = (int(part) for part in match.group(1, 2, 3))
    beta = match.group(4) is not None
    if (major, minor) == (1, 3) and not (beta and patch == 0):
        return "1.3"
    if (major, minor) == (1, 2) and (2 if beta else 1) <= patch <= 3:
        return "1.2"
    if beta:
        why = "a beta of a line's first release, whose ABI is not the released one"
    elif (major, minor, patch) < (1, 2, 1):
        why = "its ABI predates 1.2.1 (other structs, and a result callback returning void)"
    else:
        why = "newer than any ABI rkstream mirrors"
    raise RuntimeVersionError(
        f"runtime version {version} is not supported ({why}); rkstream supports "
        f"{_SUPPORTED_TEXT}. Install a supported librkllmrt.so that matches the "
        "rkllm-toolkit version your .rkllm model was converted with"
    )


def load_runtime(
    configured: str | os.PathLike[str] | None,
    runtime: Literal["auto", "1.3", "1.2"],
    *,
    lib_dirs: Sequence[Path] | None = None,
) -> RuntimeLibrary:
    """Load librkllmrt.so and bind the ABI module of its runtime line.

    The first candidate of :func:`candidate_paths` that loads is used. A
    configured path is the only candidate, so a configured library that fails
    to load is an error, never a silent fallback to another library.

    Args:
        configured: ``rkllm.library``; None or empty to search.
        runtime: ``rkllm.runtime``. ``"auto"`` takes the line from the
            version inside the library. ``"1.3"``/``"1.2"`` force a line for
            a library that names no version; if it does name one, it must
            belong to the forced line.
        lib_dirs: directories to search; :func:`default_lib_dirs` if None.

    Returns:
        The loaded and bound library.

    Raises:
        ConfigError: ``runtime`` is not one of the allowed values.
        RuntimeLibraryError: no candidate exists or loads, or the library
            lacks a function of its line.
        RuntimeVersionError: the version cannot be detected with
            ``runtime="auto"``, is unsupported, or disagrees with a forced line.
    """
    if runtime not in ("auto", "1.3", "1.2"):
        raise ConfigError(f"rkllm.runtime = '{runtime}' is not one of: auto, 1.3, 1.2")
    dirs = default_lib_dirs() if lib_dirs is None else lib_dirs
    candidates = candidate_paths(configured, dirs)
    tried: list[str] = []
    loaded: tuple[Path | str, ctypes.CDLL] | None = None
    for candidate in candidates:
        if isinstance(candidate, Path) and not candidate.exists():
            tried.append(f"{candidate} (not found)")
            continue
        try:
            loaded = (candidate, ctypes.CDLL(os.fspath(candidate)))
            break
        except OSError as exc:
            if isinstance(candidate, str):
                tried.append(f"{candidate} (not on the system library path)")
            else:
                tried.append(f"{candidate} (cannot be loaded: {exc})")
                engine_log.warning("cannot load %s: %s", candidate, exc)
    if loaded is None:
        listing = "\n  ".join(tried)
        raise RuntimeLibraryError(
            f"no usable {LIBRARY_NAME}; tried:\n  {listing}\nTo fix: {_NOT_FOUND_FIX}"
        )
    candidate, cdll = loaded
    file = candidate if isinstance(candidate, Path) else _loaded_file(cdll)
    version = _version_of(file)
    shown = file if file is not None else candidate
    line = _choose_line(shown, version, runtime)
    abi = SUPPORTED[line]
    functions: abi_1_3.RKLLMFunctions | abi_1_2.RKLLMFunctions = abi.RKLLMFunctions(cdll)
    return RuntimeLibrary(
        path=Path(shown), line=line, version=version, cdll=cdll, abi=abi, functions=functions,
        caps=capabilities_of(line),
    )


def _version_of(file: Path | None) -> str | None:
    """The version inside ``file``, or None if it is unknown or unreadable."""
    if file is None:
        return None
    try:
        return detect_version(file)
    except OSError as exc:
        engine_log.warning("cannot read %s to find its runtime version: %s", file, exc)
        return None


def _choose_line(
    shown: Path | str, version: str | None, runtime: Literal["auto", "1.3", "1.2"]
) -> RuntimeLine:
    """Pick the ABI line from the detected version and ``rkllm.runtime``."""
    if version is None:
        if runtime == "auto":
            raise RuntimeVersionError(
                f"could not detect the runtime version of {shown}; "
                'set rkllm.runtime = "1.3" or "1.2"'
            )
        engine_log.warning(
            "%s names no runtime version; binding it as %s because rkllm.runtime says so",
            shown,
            runtime,
        )
        return runtime
    try:
        line = line_of_version(version)
    except RuntimeVersionError as exc:
        raise RuntimeVersionError(f"{shown}: {exc}") from exc
    if runtime != "auto" and runtime != line:
        # Binding the wrong line does not fail cleanly: it crashes in rkllm_init.
        raise RuntimeVersionError(
            f"{shown} is runtime {version} (line {line}), but rkllm.runtime = "
            f'"{runtime}"; set rkllm.runtime = "{line}" or "auto", or point '
            "rkllm.library at a runtime of the line you want"
        )
    return line


def _loaded_file(cdll: ctypes.CDLL) -> Path | None:
    """The file the system loader mapped for ``cdll``, or None if unknown.

    Looks up which mapping of ``/proc/self/maps`` holds the address of
    ``rkllm_init``; falls back to ``ctypes.util.find_library``.
    """
    try:
        address = ctypes.cast(cdll["rkllm_init"], ctypes.c_void_p).value
    except AttributeError:
        address = None
    if address is not None:
        found = _mapped_file(address)
        if found is not None:
            return found
    name = ctypes.util.find_library("rkllmrt")
    if name is None:
        return None
    path = Path(name)
    return path if path.is_absolute() and path.exists() else None


def _mapped_file(address: int) -> Path | None:
    """The file mapped at ``address`` in this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for entry in maps:
                fields = entry.split(maxsplit=5)
                if len(fields) < 6 or not fields[5].startswith("/"):
                    continue
                start, _, end = fields[0].partition("-")
                if int(start, 16) <= address < int(end, 16):
                    return Path(fields[5].rstrip("\n"))
    except OSError:
        return None
    return None


def check_model_file(path: str | os.PathLike[str]) -> Path:
    """Refuse a model path that ``rkllm_init`` could only fail on, or crash on.

    Args:
        path: ``rkllm.model``.

    Returns:
        The resolved path of the file.

    Raises:
        ModelFileError: the path is empty, missing, a directory, unreadable,
            an empty file, or an RKNN vision model instead of an .rkllm file.
    """
    if os.fspath(path) == "":
        raise ModelFileError(
            "no language model is set; set rkllm.model to the path of your .rkllm file"
        )
    model = Path(path).expanduser()
    if not model.exists():
        raise ModelFileError(
            f"rkllm.model = '{model}' does not exist; set rkllm.model to the path of "
            "your .rkllm file"
        )
    if model.is_dir():
        raise ModelFileError(
            f"rkllm.model = '{model}' is a directory; set rkllm.model to the .rkllm file inside it"
        )
    try:
        with open(model, "rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ModelFileError(
            f"rkllm.model = '{model}' cannot be read ({exc.strerror or exc}); make the "
            "file readable by the user running rkstream"
        ) from exc
    if magic == b"":
        raise ModelFileError(
            f"rkllm.model = '{model}' is an empty file; copy or convert the .rkllm model again"
        )
    if magic == b"RKNN":
        raise ModelFileError(
            f"{model} is an RKNN vision model (.rknn), not a language model; pass the "
            ".rkllm file as rkllm.model and the .rknn as the vision encoder"
        )
    return model.resolve()
