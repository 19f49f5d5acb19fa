"""``rkstream doctor``: check the set-up and print a report to paste into an issue.

The checks cover the commonest field failures: not an RK3588, an old RKNPU
driver, a missing or unsupported librkllmrt.so, an .rknn file given as the
language model, models that do not fit in memory, and clocks left to an
on-demand governor. Nothing is loaded: libraries and models are only read.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ..config import Settings
from ..engines.llamacpp.model import bundled_model
from ..engines.rkllm.loader import default_lib_dirs
from .checks_board import (
    check_frequencies,
    check_kernel,
    check_memory,
    check_npu_driver,
    check_platform,
    is_rockchip,
)
from .checks_libs import (
    ModuleProbe,
    check_module,
    check_rkllm_library,
    check_rknn_library,
    probe_module,
)
from .checks_models import check_gguf_model, check_rkllm_model, check_vision_encoder
from .report import Check, Status, render_json, render_text
from .sysfs import Root, compatible, meminfo

__all__ = ["Check", "Root", "Status", "doctor_command", "render_json", "render_text",
           "run_checks"]


def run_checks(
    settings: Settings,
    root: Root,
    *,
    lib_dirs: Sequence[Path] | None = None,
    probe: ModuleProbe = probe_module,
    bundled: Callable[[], Path | None] = bundled_model,
) -> list[Check]:
    """Run every doctor check, in report order.

    Never raises for a broken set-up: whatever is wrong becomes a WARN or FAIL.

    Args:
        settings: the effective settings (the configured paths are checked as given).
        root: where ``sys/``, ``proc/`` and the system library folders are read.
        lib_dirs: rkstream's own lib/ folders; :func:`default_lib_dirs` if None.
        probe: tells whether a Python package is importable (tests fake it).
        bundled: finds the bundled GGUF model (tests fake it).

    Returns:
        The checks.
    """
    dirs = default_lib_dirs() if lib_dirs is None else list(lib_dirs)
    compat = compatible(root)
    rockchip = is_rockchip(compat)
    npu_asked = settings.engine == "rkllm" or bool(settings.rkllm.model or
                                                    settings.rkllm.library)
    checks = [
        Check("rkstream", "OK", f"{__version__}, Python {platform.python_version()} "
              f"({sys.executable}), engine = {settings.engine}"),
        check_platform(root, compat),
        check_kernel(root),
        check_memory(root),
        check_npu_driver(root, compat),
        *check_rkllm_library(settings, root, dirs, required=npu_asked),
    ]
    encoder_check, encoder, kind = check_vision_encoder(settings)
    checks.append(check_rkllm_model(settings, meminfo(root).get("MemAvailable"), rockchip,
                                    encoder))
    checks.append(encoder_check)
    checks.append(check_rknn_library(root, dirs, needed=kind == "rknn"))
    checks.append(check_module(
        "rknn-toolkit-lite2", "rknnlite", "rknn-toolkit-lite2", probe,
        "FAIL" if kind == "rknn" else "WARN", "only needed for an .rknn vision encoder",
        "pip install rknn-toolkit-lite2 (aarch64 Linux, Python 3.7-3.12)"))
    checks.append(check_gguf_model(settings, bundled))
    checks.append(check_module(
        "llama-cpp-python", "llama_cpp", "llama-cpp-python", probe,
        "FAIL" if settings.engine == "llamacpp" else "WARN", "the CPU engine needs it",
        "run `rkstream setup` (it builds llama-cpp-python for this machine)"))
    checks.append(check_module(
        "onnxruntime", "onnxruntime", "onnxruntime", probe,
        "FAIL" if kind == "onnx" else "WARN", "only needed for an .onnx vision encoder",
        "pip install onnxruntime"))
    checks += check_frequencies(root, compat)
    return checks


def doctor_command(settings: Settings, *, json_output: bool = False,
                   root: str | os.PathLike[str] = "/") -> int:
    """Run the checks, print the report, and return the exit code.

    Args:
        settings: the effective settings.
        json_output: print JSON instead of text.
        root: the filesystem root to inspect.

    Returns:
        1 if any check failed, else 0.
    """
    checks = run_checks(settings, Root(root))
    print(render_json(checks) if json_output else render_text(checks), end="")
    if json_output:
        print()
    return 1 if any(c.status == "FAIL" for c in checks) else 0
