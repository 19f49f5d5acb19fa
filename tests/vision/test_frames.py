"""The newest-frame store: latest wins, superseded frames are counted."""

from __future__ import annotations

from rkstream.vision.frames import FrameStore, new_frame


def test_latest_wins_and_counts() -> None:
    store = FrameStore()
    for seq in range(30):
        assert store.append(new_frame("cam", seq, seq, b"x", None, None, None))
    newest = store.newest("cam")
    assert newest is not None and newest.seq == 29
    assert store.superseded["cam"] == 29 and store.received["cam"] == 30


def test_older_frame_is_dropped() -> None:
    store = FrameStore()
    store.append(new_frame("cam", 5, None, b"new", None, None, None))
    assert not store.append(new_frame("cam", 3, None, b"old", None, None, None))
    newest = store.newest("cam")
    assert newest is not None and newest.data == b"new"
    assert store.superseded["cam"] == 1


def test_stream_limit_and_clear() -> None:
    store = FrameStore(max_streams=2)
    store.append(new_frame("a", 0, None, b"", None, None, None))
    store.append(new_frame("b", 0, None, b"", None, None, None))
    assert store.full_for("c") and not store.full_for("a")
    store.clear()
    assert store.newest("a") is None and store.streams() == []
