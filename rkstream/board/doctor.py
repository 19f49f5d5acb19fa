"""``rkstream doctor``: check the set-up and print a report to paste into an issue.

The checks cover the commonest field failures: not an RK3588, an old RKNPU
driver, a missing or unsupported librkllmrt.so, an .rknn file given as the
language model, models that do not fit in memory, clocks left to an
on-demand governor, an encode-ahead budget that never lets the vision
encoder rest, the runtime crashes and hangs the server recorded, and the
https certificate and key.
Nothing is loaded: libraries, models and the fault log are only read.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from rkstream import __version__
from rkstream.board.checks_board import (
    check_frequencies,
    check_kernel,
    check_memory,
    check_npu_driver,
    check_platform,
    is_rockchip,
)
from rkstream.board.checks_faults import check_runtime_faults
from rkstream.board.checks_libs import (
    ModuleProbe,
    check_module,
    check_rkllm_library,
    check_rknn_library,
    probe_module,
)
from rkstream.board.checks_models import (
    check_chat_format,
    check_gguf_model,
    check_rkllm_model,
    check_vision_encoder,
)
from rkstream.board.checks_pool import check_models
from rkstream.board.checks_tls import check_tls
from rkstream.board.checks_vision import check_encode_ahead
from rkstream.board.report import Check, Status, render_json, render_text
from rkstream.board.sysfs import Root, compatible, meminfo
from rkstream.config import Settings
from rkstream.engines.llamacpp.model import bundled_model
from rkstream.engines.rkllm.loader import default_lib_dirs
from rkstream.log import engine_log

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

    Never raises: whatever is wrong becomes a WARN or FAIL, and a check that
    breaks on an unexpected error is reported as a WARN of its own.

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
    compat: list[str] = _guarded("platform", lambda: compatible(root), [])
    rockchip = is_rockchip(compat)
    npu_asked = settings.engine == "rkllm" or bool(settings.rkllm.model or
                                                    settings.rkllm.library)
    # The encoder comes first: the memory and package checks depend on its kind.
    vision = _guarded("vision.encoder", lambda: check_vision_encoder(settings), None)
    encoder_check = vision[0] if vision else _broken("vision.encoder")
    encoder, kind = (vision[1], vision[2]) if vision else (None, None)
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("rkstream", lambda: Check("rkstream", "OK", f"{__version__}, Python "
                                   f"{platform.python_version()} ({sys.executable}), "
                                   f"engine = {settings.engine}")),
        ("platform", lambda: check_platform(root, compat)),
        ("kernel", lambda: check_kernel(root)),
        ("memory", lambda: check_memory(root)),
        ("NPU driver", lambda: check_npu_driver(root, compat)),
        ("librkllmrt.so", lambda: check_rkllm_library(settings, root, dirs, npu_asked)),
        ("rkllm.model", lambda: check_rkllm_model(
            settings, meminfo(root).get("MemAvailable"), rockchip, encoder)),
        ("chat format", lambda: check_chat_format(settings) or []),
        ("runtime faults", lambda: check_runtime_faults(settings)),
        ("vision.encoder", lambda: encoder_check),
        ("vision.encode_ahead", lambda: check_encode_ahead(settings, rockchip)),
        ("librknnrt.so", lambda: check_rknn_library(root, dirs, needed=kind == "rknn")),
        ("rknn-toolkit-lite2", lambda: check_module(
            "rknn-toolkit-lite2", "rknnlite", "rknn-toolkit-lite2", probe,
            "vision.encoder is an .rknn model" if kind == "rknn" else None,
            "only needed for an .rknn vision encoder",
            "pip install rknn-toolkit-lite2 (aarch64 Linux, Python 3.7-3.12)")),
        ("llamacpp.model", lambda: check_gguf_model(settings, bundled)),
        ("llama-cpp-python", lambda: check_module(
            "llama-cpp-python", "llama_cpp", "llama-cpp-python", probe,
            "engine = llamacpp" if settings.engine == "llamacpp" else None,
            "the CPU engine needs it",
            "run `rkstream setup` (it builds llama-cpp-python for this machine)")),
        ("onnxruntime", lambda: check_module(
            "onnxruntime", "onnxruntime", "onnxruntime", probe,
            "vision.encoder is an .onnx model" if kind == "onnx" else None,
            "only needed for an .onnx vision encoder",
            "pip install onnxruntime")),
        ("models", lambda: check_models(settings, meminfo(root).get("MemAvailable"),
                                        rockchip, bundled)),
        ("frequencies", lambda: check_frequencies(root, compat)),
        ("server.tls", lambda: check_tls(settings)),
    ]
    checks: list[Check] = []
    for name, step in steps:
        result = _guarded(name, step, None)
        if result is None:
            checks.append(_broken(name))
        else:
            checks += result if isinstance(result, list) else [result]
    return checks


def _broken(name: str) -> Check:
    return Check(name, "WARN", "the check itself failed (see the log)",
                 "please report this, with the whole doctor output")


T = TypeVar("T")


def _guarded(name: str, step: Callable[[], T], default: T) -> T:
    """Run one check; an unexpected error (say EACCES from a stat) must not end the report."""
    try:
        return step()
    except Exception:
        engine_log.exception("doctor: the %s check failed", name)
        return default


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
    if json_output:
        print(render_json(checks))
    else:
        print(render_text(checks), end="")
    return 1 if any(c.status == "FAIL" for c in checks) else 0
