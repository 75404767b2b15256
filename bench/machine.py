"""What the numbers were measured on, and how much of the CPU other processes took meanwhile."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def training_processes() -> list[str]:
    """Command lines of running `memefly train` jobs (the contention this machine may have)."""
    try:
        found = subprocess.run(["pgrep", "-af", "memefly train"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    own = {str(os.getpid())}
    return [line for line in found.splitlines() if line.split(" ", 1)[0] not in own and "pgrep" not in line]


def machine_facts() -> dict[str, object]:
    import numpy
    import tensorflow as tf

    cpu = _lscpu()
    return {
        "cpu_model": cpu.get("Model name", platform.processor() or "unknown"),
        "cpu_family_model": f"family {cpu.get('CPU family', '?')} model {cpu.get('Model', '?')}",
        "cpus": os.cpu_count(),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
    }


@dataclass(frozen=True)
class CpuSample:
    busy_seconds: float
    """All CPUs, every process (from /proc/stat)."""
    ours_seconds: float
    """This process and the serving tier it started."""


def _process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def cpu_sample(other_pids: list[int]) -> CpuSample:
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return CpuSample(0.0, 0.0)
    idle = values[3] + values[4]  # idle, iowait
    busy = (sum(values[:8]) - idle) / _CLOCK_TICKS
    ours = sum(_process_cpu_seconds(pid) for pid in [os.getpid(), *other_pids])
    return CpuSample(busy, ours)


def contention(before: CpuSample, after: CpuSample, wall_seconds: float) -> dict[str, float]:
    """CPU-seconds per second the benchmark used, and what every other process used meanwhile."""
    busy = after.busy_seconds - before.busy_seconds
    ours = after.ours_seconds - before.ours_seconds
    wall = max(wall_seconds, 1e-9)
    return {
        "wall_seconds": round(wall_seconds, 1),
        "bench_cpus_busy": round(ours / wall, 2),
        "other_processes_cpus_busy": round(max(busy - ours, 0.0) / wall, 2),
    }
