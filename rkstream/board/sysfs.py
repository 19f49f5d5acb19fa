"""Read sysfs and procfs under a root directory, and find the frequency domains.

Every read here is safe: a missing, unreadable or malformed file gives None
(or an empty list), never an exception, because board images differ a lot.
The official RK3588 images name the NPU devfreq device ``fdab0000.npu`` and
the DDR one ``dmc``; other images (CoolPi's among them) use other folder
names, so devices are recognised by their folder name, their ``name``
attribute or their device-tree ``compatible`` string, never by one fixed path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["npu", "ddr", "cpu"]
"""What a frequency domain clocks: the NPU, the DDR memory, or a CPU cluster."""

DEVFREQ_DIR = "sys/class/devfreq"
CPUFREQ_DIR = "sys/devices/system/cpu/cpufreq"

# Attribute file names: devfreq and cpufreq name the same things differently.
_DEVFREQ_FILES = {
    "governor": "governor", "governors": "available_governors",
    "frequencies": "available_frequencies", "cur": "cur_freq", "max": "max_freq",
    "setspeed": "userspace/set_freq",
}
_CPUFREQ_FILES = {
    "governor": "scaling_governor", "governors": "scaling_available_governors",
    "frequencies": "scaling_available_frequencies", "cur": "scaling_cur_freq",
    "max": "scaling_max_freq", "setspeed": "scaling_setspeed", "hw_max": "cpuinfo_max_freq",
}
_POLICY = re.compile(r"policy(\d+)")


def read_text(path: Path) -> str | None:
    """Return a file's text without surrounding blanks and NULs, or None.

    Args:
        path: the file.

    Returns:
        The text, or None if the file is missing, unreadable or a directory.
    """
    try:
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    return data.decode("utf-8", "replace").strip(" \t\r\n\x00")


def read_int(path: Path) -> int | None:
    """Return the integer a file holds, or None if it holds none."""
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_words(path: Path) -> list[str] | None:
    """Return the blank- or NUL-separated words of a file, or None if unreadable."""
    text = read_text(path)
    return None if text is None else text.replace("\x00", " ").split()


class Root:
    """The directory that stands for ``/`` when board files are read.

    Args:
        path: ``"/"`` on the board; tests pass a temporary fake tree.
    """

    def __init__(self, path: str | os.PathLike[str] = "/") -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    @property
    def is_system(self) -> bool:
        """Whether this root is the real ``/`` of the running system."""
        return self.path.resolve() == Path("/")

    def join(self, rel: str) -> Path:
        """Return the path of ``rel`` (e.g. ``"proc/version"``) under this root."""
        return self.path / rel.lstrip("/")

    def read(self, rel: str) -> str | None:
        """Return the text of ``rel`` under this root, or None (see :func:`read_text`)."""
        return read_text(self.join(rel))

    def show(self, path: Path) -> str:
        """Show a path under this root as the board would see it (``/sys/...``)."""
        try:
            return "/" + path.relative_to(self.path).as_posix()
        except ValueError:
            return str(path)

    def listdir(self, rel: str) -> list[Path]:
        """Return the entries of a directory under this root, sorted; [] if unreadable."""
        try:
            return sorted(self.join(rel).iterdir())
        except OSError:
            return []


@dataclass(frozen=True)
class FreqDomain:
    """One frequency domain: a devfreq device (NPU, DDR) or a cpufreq policy.

    Attributes:
        kind: ``"npu"``, ``"ddr"`` or ``"cpu"``.
        name: the folder name, e.g. ``"fdab0000.npu"``, ``"dmc"``, ``"policy4"``.
        path: the folder.
    """

    kind: Kind
    name: str
    path: Path

    def file(self, attr: str) -> Path:
        """Return the file of an attribute: governor, governors, frequencies,
        cur, max, setspeed, hw_max (cpufreq only)."""
        names = _CPUFREQ_FILES if self.kind == "cpu" else _DEVFREQ_FILES
        return self.path / names[attr]

    @property
    def label(self) -> str:
        """A name for reports, e.g. ``"NPU fdab0000.npu"`` or ``"CPU policy4 (cpus 4-5)"``."""
        if self.kind != "cpu":
            return f"{self.kind.upper()} {self.name}"
        cpus = read_words(self.path / "related_cpus") or read_words(self.path / "affected_cpus")
        if not cpus:
            return f"CPU {self.name}"
        span = cpus[0] if len(cpus) == 1 else f"{cpus[0]}-{cpus[-1]}"
        return f"CPU {self.name} (cpus {span})"

    def governor(self) -> str | None:
        """The current governor, or None if it cannot be read."""
        return read_text(self.file("governor"))

    def available_governors(self) -> list[str] | None:
        """The governors the kernel offers here, or None if the list cannot be read."""
        return read_words(self.file("governors"))

    def available_frequencies(self) -> list[int] | None:
        """The frequencies offered, in Hz, ascending; None if the list is missing."""
        words = read_words(self.file("frequencies"))
        if not words:
            return None
        try:
            return sorted(int(w) * self.unit for w in words)
        except ValueError:
            return None

    def cur_hz(self) -> int | None:
        """The current frequency in Hz, or None."""
        value = read_int(self.file("cur"))
        if value is None and self.kind == "cpu":
            value = read_int(self.path / "cpuinfo_cur_freq")
        return None if value is None else value * self.unit

    def top_hz(self) -> int | None:
        """The highest frequency the hardware offers in Hz, or None.

        The available list is preferred; then ``cpuinfo_max_freq`` for a CPU;
        then the current upper limit (``max_freq``), which may be lower.
        """
        offered = self.available_frequencies()
        if offered:
            return offered[-1]
        value = read_int(self.file("hw_max")) if self.kind == "cpu" else None
        if value is None:
            value = read_int(self.file("max"))
        return None if value is None else value * self.unit

    @property
    def unit(self) -> int:
        """Hz per unit of this domain's files: cpufreq counts in kHz, devfreq in Hz."""
        return 1000 if self.kind == "cpu" else 1


def _devfreq_kind(folder: Path) -> Kind | None:
    """Tell an NPU or DDR devfreq device from its names; None for anything else."""
    names = [folder.name, read_text(folder / "name") or "",
             read_text(folder / "device/of_node/compatible") or "",
             read_text(folder / "device/of_node/name") or ""]
    text = " ".join(names).lower()
    if "npu" in text:
        return "npu"
    if "dmc" in text or "ddr" in text:
        return "ddr"
    return None


def devfreq_domains(root: Root, kind: Literal["npu", "ddr"]) -> list[FreqDomain]:
    """Find the devfreq devices of the NPU or of the DDR memory.

    Args:
        root: where to look (``sys/class/devfreq`` under it).
        kind: ``"npu"`` or ``"ddr"``.

    Returns:
        The devices found, by folder name; often one, possibly none.
    """
    found: list[FreqDomain] = []
    for folder in root.listdir(DEVFREQ_DIR):
        if folder.is_dir() and _devfreq_kind(folder) == kind:
            found.append(FreqDomain(kind, folder.name, folder))
    return found


def cpu_policies(root: Root) -> list[FreqDomain]:
    """Find the cpufreq policies (one per CPU cluster), in policy number order."""
    found: list[tuple[int, FreqDomain]] = []
    for folder in root.listdir(CPUFREQ_DIR):
        match = _POLICY.fullmatch(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), FreqDomain("cpu", folder.name, folder)))
    return [domain for _, domain in sorted(found, key=lambda pair: pair[0])]


def freq_domains(root: Root) -> list[FreqDomain]:
    """Every NPU, DDR and CPU frequency domain found under ``root``."""
    return devfreq_domains(root, "npu") + devfreq_domains(root, "ddr") + cpu_policies(root)


def compatible(root: Root) -> list[str]:
    """The board's device-tree ``compatible`` strings; [] when there is no device tree."""
    for rel in ("proc/device-tree/compatible", "sys/firmware/devicetree/base/compatible"):
        words = read_words(root.join(rel))
        if words:
            return words
    return []


def meminfo(root: Root) -> dict[str, int]:
    """``proc/meminfo`` as bytes per field (MemTotal, MemAvailable, ...); {} if unreadable."""
    out: dict[str, int] = {}
    for line in (root.read("proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            scale = 1024 if len(words) > 1 and words[1].lower() == "kb" else 1
            out[key.strip()] = int(words[0]) * scale
    return out


def format_hz(hz: int | None) -> str:
    """Show a frequency in MHz, e.g. ``"1000 MHz"``; ``"?"`` when unknown."""
    return "?" if hz is None else f"{hz / 1e6:.0f} MHz"
