"""The doctor's encode-ahead check: a warning when the budget is effectively
unlimited on a Rockchip board, and which CPUs decode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rkstream.board.checks_vision import check_encode_ahead
from rkstream.board.doctor import Root, run_checks
from rkstream.config import Settings, VisionSettings
from rkstream.config.settings import ModelEntry

EIGHT = range(8)


def with_vision(**keys: Any) -> Settings:
    return replace(Settings(), vision=replace(VisionSettings(), encoder="/m/enc.rknn", **keys))


def test_no_encoder_no_check() -> None:
    assert check_encode_ahead(Settings(), rockchip=True) == []


def test_the_default_budget_is_fine_on_a_board() -> None:
    (check,) = check_encode_ahead(with_vision(), rockchip=True, online=EIGHT)
    assert check.status == "OK"
    assert check.detail.startswith("rate: at most 1 looks/s per camera stream, "
                                   "paused while a generation runs")
    assert "decoding runs on CPUs 0,1,2,3" in check.detail


def test_a_high_rate_warns_on_a_rockchip_board_only() -> None:
    fast = with_vision(encode_ahead_fps=10.0, encode_ahead_pause_while_generating=False,
                       frame_change_threshold=0.0)
    (check,) = check_encode_ahead(fast, rockchip=True, online=EIGHT)
    assert check.status == "WARN"
    assert "effectively unlimited" in check.detail
    assert "slowing every token" in check.detail  # it is not paused
    assert "every new frame is encoded" in check.detail
    assert "encode_ahead_fps" in check.fix and "on_request" in check.fix
    (paused,) = check_encode_ahead(with_vision(encode_ahead_fps=10.0), rockchip=True)
    assert paused.status == "WARN" and "slowing" not in paused.detail
    (pc,) = check_encode_ahead(fast, rockchip=False, online=EIGHT)
    assert pc.status == "OK" and "decoding is not pinned" in pc.detail


def test_off_and_on_request_are_fine() -> None:
    for mode, words in (("off", "only when a request takes them"),
                        ("on_request", "only while a frame question waits")):
        (check,) = check_encode_ahead(with_vision(encode_ahead=mode, encode_ahead_fps=30.0),
                                      rockchip=True)
        assert check.status == "OK" and words in check.detail


def test_an_encoder_of_a_models_entry_counts() -> None:
    settings = replace(Settings(), vision=replace(VisionSettings(), encode_ahead_fps=10.0),
                       models={"vl": ModelEntry(model="/m/vl.rkllm",
                                                vision_encoder="/m/vl.rknn")})
    (check,) = check_encode_ahead(settings, rockchip=True)
    assert check.status == "WARN"


def test_doctor_runs_it(tmp_path: Path) -> None:
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "compatible").write_bytes(b"rockchip,rk3588\0")
    checks = {c.name: c for c in run_checks(with_vision(encode_ahead_fps=8.0), Root(tmp_path),
                                            lib_dirs=[], bundled=lambda: None)}
    assert checks["vision.encode_ahead"].status == "WARN"
