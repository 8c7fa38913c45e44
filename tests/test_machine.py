"""A worker sizes itself from what its container or batch job allows (distcomp_obs/machine.py).

Each case lays out a root directory as the kernel shows it inside one kind of container: the
process's /proc/self/cgroup and /proc/self/mountinfo (copied from real systems: Docker on cgroup
v1 with and without a cgroup namespace, a Kubernetes pod on cgroup v2, a systemd host) and the
cgroup files with the kernel's formats. Creating real cgroups needs a writable cgroup filesystem,
which a test machine need not have; the closing note of the change records a run in real ones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import psutil
import pytest

from distcomp_obs import machine

MiB = 1024**2
HOST_CORES = len(os.sched_getaffinity(0))
V1_UNLIMITED = "9223372036854771712"


def lay_out(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def v1(cgroup_path: str, mount_root: str) -> dict[str, str]:
    """Docker on cgroup v1: cpu and memory hierarchies (with cgroupns, paths are "/")."""
    return {
        "/proc/self/cgroup": f"12:memory:{cgroup_path}\n4:cpu,cpuacct:{cgroup_path}\n"
        f"1:name=systemd:{cgroup_path}\n0::/",
        "/proc/self/mountinfo": (
            "712 706 0:63 / / rw,relatime master:301 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
            "720 719 0:65 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755\n"
            f"722 720 0:30 {mount_root} /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:13 - "
            "cgroup cgroup rw,cpu,cpuacct\n"
            f"725 720 0:33 {mount_root} /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:16 - "
            "cgroup cgroup rw,memory"
        ),
    }


def v2(cgroup_path: str) -> dict[str, str]:
    """cgroup v2 only (a Kubernetes node on a current distribution, or a systemd host)."""
    return {
        "/proc/self/cgroup": f"0::{cgroup_path}",
        "/proc/self/mountinfo": (
            "1279 1270 0:67 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w\n"
            "1286 1284 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate"
        ),
    }


def test_no_cgroup_gives_the_hosts_figures(tmp_path: Path) -> None:
    assert machine.cores(tmp_path) == HOST_CORES
    assert machine.cpu_quota(tmp_path) is None and machine.memory_limits(tmp_path) == []
    mem = machine.memory(tmp_path)
    assert mem.total_gb == pytest.approx(psutil.virtual_memory().total / machine.GB)


def test_unlimited_v1_cgroup_gives_the_hosts_figures(tmp_path: Path) -> None:
    root = lay_out(tmp_path, {**v1("/", "/"),
                              "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                              "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
                              "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes": str(300 * MiB)})  # fmt: skip
    assert machine.cores(root) == HOST_CORES and machine.memory_limits(root) == []


@pytest.mark.parametrize("namespaced", [True, False], ids=["cgroupns", "host-paths"])
def test_docker_v1_limits(tmp_path: Path, namespaced: bool) -> None:
    """`docker run --cpus 0.5 --memory 512m`: one core (the quota rounded up), 512 MiB, and room
    for what is used less the inactive page cache. Without a cgroup namespace the process's path is
    /docker/ID and the mount's root is that same directory."""
    path = "/" if namespaced else "/docker/3f2a"
    root = lay_out(tmp_path, {**v1(path, path),
                              "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000",
                              "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
                              "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(512 * MiB),
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes": str(300 * MiB),
                              "/sys/fs/cgroup/memory/memory.stat": f"cache 1\ninactive_file 7\n"
                                                                   f"total_inactive_file {100 * MiB}"})  # fmt: skip
    assert machine.cpu_quota(root) == 0.5 and machine.cores(root) == 1
    mem = machine.memory(root)
    assert mem.total_gb * 1024 == pytest.approx(512)
    assert mem.available_gb * 1024 == pytest.approx(512 - (300 - 100))


def test_kubernetes_pod_on_v2(tmp_path: Path) -> None:
    """A container with `limits: {cpu: 1500m, memory: 256Mi}`: cpu.max "150000 100000" -> 2 cores."""
    root = lay_out(tmp_path, {**v2("/"),
                              "/sys/fs/cgroup/cpu.max": "150000 100000",
                              "/sys/fs/cgroup/memory.max": str(256 * MiB),
                              "/sys/fs/cgroup/memory.current": str(200 * MiB),
                              "/sys/fs/cgroup/memory.stat": f"anon 1\nfile 2\ninactive_file {50 * MiB}"})  # fmt: skip
    assert machine.cpu_quota(root) == 1.5 and machine.cores(root) == min(HOST_CORES, 2)
    mem = machine.memory(root)
    assert mem.total_gb * 1024 == pytest.approx(256) and mem.available_gb * 1024 == pytest.approx(106)


def test_the_tightest_level_of_a_nested_v2_path_wins(tmp_path: Path) -> None:
    """Without a cgroup namespace the path is the whole slice; a pod's limit sits above its
    container's ("max": none). Each limit applies, so the tightest one counts."""
    pod = "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice"
    ctr = f"{pod}/cri-containerd-9c1.scope"
    root = lay_out(tmp_path, {**v2("/kubepods.slice/kubepods-pod1.slice/cri-containerd-9c1.scope"),
                              "/sys/fs/cgroup/cpu.max": "max 100000",
                              f"{pod}/cpu.max": "max 100000", f"{ctr}/cpu.max": "100000 100000",
                              f"{pod}/memory.max": str(128 * MiB), f"{pod}/memory.current": str(100 * MiB),
                              f"{ctr}/memory.max": "max", f"{ctr}/memory.current": str(90 * MiB)})  # fmt: skip
    assert machine.cores(root) == 1
    mem = machine.memory(root)
    assert mem.total_gb * 1024 == pytest.approx(128) and mem.available_gb * 1024 == pytest.approx(28)


def test_a_quota_above_the_hosts_cores_does_not_raise_them(tmp_path: Path) -> None:
    quota = (HOST_CORES + 3) * 100000
    root = lay_out(tmp_path, {**v2("/"), "/sys/fs/cgroup/cpu.max": f"{quota} 100000"})
    assert machine.cores(root) == HOST_CORES and math.ceil(machine.cpu_quota(root) or 0) == HOST_CORES + 3


def test_memory_used_beyond_the_limit_leaves_no_room(tmp_path: Path) -> None:
    root = lay_out(tmp_path, {**v2("/"), "/sys/fs/cgroup/memory.max": str(64 * MiB),
                              "/sys/fs/cgroup/memory.current": str(80 * MiB)})  # fmt: skip
    assert machine.memory(root).available_gb == 0.0


def test_this_machines_own_cgroups_are_read_without_error() -> None:
    """On the test machine itself (whatever its cgroups): figures within the host's."""
    assert 1 <= machine.cores() <= HOST_CORES
    mem = machine.memory()
    host = psutil.virtual_memory()
    assert 0 < mem.total_gb <= host.total / machine.GB + 1e-9
    assert 0 <= mem.available_gb <= mem.total_gb
