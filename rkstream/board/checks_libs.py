"""Doctor checks of native libraries and Python packages.

Libraries are found by looking at files, never by loading them: a wrong
librkllmrt.so crashes the process that loads it, and the doctor has to run
on exactly the set-ups that are broken.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rkstream.board.report import Check, Status
from rkstream.board.sysfs import Root
from rkstream.config import Settings
from rkstream.engines.rkllm.loader import (
    LIBRARY_NAME,
    candidate_paths,
    detect_version,
    line_of_version,
)
from rkstream.errors import RuntimeLibraryError, RuntimeVersionError

SYSTEM_LIB_DIRS = ("usr/lib", "usr/lib64", "usr/local/lib", "usr/lib/aarch64-linux-gnu",
                   "lib", "lib64", "lib/aarch64-linux-gnu")
"""Where the system loader usually finds libraries, relative to the root."""

RKNN_LIBRARY = "librknnrt.so"

ModuleProbe = Callable[[str, str], str | None]
"""``(module, distribution) -> version`` ("" if unknown), or None if not importable."""

_GET_RKLLM = ("get librkllmrt.so from airockchip/rknn-llm "
              "(rkllm-runtime/Linux/librkllm_api/aarch64/), the release matching the "
              "rkllm-toolkit your model was converted with; copy it into lib/ or set "
              "rkllm.library")


def probe_module(module: str, distribution: str) -> str | None:
    """Whether a module is importable, without importing it.

    Args:
        module: the top-level import name, e.g. ``"llama_cpp"``.
        distribution: the package that installs it, for its version.

    Returns:
        The installed version ("" if unknown), or None if it is not importable.
    """
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def split_message(message: str) -> tuple[str, str]:
    """Split an rkstream error message ``"what; what to do"`` into detail and fix."""
    detail, _, fix = message.partition("; ")
    return detail, fix


def system_lib_dirs(root: Root) -> list[Path]:
    """The directories the system loader would search, under ``root``."""
    dirs: list[Path] = []
    if root.is_system:
        dirs += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    dirs += [root.join(rel) for rel in SYSTEM_LIB_DIRS]
    return list(dict.fromkeys(dirs))


def check_rkllm_library(settings: Settings, root: Root, lib_dirs: Sequence[Path],
                        required: bool) -> list[Check]:
    """Find librkllmrt.so as the loader would (without loading it) and read its version.

    Args:
        settings: ``rkllm.library`` and ``rkllm.runtime`` are used.
        root: where the system library directories are.
        lib_dirs: rkstream's own lib/ directories, searched before the system ones.
        required: whether a missing library is a FAIL (the NPU engine is asked
            for) rather than a WARN.
    """
    name = LIBRARY_NAME
    try:
        candidates = candidate_paths(settings.rkllm.library or None, lib_dirs)
    except RuntimeLibraryError as exc:
        return [Check(name, "FAIL", *split_message(str(exc)))]
    paths = [c for c in candidates if isinstance(c, Path)]
    shown = [str(p) for p in paths]
    if any(isinstance(c, str) for c in candidates):  # the bare name: the system path
        system = system_lib_dirs(root)
        paths += [d / name for d in system]
        shown += [root.show(d / name) for d in system]
    found = next((i for i, p in enumerate(paths) if p.is_file()), None)
    if found is None:
        fix = _GET_RKLLM if required else _GET_RKLLM + "; only the NPU engine needs it"
        folders = ", ".join(s.rpartition("/")[0] or "." for s in shown)
        return [Check(name, "FAIL" if required else "WARN", f"not found in {folders}", fix)]
    return [Check(name, "OK", shown[found]),
            check_runtime(paths[found], shown[found], settings.rkllm.runtime)]


def check_runtime(path: Path, shown: str, runtime: str) -> Check:
    """The runtime version inside the library and the ABI line it selects."""
    name = "RKLLM runtime"
    try:
        version = detect_version(path)
    except OSError as exc:
        return Check(name, "WARN", f"cannot read {shown}: {exc.strerror or exc}",
                     "make the library readable by the user running rkstream")
    if version is None:
        if runtime == "auto":
            return Check(name, "WARN", f"no runtime version found inside {shown}",
                         'set rkllm.runtime = "1.3" or "1.2" to the line of this library '
                         "(a wrong line crashes in rkllm_init)")
        return Check(name, "WARN", f"no version inside; rkllm.runtime = \"{runtime}\" binds "
                     f"it as line {runtime}", "make sure the library really is a "
                     f"{runtime}.x runtime: a wrong line crashes in rkllm_init")
    try:
        line = line_of_version(version)
    except RuntimeVersionError as exc:
        return Check(name, "FAIL", *split_message(str(exc)))
    if runtime not in ("auto", line):
        return Check(name, "FAIL", f"{version} (line {line}), but rkllm.runtime = \"{runtime}\"",
                     f'set rkllm.runtime = "auto" or "{line}", or point rkllm.library at '
                     f"a {runtime}.x runtime")
    return Check(name, "OK", f"{version} (line {line})")


def check_rknn_library(root: Root, lib_dirs: Sequence[Path], needed: bool) -> Check:
    """librknnrt.so, which RKNNLite loads from the fixed path /usr/lib/librknnrt.so."""
    fixed = root.join("usr/lib") / RKNN_LIBRARY
    if fixed.is_file():
        return Check(RKNN_LIBRARY, "OK", root.show(fixed))
    elsewhere = [d / RKNN_LIBRARY for d in [*system_lib_dirs(root), *lib_dirs]]
    found = next((p for p in elsewhere if p.is_file()), None)
    status: Status = "FAIL" if needed else "WARN"
    if found is not None:
        shown = root.show(found)
        return Check(RKNN_LIBRARY, status, f"found at {shown}, but RKNNLite only loads "
                     "/usr/lib/librknnrt.so", f"sudo cp {shown} /usr/lib/")
    return Check(RKNN_LIBRARY, status, "not found, but vision.encoder is an .rknn model"
                 if needed else "not found (only needed for an .rknn vision encoder)",
                 "download librknnrt.so from airockchip/rknn-toolkit2 "
                 "(rknpu2/runtime/Linux/librknn_api/aarch64/) into /usr/lib/")


def check_module(label: str, module: str, distribution: str, probe: ModuleProbe,
                 needed_by: str | None, optional: str, fix: str) -> Check:
    """Whether a Python package is importable (found without importing it).

    Args:
        label: the report name.
        module: the import name.
        distribution: the package name, for its version.
        probe: see :data:`ModuleProbe`.
        needed_by: why the settings need it (a missing package is then a FAIL),
            or None (a missing package is a WARN).
        optional: what it would be for, shown in that WARN.
        fix: how to install it.
    """
    version = probe(module, distribution)
    if version is None:
        if needed_by:
            return Check(label, "FAIL", f"not installed, but {needed_by}", fix)
        return Check(label, "WARN", f"not installed ({optional})", fix)
    return Check(label, "OK", version or "installed")
