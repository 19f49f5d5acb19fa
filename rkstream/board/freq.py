"""Opt-in frequency pinning: run the NPU, DDR and CPU clocks at their top speed.

Rockchip's benchmarks, and its server demos, pin every clock first (the
``fix_freq_rk3588.sh`` script); with on-demand governors the first tokens of
each reply run at a low clock and latency is uneven. Pinning writes sysfs
files, so it needs root, and it changes the whole board: rkstream does it only
when asked to (``[board] pin_frequencies = true``).

The ``performance`` governor is used where the kernel offers it, because it
needs no frequency table (CoolPi images lack ``dmc/available_frequencies``);
only where it is missing is the ``userspace`` governor set to the top
frequency, as the official script does.
"""

from __future__ import annotations

from pathlib import Path

from rkstream.board.sysfs import FreqDomain, Root, format_hz, freq_domains


def pin_frequencies(root: Root | None = None) -> list[str]:
    """Pin every NPU, DDR and CPU frequency domain found to its top frequency.

    Never raises: what could not be changed is reported, with why.

    Args:
        root: the filesystem root (``Root("/")`` if None).

    Returns:
        One human-readable line per domain, e.g.
        ``"NPU fdab0000.npu: governor ondemand -> performance"`` or
        ``"DDR dmc: could not set governor performance (/sys/...: Permission
        denied; run rkstream as root)"``.
    """
    where = root if root is not None else Root("/")
    try:
        domains = freq_domains(where)
    except Exception as exc:  # pinning is a nicety: never stop the server for it
        return [f"frequency pinning skipped: {exc}"]
    if not domains:
        return ["frequency pinning: no NPU, DDR or CPU frequency domain found in "
                "/sys/class/devfreq or /sys/devices/system/cpu/cpufreq"]
    lines: list[str] = []
    for domain in domains:
        try:
            lines.append(f"{domain.label}: {_pin(where, domain)}")
        except Exception as exc:
            lines.append(f"{domain.label}: not pinned ({exc})")
    return lines


def _pin(root: Root, domain: FreqDomain) -> str:
    """Pin one domain; return what was done."""
    before = domain.governor()
    if before == "performance":
        return "already performance"
    offered = domain.available_governors()
    if offered is None or "performance" in offered:
        error = _write(root, domain.file("governor"), "performance")
        if error:
            return f"could not set governor performance ({error})"
        return _verified(domain, before, "performance")
    if "userspace" not in offered:
        return f"not pinned: neither performance nor userspace is offered ({' '.join(offered)})"
    top = domain.top_hz()
    if top is None:
        return "not pinned: no performance governor, and no frequency list to pick a top speed"
    error = _write(root, domain.file("governor"), "userspace") or _write(
        root, domain.file("setspeed"), str(top // domain.unit))
    if error:
        return f"could not pin with the userspace governor ({error})"
    return _verified(domain, before, f"userspace at {format_hz(top)}")


def _verified(domain: FreqDomain, before: str | None, wanted: str) -> str:
    """Describe a change, checking that the kernel took the governor."""
    now = domain.governor()
    governor = wanted.split()[0]
    if now is not None and now != governor:
        return f"wrote {governor}, but the governor is still {now}"
    return f"governor {before or '?'} -> {wanted}"


def _write(root: Root, path: Path, text: str) -> str:
    """Write a sysfs attribute; return "" on success, else why it failed."""
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(text)
    except OSError as exc:
        why = f"{root.show(path)}: {exc.strerror or exc}"
        if isinstance(exc, PermissionError):
            why += "; run rkstream as root"
        return why
    return ""
