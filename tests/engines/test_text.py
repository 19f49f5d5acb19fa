"""UTF-8 stitching across RKLLM_RUN_WAITING steps, and stop sequences."""

from __future__ import annotations

import pytest

from rkstream.engines.text import StopMatcher, Utf8Stitcher

SAMPLE = "héllo 世界 🎉 ok"


def steps(text: str, size: int, mode: str) -> list[tuple[str, bytes]]:
    """Cut ``text`` into ``size``-byte tokens and deliver them as a runtime would."""
    data = text.encode()
    out: list[tuple[str, bytes]] = []
    pending = b""
    for i in range(0, len(data), size):
        token = data[i:i + size]
        joined = pending + token
        try:
            joined.decode()
            complete = True
        except UnicodeDecodeError:
            complete = False
        if mode == "none":
            out.append(("normal", token))
        elif not complete:
            out.append(("waiting", joined if mode == "repeat" else token))
            pending = joined
        else:
            out.append(("normal", joined if mode == "repeat" else token))
            pending = b""
    return out


@pytest.mark.parametrize("mode", ["continue", "repeat", "none"])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_stitching_never_splits_or_doubles(mode: str, size: int) -> None:
    stitcher = Utf8Stitcher()
    pieces = []
    for kind, data in steps(SAMPLE, size, mode):
        if kind == "waiting":
            stitcher.waiting(data)
        else:
            piece = stitcher.normal(data)
            piece.encode()  # complete characters only
            pieces.append(piece)
    pieces.append(stitcher.flush())
    assert "".join(pieces) == SAMPLE


def test_broken_tail_becomes_replacement() -> None:
    stitcher = Utf8Stitcher()
    stitcher.waiting(b"\xe4\xb8")
    assert stitcher.flush() == "\ufffd"


@pytest.mark.parametrize("pieces, stops, expected, stopped", [
    (["hello ", "wor", "ld"], ("world",), "hello ", True),
    (["a", "b", "c"], ("x",), "abc", False),
    (["ab", "cE", "ND tail"], ("END",), "abc", True),
    (["aE", "Nx"], ("END",), "aENx", False),
    (["one\n", "two"], ("\n", "two"), "one", True),
    (["xxA", "B"], ("AB", "B"), "xx", True),
])
def test_stop_sequences(pieces: list[str], stops: tuple[str, ...], expected: str,
                        stopped: bool) -> None:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    assert out == expected
    assert matcher.stopped is stopped
