"""The package as it installs: the sdist and wheel contents, and the shipped files."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from rkstream import __version__
from rkstream.errors import RkstreamError
from rkstream.resources import standin_dir, standin_library, standin_model, static_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and the wheel built from it, as `python -m build` makes them for CI."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    return out


def wheel_names(dist: Path) -> set[str]:
    with zipfile.ZipFile(dist / f"rkstream-{__version__}-py3-none-any.whl") as wheel:
        return set(wheel.namelist())


def wheel_text(dist: Path, name: str) -> str:
    with zipfile.ZipFile(dist / f"rkstream-{__version__}-py3-none-any.whl") as wheel:
        return wheel.read(name).decode()


def metadata(dist: Path) -> Message:
    return Parser().parsestr(wheel_text(dist, f"rkstream-{__version__}.dist-info/METADATA"))


def test_build_makes_one_pure_python_wheel_named_by_the_version(dist: Path) -> None:
    assert sorted(p.name for p in dist.iterdir()) == [
        f"rkstream-{__version__}-py3-none-any.whl", f"rkstream-{__version__}.tar.gz"]
    wheel = Parser().parsestr(wheel_text(dist, f"rkstream-{__version__}.dist-info/WHEEL"))
    assert wheel["Root-Is-Purelib"] == "true" and wheel.get_all("Tag") == ["py3-none-any"]


def test_wheel_ships_the_page_and_the_standin_source(dist: Path) -> None:
    names = wheel_names(dist)
    page = {f"rkstream/_static/{p.relative_to(REPO / 'static').as_posix()}"
            for p in (REPO / "static").rglob("*") if p.is_file()}
    assert "rkstream/_static/index.html" in page and page <= names
    assert {"rkstream/_standin/rkllm_standin.c", "rkstream/_standin/rkllm_standin.h",
            "rkstream/_standin/demo.rkllm"} <= names
    assert not any(n.endswith((".so", ".pyc")) for n in names)


def test_wheel_holds_every_subpackage(dist: Path) -> None:
    # The package finder must not miss a folder the code is split into.
    names = wheel_names(dist)
    for init in (REPO / "rkstream").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names


def test_wheel_metadata(dist: Path) -> None:
    meta = metadata(dist)
    assert meta["Name"] == "rkstream" and meta["Version"] == __version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert any(c.startswith("Operating System :: POSIX :: Linux")
               for c in meta.get_all("Classifier") or [])
    [rknn] = [r for r in meta.get_all("Requires-Dist") or []
              if r.startswith("rknn-toolkit-lite2")]
    # The NPU runtime's wheel exists only for aarch64; x86_64 installs must skip it.
    assert 'platform_machine == "aarch64"' in rknn and 'platform_system == "Linux"' in rknn
    entry_points = wheel_text(dist, f"rkstream-{__version__}.dist-info/entry_points.txt")
    assert "rkstream = rkstream.cli:main" in entry_points


def test_sdist_carries_the_tests_and_the_standin_build(dist: Path) -> None:
    with tarfile.open(dist / f"rkstream-{__version__}.tar.gz") as sdist:
        names = {n.partition("/")[2] for n in sdist.getnames()}
    assert {"tests/test_packaging.py", "tests/conftest.py", "lib/Makefile", "lib/README.md",
            "lib/standin/rkllm_standin.c", "lib/standin/selftest.c", "static/index.html",
            "config.toml", "docs/rkstream.service"} <= names
    assert not any(n.startswith(("lib/build", "tests/node/node_modules")) for n in names)


def test_static_dir_is_the_shipped_page_unless_overridden(tmp_path: Path) -> None:
    shipped = static_dir()
    assert shipped is not None and (shipped / "index.html").is_file()
    assert static_dir(str(tmp_path)) == tmp_path
    assert static_dir(str(tmp_path / "missing")) is None


def test_standin_builds_once_into_the_cache(tmp_path: Path) -> None:
    assert standin_model().is_file() and standin_model().parent == standin_dir()
    library = standin_library("1.2", cache=tmp_path)
    assert library.name == "librkllmrt-standin-1.2.so" and library.is_relative_to(tmp_path)
    assert b"rkllm-runtime version: 1.2.3" in library.read_bytes()
    built = library.stat().st_mtime_ns
    assert standin_library("1.2", cache=tmp_path) == library
    assert library.stat().st_mtime_ns == built
    assert [p.name for p in library.parent.iterdir()] == [library.name]  # no temp file left


def test_standin_without_a_compiler_says_what_to_do(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(RkstreamError, match="needs a C compiler.*install one"):
        standin_library("1.3", cache=tmp_path)
    assert not any(tmp_path.rglob("*.so"))


def test_standin_cache_follows_xdg_cache_home(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "rkstream", "config", "--standin", "1.2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [library] = tmp_path.glob("rkstream/standin/*/librkllmrt-standin-1.2.so")
    assert f"rkllm.library = '{library}'" in result.stdout
