"""A real Redis Sentinel deployment on loopback for tests: one master, one replica and three
sentinels, each its own process, in a temp directory.

The master and the replica are `redis-server` (the replica with `--replicaof`); each sentinel is
`redis-sentinel sentinel-<port>.conf` (a sentinel rewrites its config file, so each gets its own
writable one), or `redis-server <conf> --sentinel` when the Debian `redis-sentinel` package is not
installed (it is the same binary: Debian's package only adds the name). The sentinels watch the
master with quorum 2 and a 1 s down-after, so killing the master promotes the replica in a few
seconds. Every process dies with the process that started it (PR_SET_PDEATHSIG).

With `replication_delay_ms`, the replica follows the master through a latency proxy (the bench's)
that holds the replication stream back that long, and `kill_master` cuts that link before it
kills the master: the writes of the last `replication_delay_ms` never reach the replica, as when a
master dies with its last writes in flight. That is the asynchronous-replication loss a failover
can cause, made large enough to measure.

With `tls` (a certificate and its key), every process listens for TLS only and replicates and
talks to its peers over TLS; with `password` the master and the replica require it (the sentinels
are told it to monitor them); with `sentinel_password` the sentinels require one too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from distcomp_obs.bench.proxy import LatencyProxy
from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.netutil import free_port
from distcomp_obs.redis_server import die_with_parent, find_redis_server

SERVICE = "distcomp-test"


def sentinel_command(conf: str) -> list[str]:
    """How to start one sentinel on `conf`: redis-sentinel from PATH, else redis-server --sentinel."""
    found = shutil.which("redis-sentinel")
    if found:
        return [found, conf]
    return [find_redis_server(), conf, "--sentinel"]  # RedisUnavailable when there is no redis-server


def _sentinel_id(port: int) -> str:
    """A sentinel's run id (40 hex digits), fixed by its port so its peers can be listed in its config."""
    return f"{port:040x}"


@dataclass
class SentinelDeployment:
    """One master, one replica and `sentinels` sentinels monitoring them as `service`."""

    service: str = SERVICE
    sentinels: int = 3
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    replication_delay_ms: float = 0.0
    tls: tuple[str, str] | None = None
    password: str | None = None
    sentinel_password: str | None = None
    directory: str | None = None
    master_port: int = 0
    replica_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    proxy: LatencyProxy | None = None

    def __post_init__(self) -> None:
        self._own_dir = self.directory is None
        self.dir = self.directory or tempfile.mkdtemp(prefix="distcomp-sentinel-")

    @property
    def url(self) -> str:
        """The distcomp URL of this deployment (every sentinel, then the service name), without
        credentials or TLS options."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.service}"

    def _tls_lines(self) -> list[str]:
        """TLS settings, as `name value` (a config file line; `--name value` on a command line)."""
        if not self.tls:
            return []
        cert, key = self.tls
        return [f"tls-cert-file {cert}", f"tls-key-file {key}", f"tls-ca-cert-file {cert}", "tls-auth-clients no",
                "tls-replication yes"]  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> SentinelDeployment:
        server = find_redis_server()
        self.master_port = self.master_port or free_port()
        self.replica_port = self.replica_port or free_port()
        self.sentinel_ports = self.sentinel_ports or [free_port() for _ in range(self.sentinels)]
        deadline = time.monotonic() + timeout_s
        try:
            self._start_server(server, self.master_port)
            upstream = self.master_port
            if self.replication_delay_ms:
                self.proxy = LatencyProxy(("127.0.0.1", self.master_port)).start()
                self.proxy.set_delays(0, self.replication_delay_ms)
                upstream = self.proxy.port
            self._start_server(server, self.replica_port, "--replicaof", "127.0.0.1", str(upstream))
            self._wait(lambda: self._replica_synced(self.replica_port), deadline, "the replica in sync")
            for port in self.sentinel_ports:
                self._start_sentinel(port)
            self._wait(self._sentinels_ready, deadline, "every sentinel sees the master, the replica and its peers")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _spawn(self, port: int, args: list[str], log_name: str) -> None:
        with open(os.path.join(self.dir, log_name), "ab") as log:
            self.processes[port] = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )

    def _start_server(self, executable: str, port: int, *extra: str) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        listen = ["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]
        auth = ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        tls = [arg for line in self._tls_lines() for arg in ("--" + line.split()[0], line.split()[1])]
        args = [
            executable,
            *listen, *auth, *tls,
            "--bind", "127.0.0.1",
            "--dir", node_dir,
            "--save", "",
            "--appendonly", "yes",
            "--maxmemory-policy", "noeviction",
            "--repl-diskless-sync-delay", "0",  # the default waits 5 s for more replicas before a full sync
            *extra,
        ]  # fmt: skip
        self._spawn(port, args, f"redis-{port}.log")

    def _start_sentinel(self, port: int) -> None:
        conf = os.path.join(self.dir, f"sentinel-{port}.conf")
        svc = self.service
        # Each sentinel is told its id, its peers and the replica up front: found on their own
        # (hello messages every 2 s, INFO every 10 s) the deployment takes several seconds to form.
        lines = [
            *(["port 0", f"tls-port {port}"] if self.tls else [f"port {port}"]),
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel myid {_sentinel_id(port)}",
            *self._tls_lines(),
            *([f"requirepass {self.sentinel_password}"] if self.sentinel_password else []),
            f"sentinel monitor {svc} 127.0.0.1 {self.master_port} 2",
            *([f"sentinel auth-pass {svc} {self.password}"] if self.password else []),
            f"sentinel down-after-milliseconds {svc} {self.down_after_ms}",
            f"sentinel failover-timeout {svc} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {svc} 1",
            f"sentinel known-replica {svc} 127.0.0.1 {self.replica_port}",
            *(
                f"sentinel known-sentinel {svc} 127.0.0.1 {p} {_sentinel_id(p)}"
                for p in self.sentinel_ports
                if p != port
            ),
        ]
        with open(conf, "w") as f:  # writable: a sentinel rewrites it with what it learns
            f.write("".join(line + "\n" for line in lines))
        self._spawn(port, sentinel_command(conf), f"sentinel-{port}.log")

    def client(self, port: int) -> redis.Redis:
        """A plain client of one process (a sentinel's, or the master's or replica's), with its
        password and TLS."""
        password = self.sentinel_password if port in self.sentinel_ports else self.password
        tls = {"ssl": True, "ssl_ca_certs": self.tls[0]} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True, password=password,
                           **tls)  # fmt: skip

    def _replica_synced(self, port: int) -> bool:
        with self.client(port) as c:
            info = c.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with self.client(port) as c:
                state = c.execute_command("SENTINEL", "MASTER", self.service)
                if isinstance(state, list):
                    state = dict(zip(state[::2], state[1::2], strict=True))
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < self.sentinels - 1:
                    return False
        return True

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first answering sentinel sees it."""
        for port in self.sentinel_ports:
            try:
                with self.client(port) as c:
                    host, master_port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return str(host), int(master_port)
            except (redis.RedisError, OSError):
                continue
        raise RedisUnavailable("no sentinel answers")

    def role(self, port: int) -> str:
        with self.client(port) as c:
            return str(c.info("replication").get("role"))

    def kill_master(self, inspect: Callable[[redis.Redis], object] | None = None) -> int:
        """kill -9 the current master (first cutting the delayed replication link, if any, so what
        it still held back is lost); returns its port. With `inspect`, the master's writes are
        paused after the cut (CLIENT PAUSE WRITE: a write sent now waits, and dies unrun with the
        master) and `inspect` reads, through a client of the master, what it had acknowledged."""
        _, port = self.master_address()
        proc = self.processes.pop(port)
        if self.proxy is not None:
            self.proxy.refuse()
            self.proxy.reset_connections()
        if inspect is not None:
            with self.client(port) as master:
                master.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
                inspect(master)
        proc.kill()
        proc.wait(10)
        return port

    def failover(self) -> int:
        """A manual failover (SENTINEL FAILOVER, as for maintenance): the old master stays up and
        is turned into a replica later. Returns the old master's port."""
        _, port = self.master_address()
        with self.client(self.sentinel_ports[0]) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", self.service)
        return port

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Wait until every sentinel names a new master and it answers as one; returns its port."""

        def promoted() -> int | None:
            ports = set()
            for port in self.sentinel_ports:
                with self.client(port) as c:
                    ports.add(int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]))
            (new,) = ports if len(ports) == 1 else (None,)
            return new if new is not None and new != old_port and self.role(new) == "master" else None

        return int(self._wait(promoted, time.monotonic() + timeout_s, "the failover"))

    def _wait(self, check: Callable[[], object], deadline: float, what: str) -> object:
        last: Exception | None = None
        while time.monotonic() < deadline:
            for port, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RedisUnavailable(f"process on port {port} exited ({proc.returncode}): see {self.dir}/*.log")
            try:
                value = check()
                if value:
                    return value
            except (redis.RedisError, OSError, KeyError, ValueError) as exc:
                last = exc
            time.sleep(0.05)
        raise RedisUnavailable(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))

    def logs(self) -> str:
        """Every process's log (for a failing test's message)."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    out.append(f"--- {name}\n{f.read()[-4000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.processes.values():
            proc.wait(10)
        self.processes = {}

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
