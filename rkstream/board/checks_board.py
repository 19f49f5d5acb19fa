"""Doctor checks of the board itself: SoC, kernel, memory, NPU driver, clocks."""

from __future__ import annotations

import re

from rkstream.board.report import Check, Status, worst
from rkstream.board.sysfs import FreqDomain, Root, cpu_policies, devfreq_domains, format_hz, meminfo

MIN_DRIVER = (0, 9, 8)
"""The RKNPU driver version the RKLLM SDK asks for."""

DRIVER_FILE = "sys/kernel/debug/rknpu/version"

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

_PIN_FIX = ("set [board] pin_frequencies = true (rkstream must run as root), run "
            "rknn-llm's scripts/fix_freq_rk3588.sh with sudo")


def is_rk3588(compat: list[str]) -> bool:
    """Whether device-tree ``compatible`` strings name an RK3588 or RK3588S."""
    return any(c.startswith("rockchip,rk3588") for c in compat)


def is_rockchip(compat: list[str]) -> bool:
    """Whether device-tree ``compatible`` strings name any Rockchip SoC."""
    return any(c.startswith("rockchip,") for c in compat)


def check_platform(root: Root, compat: list[str]) -> Check:
    """The SoC, from ``proc/device-tree/compatible`` and the board model name."""
    model = root.read("proc/device-tree/model") or root.read(
        "sys/firmware/devicetree/base/model")
    shown = f"{model} ({', '.join(compat)})" if model else ", ".join(compat)
    if is_rk3588(compat):
        return Check("platform", "OK", shown)
    if is_rockchip(compat):
        return Check("platform", "WARN", f"{shown}: a Rockchip SoC, but not an RK3588",
                     "rkstream's NPU defaults (CPU mask 0xF0, encoder core 2) are for "
                     "RK3588; use a runtime and models converted for this SoC and adjust "
                     "rkllm.enabled_cpus_mask and vision.core_mask")
    found = f" ({shown})" if shown else " (no device tree)"
    return Check("platform", "WARN",
                 f"not an RK3588{found}: the NPU path will not work; the CPU engine still does",
                 "nothing to do for the CPU engine; the NPU engine needs an RK3588 board")


def check_kernel(root: Root) -> Check:
    """The kernel build, from ``proc/version`` (reported for bug reports)."""
    text = root.read("proc/version")
    if text is None:
        return Check("kernel", "WARN", "cannot read /proc/version", "run doctor on the board")
    return Check("kernel", "OK", " ".join(text.split()))


def check_memory(root: Root) -> Check:
    """Total and available memory, from ``proc/meminfo``."""
    info = meminfo(root)
    if "MemTotal" not in info:
        return Check("memory", "WARN", "cannot read /proc/meminfo", "run doctor on the board")
    avail = info.get("MemAvailable")
    shown = f"{size_text(info['MemTotal'])} total"
    return Check("memory", "OK", shown + (f", {size_text(avail)} available" if avail else ""))


def size_text(size: int) -> str:
    """Show a byte count: ``"1.5 GiB"``, or ``"93 MiB"`` below 1 GiB."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    return f"{size / (1 << 20):.0f} MiB"


def driver_version(root: Root) -> tuple[str | None, str]:
    """Read the RKNPU driver version.

    Returns:
        ``(text, why)``: the version line (e.g. ``"RKNPU driver: v0.9.8"``) or
        None, and when None a reason: ``"denied"``, ``"absent"`` or an error.
    """
    why = "absent"
    try:
        return root.join(DRIVER_FILE).read_text(encoding="utf-8", errors="replace").strip(), ""
    except PermissionError:
        why = "denied"  # debugfs is root-only on every image we know
    except (FileNotFoundError, NotADirectoryError):
        why = "absent"
    except OSError as exc:
        why = exc.strerror or str(exc)
    # Best effort without root: a built-in driver may publish MODULE_VERSION here.
    module = root.read("sys/module/rknpu/version")
    if module and _VERSION.search(module):
        return f"RKNPU driver: v{module}", ""
    return None, why


def check_npu_driver(root: Root, compat: list[str]) -> Check:
    """The RKNPU kernel driver version; RKLLM wants 0.9.8 or newer."""
    name = "NPU driver"
    text, why = driver_version(root)
    if text is None:
        if root.join("sys/module/rocket").exists():
            return Check(name, "WARN", "the mainline `rocket` NPU driver is loaded, not "
                         "Rockchip's RKNPU driver",
                         "RKLLM needs the vendor RKNPU driver: use a vendor (BSP) kernel image")
        if not is_rockchip(compat):
            return Check(name, "WARN", "no RKNPU driver (not a Rockchip board)",
                         "nothing to do for the CPU engine")
        if why == "absent" and root.listdir("sys/kernel/debug"):
            return Check(name, "WARN", "debugfs has no rknpu/: the RKNPU driver is not loaded",
                         "use a board image whose kernel has the RKNPU driver (0.9.8)")
        return Check(name, "WARN", "cannot read (debugfs not mounted or not root)",
                     "run `sudo cat /sys/kernel/debug/rknpu/version`; RKLLM wants 0.9.8 "
                     "or newer")
    match = _VERSION.search(text)
    if match is None:
        return Check(name, "WARN", f"{text!r}: no version number in it",
                     "run `sudo cat /sys/kernel/debug/rknpu/version`; RKLLM wants 0.9.8")
    version = tuple(int(part) for part in match.groups())
    if version >= MIN_DRIVER:
        return Check(name, "OK", text)
    extra = " and cannot allocate NPU memory above 4 GB" if version < (0, 9, 6) else ""
    return Check(name, "WARN", f"{text}: older than 0.9.8",
                 "RKLLM asks for RKNPU 0.9.8: older drivers print \"rknpu driver version "
                 f"is too low\" and fail large NPU allocations{extra}. The driver is built "
                 "into the kernel: upgrade the board image or kernel to one with RKNPU "
                 "0.9.8 (airockchip/rknn-llm ships its source under rknpu-driver/)")


def check_frequencies(root: Root, compat: list[str]) -> list[Check]:
    """Governor and clock of the NPU, the DDR and each CPU cluster."""
    if not is_rockchip(compat):
        return [_cpu_summary(root)]
    checks: list[Check] = []
    npus = devfreq_domains(root, "npu")
    if not npus:
        checks.append(Check("NPU frequency", "WARN", "no NPU devfreq device in "
                            "/sys/class/devfreq", "the NPU keeps the kernel's clock policy; "
                            "pinning cannot reach it (check the board image's NPU node)"))
    checks += [_domain_check(root, d) for d in npus]
    ddrs = devfreq_domains(root, "ddr")
    if not ddrs:
        checks.append(Check("DDR frequency", "WARN", "no DDR (dmc) devfreq device in "
                            "/sys/class/devfreq", "only affects pinning: the DDR clock "
                            "keeps its own policy; nothing else to do"))
    checks += [_domain_check(root, d) for d in ddrs]
    checks += [_domain_check(root, d) for d in cpu_policies(root)]
    return checks


def _domain_check(root: Root, domain: FreqDomain) -> Check:
    """One frequency domain: WARN unless it runs at (or is pinned to) its top clock."""
    governor, cur, top = domain.governor(), domain.cur_hz(), domain.top_hz()
    detail = f"governor {governor or '?'}, {format_hz(cur)} now, max {format_hz(top)}"
    statuses: list[Status] = ["OK"]
    fixes: list[str] = []
    pinned = governor == "performance" or (governor == "userspace" and cur == top
                                             and cur is not None)
    if not pinned:
        statuses.append("WARN")
        detail += " (not pinned: slower and uneven latency)"
        fixes.append(f"{_PIN_FIX}, or `echo performance | sudo tee "
                     f"{root.show(domain.file('governor'))}`")
    if domain.kind == "ddr" and domain.available_frequencies() is None:
        statuses.append("WARN")
        detail += f"; {root.show(domain.file('frequencies'))} is missing"
        fixes.append("only affects pinning: the performance governor still works, "
                     "a fixed userspace frequency cannot be chosen")
    return Check(domain.label, worst(statuses), detail, "; ".join(fixes))


def _cpu_summary(root: Root) -> Check:
    """One line for the CPUs of a machine that is not a Rockchip board."""
    governors = [p.governor() or "?" for p in cpu_policies(root)]
    if not governors:
        return Check("CPU frequency", "OK", "no cpufreq policies (a VM or container?)")
    kinds = sorted(set(governors))
    counts = ", ".join(f"{g} x{governors.count(g)}" for g in kinds)
    return Check("CPU frequency", "OK", f"{len(governors)} policies, governor {counts}")
