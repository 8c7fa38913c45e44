"""A real Redis Cluster on loopback for tests: N masters (no replicas) in a temp directory.

Each node is `redis-server --cluster-enabled yes` on its own port; `redis-cli --cluster create`
assigns the 16384 slots and the helper waits until every node reports `cluster_state:ok`. The
cluster bus of a node listens on its port + 10000, so both are picked free. Every server dies
with the process that started it (PR_SET_PDEATHSIG), as the single-server fixtures' do.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis
from redis.crc import key_slot

from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.keys import Keys
from distcomp_obs.redis_server import die_with_parent, find_redis_server

#: a node's cluster bus listens on its port + this (Redis' fixed offset)
BUS_OFFSET = 10000


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int, low: int = 20000, high: int = 45000) -> list[int]:
    """n ports free on 127.0.0.1 whose bus ports (port + 10000) are free too. Picked at random below
    the kernel's ephemeral range, so the bus port stays below 65536 and clashes stay unlikely."""
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randrange(low, high)
        taken = {p for c in chosen for p in (c, c + BUS_OFFSET)}
        if port in taken or port + BUS_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == n:
                return chosen
    raise RedisUnavailable(f"no {n} free port pairs (P, P+{BUS_OFFSET}) on 127.0.0.1")


def find_redis_cli() -> str:
    found = shutil.which("redis-cli")
    if not found:
        raise RedisUnavailable("no redis-cli on PATH (Debian/Ubuntu: apt-get install redis-tools)")
    return found


@dataclass
class RedisClusterServers:
    """`masters` redis-server processes joined into one cluster with no replicas."""

    masters: int = 3
    executable: str | None = None
    directory: str | None = None
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._own_dir = self.directory is None
        self.dir = self.directory or tempfile.mkdtemp(prefix="distcomp-cluster-")

    @property
    def url(self) -> str:
        """The distcomp URL of this cluster: every node as a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def start(self, timeout_s: float = 30.0) -> RedisClusterServers:
        executable = self.executable or find_redis_server()
        cli = find_redis_cli()
        self.ports = self.ports or cluster_ports(self.masters)
        deadline = time.monotonic() + timeout_s
        try:
            for port in self.ports:
                self._start_node(executable, port)
            for port in self.ports:
                self._wait(partial(self._ping, port), deadline, f"node {port} answers")
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            create = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            if create.returncode != 0:
                raise RedisUnavailable(f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr}")
            for port in self.ports:
                self._wait(partial(self._cluster_ok, port), deadline, f"cluster_state:ok on node {port}")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_node(self, executable: str, port: int) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        args = [
            executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", node_dir,
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", "5000",
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        with open(os.path.join(node_dir, "redis.log"), "ab") as log:
            self.processes.append(
                subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=lambda: die_with_parent(signal.SIGTERM),
                )
            )

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)

    def _ping(self, port: int) -> bool:
        with self._node(port) as client:
            return bool(client.ping())

    def _cluster_ok(self, port: int) -> bool:
        with self._node(port) as client:
            info = client.execute_command("CLUSTER INFO")
        state = info.get("cluster_state") if isinstance(info, dict) else str(info)
        return state == "ok" or "cluster_state:ok" in str(state)

    def _wait(self, check: Callable[[], object], deadline: float, what: str) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RedisUnavailable(f"a cluster node exited ({proc.returncode}): see {self.dir}/*/redis.log")
            try:
                if check():
                    return
            except (redis.RedisError, OSError) as exc:
                last = exc
            time.sleep(0.05)
        raise RedisUnavailable(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))

    def slot_owner(self) -> dict[int, int]:
        """Port of the master serving each slot, from CLUSTER SLOTS of the first node."""
        owner: dict[int, int] = {}
        with self._node(self.ports[0]) as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                for slot in range(int(start), int(end) + 1):
                    owner[slot] = int(master[1])
        return owner

    def prefixes_on_distinct_masters(self, n: int, stem: str = "q") -> list[str]:
        """n queue prefixes whose hash tags `{<prefix>}` fall on n different masters."""
        owner = self.slot_owner()
        found: dict[int, str] = {}
        for i in range(100_000):
            prefix = f"{stem}{i}-{random.randrange(16**6):06x}:"
            port = owner[key_slot(Keys(prefix).todo_tasks.encode())]  # every key of the queue: one slot
            found.setdefault(port, prefix)
            if len(found) == n:
                return list(found.values())
        raise RedisUnavailable(f"could not place {n} queues on distinct masters (masters: {len(set(owner.values()))})")

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes = []

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
