"""Finding the GGUF file: the configured one or the bundled SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest

from rkstream.engines.llamacpp.model import bundled_model, resolve_model
from rkstream.errors import ModelFileError


def test_bundled_model_is_found_without_importing_its_package() -> None:
    path = bundled_model()
    assert path is not None and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert resolve_model("") == path


def test_configured_model(tmp_path: Path) -> None:
    good = tmp_path / "m.gguf"
    good.write_bytes(b"GGUF\x03\x00")
    assert resolve_model(str(good)) == good
    with pytest.raises(ModelFileError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    bad = tmp_path / "m.rkllm"
    bad.write_bytes(b"RKLLM...")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        resolve_model(str(bad))


def test_missing_bundle_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rkstream.engines.llamacpp.model.BUNDLED_PACKAGE", "no-such-package")
    with pytest.raises(ModelFileError, match="rkstream setup"):
        resolve_model("")
