"""Files that ship inside the package: the web page and the stand-in runtime's source.

``rkstream/_static`` and ``rkstream/_standin`` are symlinks to the repository's
``static/`` and ``lib/standin/``; a wheel or ``pip install .`` copies their
files into the package. Either way they are found through
``importlib.resources``, so a clone, an editable install and an installed
wheel behave the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

from rkstream.errors import RkstreamError

STANDIN_LINES = ("1.3", "1.2")
STANDIN_SOURCES = ("rkllm_standin.c", "rkllm_standin.h")
# lib/Makefile's flags without -Werror: a warning new to the user's compiler
# must not stop a first-use build. The ABI's _Static_asserts still do.
STANDIN_CFLAGS = ("-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra", "-std=c11",
                  "-D_GNU_SOURCE", "-fvisibility=hidden")


def _package_dir(name: str) -> Path | None:
    # The package is a regular one on the file system (not zipped), so files()
    # gives a real path, which aiohttp's static route and ctypes need.
    folder = files("rkstream").joinpath(name)
    if isinstance(folder, Path) and folder.is_dir():
        return folder.resolve()
    return None


def static_dir(override: str = "") -> Path | None:
    """The folder served at ``/``: ``server.static_dir`` if set, else the shipped page.

    None if that folder does not exist (the server then serves the APIs only).
    """
    folder = Path(override) if override else _package_dir("_static")
    return folder if folder is not None and folder.is_dir() else None


def standin_dir() -> Path:
    """The stand-in runtime's shipped C source and demo model file."""
    folder = _package_dir("_standin")
    if folder is None:
        raise RkstreamError("the stand-in runtime's source is missing from this rkstream "
                            "install (rkstream/_standin); reinstall rkstream")
    return folder


def standin_model() -> Path:
    """The demo "model file" the stand-in runtime plays back."""
    return standin_dir() / "demo.rkllm"


def cache_dir() -> Path:
    """Where built artefacts go: ``$XDG_CACHE_HOME/rkstream``, else ``~/.cache/rkstream``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rkstream"


def standin_library(line: str, *, cache: Path | None = None) -> Path:
    """The stand-in runtime for ABI ``line``, built with the system C compiler on first use.

    The build lands in a cache folder named by a hash of the source and the
    flags, so an upgraded rkstream (or an edited source in a clone) builds
    afresh and an unchanged one reuses the library at once.

    Raises:
        RkstreamError: no C compiler, the build failed, or the cache is not writable.
    """
    if line not in STANDIN_LINES:
        raise RkstreamError(f"no stand-in runtime line {line!r}; use one of "
                            + ", ".join(STANDIN_LINES))
    source = standin_dir()
    compiler = os.environ.get("CC") or "cc"
    flags = (*STANDIN_CFLAGS, f"-DRKLLM_LINE={line.replace('.', '')}")
    digest = hashlib.sha256("\0".join((compiler, *flags)).encode())
    for name in STANDIN_SOURCES:
        digest.update((source / name).read_bytes())
    folder = (cache or cache_dir()) / "standin" / digest.hexdigest()[:16]
    library = folder / f"librkllmrt-standin-{line}.so"
    if library.is_file():
        return library
    if shutil.which(compiler) is None:
        raise RkstreamError(
            f"--standin builds the stand-in runtime from C source on first use and needs a "
            f"C compiler, but {compiler!r} was not found; install one (Debian: apt-get install "
            f"gcc) or set CC. A board with the real runtime does not need the stand-in.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RkstreamError(f"cannot write the stand-in runtime to {folder}: {exc.strerror}; "
                            f"set XDG_CACHE_HOME to a writable folder") from None
    # Build under a name of this process, then rename: two servers starting at
    # once never load a half-written library.
    partial = folder / f".{library.name}.{os.getpid()}.tmp"
    command = [compiler, *flags, "-o", str(partial), str(source / STANDIN_SOURCES[0])]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RkstreamError(f"building the stand-in runtime failed ({' '.join(command)}):"
                                f"\n{result.stderr.strip()}")
        os.replace(partial, library)
    finally:
        partial.unlink(missing_ok=True)
    return library
