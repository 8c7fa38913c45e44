"""What this machine gives a worker: its cores and memory, as a container or batch job limits them.

`os.cpu_count()` and `psutil.virtual_memory()` report the host. In a Kubernetes pod, a Docker
container or a Slurm job with cgroup limits the process may use fewer cores (a CFS quota, a
cpuset) and less memory (a memory limit) than that: a worker sized from the host would run a task
per host core on a 2-CPU pod and claim tasks needing more memory than its limit (then the kernel's
OOM killer, not the worker's memory floor, stops them). Here the host's figures are capped by the
cgroup limits of this process (v2, or v1's cpu and memory controllers), read from the cgroup
filesystem as /proc/self/cgroup and /proc/self/mountinfo locate it, every level up to the mount
point (a pod's limit sits above its container's). No cgroup, no limit: the host's figures.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

GB = 1024**3
#: a v1 memory limit this high means "no limit" (the kernel writes its page-rounded LONG_MAX)
NO_V1_LIMIT = 1 << 60


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    total_gb: float  # the host's memory, or the cgroup limit if lower
    available_gb: float  # what a task can still use: the host's available, or the cgroup's room if less


def cores(root: Path = Path("/")) -> int:
    """Cores this process may use: its CPU affinity (a cpuset), capped by a CFS quota rounded up."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(root)
    return max(1, min(n, math.ceil(quota))) if quota else n


def memory(root: Path = Path("/")) -> MemoryFigures:
    vm = psutil.virtual_memory()
    total, available = float(vm.total), float(vm.available)
    for limit, used in memory_limits(root):
        total, available = min(total, limit), min(available, max(0.0, limit - used))
    return MemoryFigures(total / GB, available / GB)


def cpu_quota(root: Path = Path("/")) -> float | None:
    """The tightest CFS quota in cores (quota / period) on this process's cgroup path, None: none."""
    found: list[float] = []
    for version, directory in _cgroup_dirs(root, "cpu"):
        if version == 2:
            quota, _, period = _read(directory / "cpu.max").partition(" ")
        else:
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
        if _number(quota) and _number(period) and float(quota) > 0:
            found.append(float(quota) / float(period))
    return min(found) if found else None


def memory_limits(root: Path = Path("/")) -> list[tuple[float, float]]:
    """(limit, used) in bytes for each level of this process's cgroup path that has a memory
    limit; `used` leaves out the inactive page cache, which the kernel reclaims before it OOM-kills."""
    out = []
    for version, directory in _cgroup_dirs(root, "memory"):
        limit_file, used_file, inactive = (
            ("memory.max", "memory.current", "inactive_file")
            if version == 2
            else ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        )
        limit, used = _read(directory / limit_file), _read(directory / used_file)
        if not _number(limit) or float(limit) >= NO_V1_LIMIT or not _number(used):
            continue
        out.append((float(limit), max(0.0, float(used) - _stat(directory / "memory.stat", inactive))))
    return out


@functools.cache
def _cgroup_dirs(root: Path, controller: str) -> list[tuple[int, Path]]:
    """(cgroup version, directory) from this process's cgroup up to its mount point, for the v1
    hierarchy holding `controller`, else the v2 one. Found once: a process does not move."""
    membership = {}  # "cpu" / "memory" / "" (v2) -> path in the hierarchy
    for line in _read(root / "proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            membership[name] = path
    for line in _read(root / "proc/self/mountinfo").splitlines():
        fields = line.split(" ")
        if "-" not in fields:
            continue
        dash = fields.index("-")
        mount_root, mount_point, fstype = fields[3], fields[4], fields[dash + 1]
        options = fields[dash + 3].split(",") if len(fields) > dash + 3 else []
        if fstype == "cgroup" and controller in options and controller in membership:
            version, path = 1, membership[controller]
        elif fstype == "cgroup2" and "" in membership and controller not in membership:
            version, path = 2, membership[""]
        else:
            continue
        # Inside a cgroup namespace the path is relative to the mount's root already ("/").
        relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else path.lstrip("/")
        top = root / mount_point.lstrip("/")
        here = Path(os.path.normpath(top / relative))
        dirs = [here, *(p for p in here.parents if p.is_relative_to(top))]
        return [(version, d) for d in dirs if d.is_dir()]
    return []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _number(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _stat(path: Path, key: str) -> float:
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.isdigit():
            return float(value)
    return 0.0
