"""llama.cpp's default thread count: the fastest physical cores, shared by instances."""

from __future__ import annotations

from pathlib import Path

from rkstream.engines.llamacpp.threads import default_threads


def cpu(root: Path, n: int, capacity: int | None, core: int | None, package: int = 0) -> None:
    folder = root / f"cpu{n}"
    (folder / "topology").mkdir(parents=True)
    if capacity is not None:
        (folder / "cpu_capacity").write_text(f"{capacity}\n")
    if core is not None:
        (folder / "topology" / "core_id").write_text(f"{core}\n")
        (folder / "topology" / "physical_package_id").write_text(f"{package}\n")


def test_rk3588_counts_its_four_big_cores(tmp_path: Path) -> None:
    for n in range(8):  # A55 cores 0-3, A76 cores 4-7
        cpu(tmp_path, n, 414 if n < 4 else 1024, n)
    assert default_threads(1, cpus=set(range(8)), root=tmp_path) == 4
    assert default_threads(2, cpus=set(range(8)), root=tmp_path) == 2
    assert default_threads(8, cpus=set(range(8)), root=tmp_path) == 1


def test_hyperthreads_count_once(tmp_path: Path) -> None:
    for n in range(4):  # two cores, two threads each
        cpu(tmp_path, n, None, n // 2)
    assert default_threads(1, cpus=set(range(4)), root=tmp_path) == 2


def test_without_topology_each_cpu_counts(tmp_path: Path) -> None:
    assert default_threads(1, cpus={0, 1}, root=tmp_path) == 2
    assert default_threads(1, cpus={5}, root=tmp_path / "missing") == 1
    assert default_threads(1, cpus=set(), root=tmp_path) == 1


def test_only_cpus_this_process_may_use(tmp_path: Path) -> None:
    for n in range(8):
        cpu(tmp_path, n, 414 if n < 4 else 1024, n)
    assert default_threads(1, cpus={0, 1, 4}, root=tmp_path) == 1  # one big core allowed
