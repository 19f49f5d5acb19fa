"""``rkstream doctor`` on fake sysfs/proc trees: an official RK3588 image, a
CoolPi-like image, a PC, and the usual wrong-file and wrong-runtime mistakes."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path
from typing import Any

import pytest

from rkstream.board import doctor
from rkstream.board.doctor import Check, Root, render_json, render_text, run_checks
from rkstream.cli import main
from rkstream.config import Settings, load_settings
from rkstream.engines.rkllm import faults

GB = 1 << 30


@pytest.fixture(autouse=True)
def no_fault_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default fault log is in a fresh cache folder, not the user's."""
    monkeypatch.setattr(faults, "cache_dir", lambda: tmp_path / "cache")


def put(root: Path, rel: str, content: str | bytes) -> Path:
    """Write one file of a fake tree (parents created)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def devfreq(root: Path, folder: str, governor: str, freqs: list[int] | None,
            **extra: str) -> None:
    base = f"sys/class/devfreq/{folder}"
    put(root, f"{base}/governor", governor + "\n")
    put(root, f"{base}/available_governors",
        "userspace powersave performance simple_ondemand " + governor + "\n")
    if freqs is not None:
        put(root, f"{base}/available_frequencies", " ".join(map(str, freqs)) + "\n")
    top = (freqs or [800_000_000])[-1]
    put(root, f"{base}/cur_freq", f"{top if governor == 'performance' else 300_000_000}\n")
    put(root, f"{base}/max_freq", f"{top}\n")
    for rel, text in extra.items():
        put(root, f"{base}/{rel.replace('__', '/')}", text)


def cpufreq(root: Path, policy: int, cpus: str, governor: str, top_khz: int) -> None:
    base = f"sys/devices/system/cpu/cpufreq/policy{policy}"
    put(root, f"{base}/scaling_governor", governor + "\n")
    put(root, f"{base}/scaling_available_frequencies", f"408000 1200000 {top_khz}\n")
    put(root, f"{base}/scaling_cur_freq", f"{top_khz if governor == 'performance' else 408000}\n")
    put(root, f"{base}/cpuinfo_max_freq", f"{top_khz}\n")
    put(root, f"{base}/related_cpus", cpus + "\n")


def common(root: Path, avail_kb: int = 6_000_000) -> None:
    put(root, "proc/version", "Linux version 5.10.160-rockchip-rk3588 (gcc 10.2) #1 SMP\n")
    put(root, "proc/meminfo", f"MemTotal:        8000000 kB\nMemFree:  1000 kB\n"
                              f"MemAvailable:    {avail_kb} kB\n")


def official_tree(root: Path, runtime: str = "1.3.0", driver: str = "0.9.8") -> Path:
    """An official RK3588 image: fixed clocks, driver 0.9.8, runtime in /usr/lib."""
    common(root)
    put(root, "proc/device-tree/compatible", b"rockchip,rk3588-evb1-lp4-v10\0rockchip,rk3588\0")
    put(root, "proc/device-tree/model", b"Rockchip RK3588 EVB1 LP4 V10 Board\0")
    put(root, "sys/kernel/debug/rknpu/version", f"RKNPU driver: v{driver}\n")
    devfreq(root, "fdab0000.npu", "performance", [300_000_000, 600_000_000, 1_000_000_000])
    devfreq(root, "dmc", "performance", [528_000_000, 1_560_000_000, 2_112_000_000])
    devfreq(root, "fb000000.gpu", "simple_ondemand", [300_000_000, 1_000_000_000])
    cpufreq(root, 0, "0 1 2 3", "performance", 1_800_000)
    cpufreq(root, 4, "4 5", "performance", 2_352_000)
    cpufreq(root, 6, "6 7", "performance", 2_352_000)
    put(root, "usr/lib/librkllmrt.so", f"\x7fELF...rkllm-runtime version: {runtime}\0...".encode())
    put(root, "usr/lib/librknnrt.so", b"\x7fELF librknnrt")
    return root


def coolpi_tree(root: Path) -> Path:
    """A CoolPi-like image: other devfreq names, no dmc frequency list, on-demand clocks."""
    common(root)
    put(root, "proc/device-tree/compatible", b"coolpi,pi-4b\0rockchip,rk3588s\0")
    put(root, "proc/device-tree/model", b"CoolPi 4B\0")
    put(root, "sys/kernel/debug/rknpu/version", "RKNPU driver: v0.9.6\n")
    devfreq(root, "devfreq0", "dmc_ondemand", None,
            device__of_node__compatible="rockchip,rk3588-dmc\0")
    devfreq(root, "devfreq1", "rknpu_ondemand", [300_000_000, 1_000_000_000],
            name="fdab0000.rknpu\n")
    devfreq(root, "devfreq2", "simple_ondemand", [300_000_000], name="fb000000.gpu\n")
    cpufreq(root, 0, "0 1 2 3", "ondemand", 1_800_000)
    cpufreq(root, 4, "4 5", "ondemand", 2_256_000)
    return root


def pc_tree(root: Path) -> Path:
    """An x86 PC: no device tree, no NPU, powersave governors."""
    common(root)
    for policy in range(4):
        cpufreq(root, policy, str(policy), "powersave", 4_000_000)
    return root


def settings(**overrides: Any) -> Settings:
    return load_settings(None, overrides={k.replace("__", "."): str(v)
                                          for k, v in overrides.items()}, environ={})


def probe_all(module: str, distribution: str) -> str | None:
    return "9.9"


def probe_none(module: str, distribution: str) -> str | None:
    return None


def run(root: Path, conf: Settings, probe: Any = probe_all,
        bundled: Path | None = None) -> dict[str, Check]:
    checks = run_checks(conf, Root(root), lib_dirs=[], probe=probe, bundled=lambda: bundled)
    assert len({c.name for c in checks}) == len(checks)
    return {c.name: c for c in checks}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return put(tmp_path, "models/qwen2.5-1.5b.rkllm", b"RKLLM\0\0\0" + bytes(4096))


def test_official_image_is_all_ok(tmp_path: Path, model: Path) -> None:
    root = official_tree(tmp_path / "root")
    checks = run(root, settings(rkllm__model=model), bundled=model)
    bad = [c for c in checks.values() if c.status != "OK"]
    assert bad == []
    assert checks["platform"].detail == ("Rockchip RK3588 EVB1 LP4 V10 Board "
                                         "(rockchip,rk3588-evb1-lp4-v10, rockchip,rk3588)")
    assert checks["NPU driver"].detail == "RKNPU driver: v0.9.8"
    assert checks["librkllmrt.so"].detail == "/usr/lib/librkllmrt.so"
    assert checks["RKLLM runtime"].detail == "1.3.0 (line 1.3)"
    assert checks["librknnrt.so"].detail == "/usr/lib/librknnrt.so"
    assert checks["rkllm.model"].detail.startswith(str(model))
    assert checks["memory"].detail == "7.6 GiB total, 5.7 GiB available"
    assert checks["NPU fdab0000.npu"].detail == "governor performance, 1000 MHz now, max 1000 MHz"
    assert checks["DDR dmc"].detail == "governor performance, 2112 MHz now, max 2112 MHz"
    assert checks["CPU policy4 (cpus 4-5)"].detail.endswith("2352 MHz now, max 2352 MHz")
    assert not any("gpu" in name for name in checks)  # the GPU is not ours to report
    assert checks["runtime faults"].detail == ("no runtime crash or hang recorded in "
                                               f"{tmp_path / 'cache/runtime_faults.jsonl'}")


def test_coolpi_image_warns_about_driver_and_clocks(tmp_path: Path, model: Path) -> None:
    root = coolpi_tree(tmp_path / "root")
    put(root, "usr/local/lib/librkllmrt.so", b"rkllm-runtime version: 1.2.3")
    checks = run(root, settings(rkllm__model=model))
    assert checks["platform"].status == "OK"
    assert checks["platform"].detail.startswith("CoolPi 4B (coolpi,pi-4b, rockchip,rk3588s)")
    driver = checks["NPU driver"]
    assert (driver.status, driver.detail) == ("WARN", "RKNPU driver: v0.9.6: older than 0.9.8")
    assert "0.9.8" in driver.fix and "kernel" in driver.fix
    assert checks["RKLLM runtime"].detail == "1.2.3 (line 1.2)"
    assert checks["librkllmrt.so"].detail == "/usr/local/lib/librkllmrt.so"
    npu = checks["NPU devfreq1"]
    assert npu.status == "WARN" and "governor rknpu_ondemand, 300 MHz now" in npu.detail
    assert "pin_frequencies = true" in npu.fix and "fix_freq_rk3588.sh" in npu.fix
    assert "/sys/class/devfreq/devfreq1/governor" in npu.fix
    ddr = checks["DDR devfreq0"]
    assert ddr.status == "WARN"
    assert "/sys/class/devfreq/devfreq0/available_frequencies is missing" in ddr.detail
    assert "only affects pinning" in ddr.fix
    assert checks["CPU policy0 (cpus 0-3)"].status == "WARN"
    assert not any("devfreq2" in name for name in checks)
    assert checks["librknnrt.so"].status == "WARN"  # no .rknn encoder: only a warning


def test_missing_dmc_and_unreadable_driver(tmp_path: Path, model: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = official_tree(tmp_path / "root")
    for name in ("governor", "available_governors", "available_frequencies", "cur_freq",
                 "max_freq"):
        (root / "sys/class/devfreq/dmc" / name).unlink()
    (root / "sys/class/devfreq/dmc").rmdir()
    checks = run(root, settings(rkllm__model=model))
    ddr = checks["DDR frequency"]
    assert ddr.status == "WARN" and "only affects pinning" in ddr.fix
    real = pathlib.Path.read_text

    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "version" and self.parent.name == "rknpu":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    driver = run(root, settings(rkllm__model=model))["NPU driver"]
    assert driver.status == "WARN"
    assert driver.detail == "cannot read (debugfs not mounted or not root)"
    assert driver.fix.startswith("run `sudo cat /sys/kernel/debug/rknpu/version`")


def test_pc_warns_but_does_not_fail(tmp_path: Path) -> None:
    root = pc_tree(tmp_path / "root")
    gguf = put(tmp_path, "smol.gguf", b"GGUF" + bytes(64))
    checks = run(root, settings(), bundled=gguf)
    assert checks["platform"].status == "WARN"
    assert checks["platform"].detail == ("not an RK3588 (no device tree): the NPU path will "
                                         "not work; the CPU engine still does")
    assert checks["NPU driver"].detail == "no RKNPU driver (not a Rockchip board)"
    lib = checks["librkllmrt.so"]
    assert lib.status == "WARN" and "only the NPU engine needs it" in lib.fix
    assert "airockchip/rknn-llm" in lib.fix and "/usr/lib" in lib.detail
    assert checks["rkllm.model"] == Check("rkllm.model", "OK", "not set (the CPU engine serves)")
    assert checks["llamacpp.model"].detail == f"bundled SmolLM2-135M-Instruct ({gguf})"
    assert checks["CPU frequency"].detail == "4 policies, governor powersave x4"
    assert not [c for c in checks.values() if c.status == "FAIL"]
    assert "RKLLM runtime" not in checks


def test_pc_without_cpu_engine_or_npu_asked_for(tmp_path: Path) -> None:
    root = pc_tree(tmp_path / "root")
    checks = run(root, settings(engine="rkllm"), probe=probe_none)
    assert checks["librkllmrt.so"].status == "FAIL"
    assert checks["rkllm.model"].status == "FAIL"
    assert checks["llama-cpp-python"].status == "WARN"
    assert "rkstream setup" in checks["llama-cpp-python"].fix
    checks = run(root, settings(engine="llamacpp"), probe=probe_none)
    assert checks["llama-cpp-python"].detail == "not installed, but engine = llamacpp"
    assert checks["llamacpp.model"].status == "FAIL"
    assert checks["onnxruntime"].detail == "not installed (only needed for an .onnx vision encoder)"


def test_rknn_given_as_the_language_model(tmp_path: Path) -> None:
    root = official_tree(tmp_path / "root")
    rknn = put(tmp_path, "qwen2_vl_vision_rk3588.rknn", b"RKNN" + bytes(64))
    checks = run(root, settings(rkllm__model=rknn))
    bad = checks["rkllm.model"]
    assert bad.status == "FAIL"
    assert bad.detail == f"{rknn} is an RKNN vision model (.rknn), not a language model"
    assert "vision encoder" in bad.fix
    rkllm = put(tmp_path, "qwen.rkllm", b"RKLLM" + bytes(64))
    checks = run(root, settings(rkllm__model=rknn, vision__encoder=rkllm))
    assert checks["vision.encoder"].status == "FAIL"
    assert "looks like the .rkllm language model" in checks["vision.encoder"].detail
    gguf = put(tmp_path, "m.gguf", b"GGUF" + bytes(64))
    assert "GGUF" in run(root, settings(rkllm__model=gguf))["rkllm.model"].detail


def test_unsupported_and_mismatched_runtimes(tmp_path: Path, model: Path) -> None:
    root = official_tree(tmp_path / "old", runtime="1.1.4")
    check = run(root, settings(rkllm__model=model))["RKLLM runtime"]
    assert check.status == "FAIL"
    assert check.detail.startswith("runtime version 1.1.4 is not supported")
    assert "1.2.1-1.2.3" in check.fix and "rkllm-toolkit" in check.fix
    root = official_tree(tmp_path / "new")
    check = run(root, settings(rkllm__model=model, rkllm__runtime="1.2"))["RKLLM runtime"]
    assert check.status == "FAIL" and check.fix.startswith('set rkllm.runtime = "auto" or "1.3"')
    put(root, "usr/lib/librkllmrt.so", b"\x7fELF no version text")
    check = run(root, settings(rkllm__model=model))["RKLLM runtime"]
    assert check.status == "WARN" and 'set rkllm.runtime = "1.3" or "1.2"' in check.fix
    missing = tmp_path / "nowhere/librkllmrt.so"
    check = run(root, settings(rkllm__library=missing))["librkllmrt.so"]
    assert check.status == "FAIL" and "does not exist" in check.detail


def test_memory_and_vision_sharing(tmp_path: Path) -> None:
    root = official_tree(tmp_path / "root")
    common(root, avail_kb=1024)  # 1 MiB free
    big = put(tmp_path, "big.rkllm", b"RKLLM" + bytes(2 << 20))
    encoder = put(tmp_path, "vision.rknn", b"RKNN" + bytes(64))
    checks = run(root, settings(rkllm__model=big, vision__encoder=encoder,
                                rkllm__base_domain_id=0))
    assert checks["rkllm.model"].status == "WARN"
    assert "with the vision encoder" in checks["rkllm.model"].detail
    assert checks["vision.encoder"].status == "WARN"
    assert "base_domain_id = -1" in checks["vision.encoder"].fix
    (root / "usr/lib/librknnrt.so").unlink()
    put(root, "usr/local/lib/librknnrt.so", b"\x7fELF")
    checks = run(root, settings(vision__encoder=encoder), probe=probe_none)
    assert checks["librknnrt.so"].status == "FAIL"
    assert checks["librknnrt.so"].fix == "sudo cp /usr/local/lib/librknnrt.so /usr/lib/"
    assert checks["rknn-toolkit-lite2"] == Check(
        "rknn-toolkit-lite2", "FAIL", "not installed, but vision.encoder is an .rknn model",
        "pip install rknn-toolkit-lite2 (aarch64 Linux, Python 3.7-3.12)")
    onnx = put(tmp_path, "vision.onnx", b"\x08\x07")
    checks = run(root, settings(vision__encoder=onnx), probe=probe_none)
    assert checks["vision.encoder"].detail.startswith(f"{onnx} (ONNX")
    assert checks["onnxruntime"].status == "FAIL"


def test_render_text_and_json(tmp_path: Path) -> None:
    checks = run_checks(settings(), Root(coolpi_tree(tmp_path)), lib_dirs=[],
                        probe=probe_all, bundled=lambda: None)
    text = render_text(checks)
    lines = text.splitlines()
    assert lines[0].startswith("OK   rkstream: ")
    assert "WARN NPU driver: RKNPU driver: v0.9.6: older than 0.9.8" in lines
    at = lines.index("WARN NPU driver: RKNPU driver: v0.9.6: older than 0.9.8")
    assert lines[at + 1].startswith("     fix: RKLLM asks for RKNPU 0.9.8")
    warn = sum(c.status == "WARN" for c in checks)
    ok = sum(c.status == "OK" for c in checks)
    assert lines[-1] == f"summary: {ok} OK, {warn} WARN, 0 FAIL (ready, with warnings)"
    data = json.loads(render_json(checks))
    assert data["summary"] == {"OK": ok, "WARN": warn, "FAIL": 0}
    assert [c["name"] for c in data["checks"]] == [c.name for c in checks]
    assert set(data["checks"][0]) == {"name", "status", "detail", "fix", "lines"}
    assert data["checks"][0]["lines"] == []


def test_a_broken_check_does_not_end_the_report(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(root: Root) -> Check:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(doctor, "check_kernel", boom)
    checks = run(official_tree(tmp_path), settings())
    assert checks["kernel"].status == "WARN"
    assert checks["kernel"].detail == "the check itself failed (see the log)"
    assert checks["DDR dmc"].status == "OK"  # the checks after it still ran


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        standin_libs: dict[str, Path]) -> None:
    root = official_tree(tmp_path / "root")
    conf = put(tmp_path, "empty.toml", "")
    base = ["doctor", "--root", str(root), "--config", str(conf)]
    assert main([*base, "--standin"]) == 0
    out = capsys.readouterr().out
    assert "OK   RKLLM runtime: 1.3.0 (line 1.3)" in out
    assert "OK   librkllmrt.so: " in out and "librkllmrt-standin-1.3.so" in out
    rknn = put(tmp_path, "v.rknn", b"RKNN")
    assert main([*base, "--json", "--model", str(rknn)]) == 1
    data = json.loads(capsys.readouterr().out)
    failed = [c["name"] for c in data["checks"] if c["status"] == "FAIL"]
    assert "rkllm.model" in failed and data["summary"]["FAIL"] == len(failed)
