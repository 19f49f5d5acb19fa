"""Frequency pinning and the sysfs helpers under it, on fake trees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rkstream.board import freq
from rkstream.board.freq import pin_frequencies
from rkstream.board.sysfs import (
    FreqDomain,
    Root,
    compatible,
    cpu_policies,
    devfreq_domains,
    freq_domains,
    meminfo,
    read_int,
)

GOVERNORS = "userspace powersave performance simple_ondemand"


def put(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def devfreq(root: Path, folder: str, governor: str, governors: str = GOVERNORS,
            freqs: str | None = "300000000 1000000000") -> Path:
    base = root / "sys/class/devfreq" / folder
    put(base, "governor", governor + "\n")
    put(base, "available_governors", governors + "\n")
    if freqs is not None:
        put(base, "available_frequencies", freqs + "\n")
    put(base, "cur_freq", "300000000\n")
    put(base, "userspace/set_freq", "<unsupported>\n")
    return base


def policy(root: Path, number: int, governor: str) -> Path:
    base = root / f"sys/devices/system/cpu/cpufreq/policy{number}"
    put(base, "scaling_governor", governor + "\n")
    put(base, "scaling_available_governors", "ondemand userspace powersave performance\n")
    put(base, "scaling_available_frequencies", "408000 1800000\n")
    put(base, "related_cpus", f"{number} {number + 1}\n")
    return base


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """NPU and DDR on demand, one CPU cluster on demand, one already pinned."""
    devfreq(tmp_path, "fdab0000.npu", "rknpu_ondemand")
    devfreq(tmp_path, "dmc", "dmc_ondemand", freqs=None)  # CoolPi: no frequency list
    devfreq(tmp_path, "fb000000.gpu", "simple_ondemand")
    policy(tmp_path, 0, "ondemand")
    policy(tmp_path, 4, "performance")
    return tmp_path


def governor(base: Path, name: str = "governor") -> str:
    return (base / name).read_text(encoding="utf-8").strip()


def test_pins_npu_ddr_and_cpu_but_not_the_gpu(board: Path) -> None:
    lines = pin_frequencies(Root(board))
    assert lines == [
        "NPU fdab0000.npu: governor rknpu_ondemand -> performance",
        "DDR dmc: governor dmc_ondemand -> performance",
        "CPU policy0 (cpus 0-1): governor ondemand -> performance",
        "CPU policy4 (cpus 4-5): already performance",
    ]
    devices = board / "sys/class/devfreq"
    assert governor(devices / "fdab0000.npu") == "performance"
    assert governor(devices / "dmc") == "performance"
    assert governor(devices / "fb000000.gpu") == "simple_ondemand"
    policies = board / "sys/devices/system/cpu/cpufreq"
    assert governor(policies / "policy0", "scaling_governor") == "performance"


def test_userspace_fallback_sets_the_top_frequency(tmp_path: Path) -> None:
    npu = devfreq(tmp_path, "fdab0000.npu", "rknpu_ondemand",
                  governors="userspace rknpu_ondemand",
                  freqs="1000000000 300000000 600000000")
    assert pin_frequencies(Root(tmp_path)) == [
        "NPU fdab0000.npu: governor rknpu_ondemand -> userspace at 1000 MHz"]
    assert governor(npu) == "userspace"
    assert (npu / "userspace/set_freq").read_text(encoding="utf-8") == "1000000000"
    devfreq(tmp_path, "fdab0000.npu", "rknpu_ondemand", governors="rknpu_ondemand")
    assert pin_frequencies(Root(tmp_path)) == [
        "NPU fdab0000.npu: not pinned: neither performance nor userspace is offered "
        "(rknpu_ondemand)"]


def test_reports_what_it_cannot_change(board: Path) -> None:
    # As root chmod does not stop a write; a directory in place of the file does.
    dmc_governor = board / "sys/class/devfreq/dmc/governor"
    dmc_governor.unlink()
    dmc_governor.mkdir()
    lines = pin_frequencies(Root(board))
    assert lines[1].startswith("DDR dmc: could not set governor performance "
                               "(/sys/class/devfreq/dmc/governor: Is a directory")
    assert lines[0].endswith("-> performance") and lines[2].endswith("-> performance")


def test_permission_denied_says_run_as_root(board: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    def refuse(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(freq, "open", refuse, raising=False)
    lines = pin_frequencies(Root(board))
    assert lines[0] == ("NPU fdab0000.npu: could not set governor performance "
                        "(/sys/class/devfreq/fdab0000.npu/governor: Permission denied; "
                        "run rkstream as root)")
    assert lines[3] == "CPU policy4 (cpus 4-5): already performance"
    assert governor(board / "sys/class/devfreq/fdab0000.npu") == "rknpu_ondemand"


def test_a_governor_the_kernel_refuses_is_reported(board: Path) -> None:
    # sysfs rejects a write by keeping the old value; a fake file cannot, so fake the reread.
    real = FreqDomain.governor

    def stuck(self: FreqDomain) -> str | None:
        return "rknpu_ondemand" if self.kind == "npu" else real(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FreqDomain, "governor", stuck)
        lines = pin_frequencies(Root(board))
    assert lines[0] == ("NPU fdab0000.npu: wrote performance, but the governor is still "
                        "rknpu_ondemand")


def test_nothing_to_pin_never_raises(tmp_path: Path) -> None:
    assert pin_frequencies(Root(tmp_path / "missing")) == [
        "frequency pinning: no NPU, DDR or CPU frequency domain found in "
        "/sys/class/devfreq or /sys/devices/system/cpu/cpufreq"]


def test_sysfs_reads_are_safe(tmp_path: Path) -> None:
    root = Root(tmp_path)
    put(tmp_path, "proc/meminfo", "MemTotal: 2048 kB\nMemAvailable: 1024 kB\nHuge: x\n")
    put(tmp_path, "bad", "not a number\n")
    (tmp_path / "dir").mkdir()
    assert root.read("missing") is None and root.read("dir") is None
    assert read_int(tmp_path / "bad") is None
    assert meminfo(root) == {"MemTotal": 2048 * 1024, "MemAvailable": 1024 * 1024}
    assert compatible(root) == [] and freq_domains(root) == []
    put(tmp_path, "sys/firmware/devicetree/base/compatible", "radxa,rock-5b\0rockchip,rk3588\0")
    assert compatible(root) == ["radxa,rock-5b", "rockchip,rk3588"]
    base = devfreq(tmp_path, "devfreq3", "userspace", freqs="junk")
    put(base, "device/of_node/compatible", "rockchip,rk3588-rknpu\0")
    (npu,) = devfreq_domains(root, "npu")
    assert npu.available_frequencies() is None and npu.top_hz() is None
    assert npu.cur_hz() == 300_000_000 and devfreq_domains(root, "ddr") == []
    for number in (10, 2):
        policy(tmp_path, number, "schedutil")
    assert [p.name for p in cpu_policies(root)] == ["policy2", "policy10"]
    assert cpu_policies(root)[0].top_hz() == 1_800_000_000
