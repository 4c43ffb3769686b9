"""Facts about this machine's CPU: its feature flags and how many physical cores this process
may use. Read from Linux's /proc and /sys; elsewhere the flags are empty and the core count is
the logical one."""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
TOPOLOGY = Path("/sys/devices/system/cpu")


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The CPU's feature flags as Linux lists them (``amx_bf16``, ``avx512_fp16``, ...); empty elsewhere."""
    try:
        return cpuinfo.read_text().split()
    except OSError:
        return []


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name as Linux gives it, with its family and model numbers where listed
    (``AMD EPYC (family 26, model 2)``: virtual machines often hide the model, and these tell a
    Zen 4 from a Zen 5); elsewhere the platform's processor string."""
    try:
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if "model name" in fields:
            numbers = ("cpu family", "model")
            extra = f" (family {fields['cpu family']}, model {fields['model']})" if all(
                fields.get(k) for k in numbers) else ""
            return fields["model name"] + extra
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, topology: Path = TOPOLOGY) -> int:
    """Physical cores among ``cpus`` (default: those this process may use): hyperthread siblings
    share a (package, core) pair in sysfs and count once. Inference threads beyond this only
    compete for the same units. Without the topology files: the logical count."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        where = topology / f"cpu{cpu}" / "topology"
        try:
            cores.add(((where / "physical_package_id").read_text().strip(), (where / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def cpu_features() -> list[str]:
    """This CPU's flags that decide its reduced precisions (for benchmark reports)."""
    flags = set(cpu_flags())
    return [f for f in ("amx_int8", "amx_bf16", "amx_fp16", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                        "avx512f", "avx2") if f in flags]
