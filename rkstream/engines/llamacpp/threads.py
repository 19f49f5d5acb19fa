"""How many threads llama.cpp decodes with when ``llamacpp.n_threads = 0``.

llama-cpp-python's own default is half the logical CPUs, which assumes two
hardware threads per core. On a CPU without SMT (this project's 2-core VMs)
that leaves half the cores idle: measured with bench/conversation.py,
SmolLM2 decodes at 24 ms a token on one thread and 13.4 ms on two. So count
physical cores instead, and only the fastest kind of them (RK3588's four
A76 cores, not its A55s), shared between the model instances.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_ROOT = Path("/sys/devices/system/cpu")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def default_threads(instances: int, *, cpus: set[int] | None = None,
                    root: Path = CPU_ROOT) -> int:
    """Fastest physical cores this process may use, divided among ``instances``.

    A core is a distinct (package, core id); without topology files each CPU
    counts as one. CPUs without ``cpu_capacity`` count as equally fast.
    """
    allowed = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if not allowed:
        return 1
    capacity = {cpu: _read_int(root / f"cpu{cpu}" / "cpu_capacity") or 0 for cpu in allowed}
    fastest = max(capacity.values())
    cores: set[tuple[int | str, int | str]] = set()
    for cpu in allowed:
        if capacity[cpu] != fastest:
            continue
        topology = root / f"cpu{cpu}" / "topology"
        package = _read_int(topology / "physical_package_id")
        core = _read_int(topology / "core_id")
        cores.add((package if package is not None else "?",
                   core if core is not None else f"cpu{cpu}"))
    return max(1, len(cores) // max(1, instances))
