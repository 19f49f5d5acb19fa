"""tests/setup_and_run stops before changing anything when a tool is missing.

The script is copied into a scratch folder and run with a PATH from which
cmake is hidden, so it never touches this clone's .venv or the system.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "setup_and_run"
INSTALL_LINE = re.compile(r"^ *(sudo )?apt-get update && (sudo )?apt-get install -y .*\bcmake\b",
                          re.MULTILINE)


@pytest.fixture
def clone() -> Iterator[Path]:
    # Not tmp_path: its parents are private to this user, and one test runs
    # the script as another user.
    folder = Path(tempfile.mkdtemp(prefix="rkstream-setup-"))
    try:
        folder.chmod(0o755)
        (folder / "tests").mkdir(mode=0o755)
        shutil.copy2(SCRIPT, folder / "tests" / "setup_and_run")
        yield folder
    finally:
        shutil.rmtree(folder)


def path_without_cmake(folder: Path) -> str:
    """A one-folder PATH linking every program on PATH except cmake."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o755)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = bin_dir / entry.name
            if entry.name != "cmake" and not link.exists() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(bin_dir)


def run(clone: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path_without_cmake(clone)}
    return subprocess.run([*prefix, "bash", str(clone / "tests" / "setup_and_run"), *args],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=60)


def assert_stopped(result: subprocess.CompletedProcess[str], clone: Path) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert INSTALL_LINE.search(result.stderr), result.stderr
    assert not (clone / ".venv").exists()
    assert "Python environment" not in result.stdout  # stopped before any setup step


def test_check_mode_prints_the_install_line(clone: Path) -> None:
    assert_stopped(run(clone, "--check"), clone)


def test_non_root_stops_before_setting_up(clone: Path) -> None:
    # The path a new user takes: no root, so nothing is installed for them.
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop to another user")
        prefix = (setpriv, "--reuid=65534", "--regid=65534", "--clear-groups")
    result = run(clone, "-q", prefix=prefix)
    assert_stopped(result, clone)
    assert "sudo apt-get install -y" in result.stderr
    assert "installing" not in result.stdout
