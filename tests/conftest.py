"""Fixtures: a real redis-server per test session (keys isolated per test by prefix), real
worker subprocesses, and helpers to wait for conditions without fixed sleeps.

Under CI=true a missing redis-server fails the run instead of skipping (dramatiq's check_redis).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer, find_redis_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI: a test that cannot run must not pass silently there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {what}")
        pytest.skip(f"prerequisite missing: {what}")


def terminate(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM a test's server process and wait for it; SIGKILL it if it outlives `timeout`."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        find_redis_server()
    except RedisUnavailable as exc:
        require(False, str(exc))
    server = RedisServer(port=free_port()).start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def queue(redis_url: str, prefix: str) -> Iterator[Queue]:
    q = Queue(connect(redis_url), prefix)
    yield q
    manager.reset(q)


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own (AOF on) that the test may kill and restart on the same port."""
    try:
        find_redis_server()
    except RedisUnavailable as exc:
        require(False, str(exc))
    server = RedisServer(port=free_port(), appendonly=True, directory=str(tmp_path / "redis")).start()
    yield server
    server.cleanup()


def distcomp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "distcomp_obs", *args]


def run_cli(*args: str, timeout: float = 60, input: str | None = None, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(distcomp_argv(*args), capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})}, cwd=REPO)  # fmt: skip


class WorkerProc:
    """A `distcomp worker` subprocess; output goes to a log file the test can read."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        # A SIGTERM that lands while Python is still importing kills the process before its
        # handlers exist (exit -15): wait (bounded) until the worker has logged its start.
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and " started: " not in self.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class ProcGroup:
    """The processes of one live stack (exporter, workers, Prometheus, ...), stopped together."""

    def __init__(self, stop_wait_s: float = 15) -> None:
        self.procs: list[WorkerProc] = []
        self.stop_wait_s = stop_wait_s

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> WorkerProc:
        proc = WorkerProc(argv, log, env)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:  # SIGTERM to all first, so their drains overlap
            proc.signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=self.stop_wait_s)
            except subprocess.TimeoutExpired:
                pass
            proc.close()  # SIGKILL if still running

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-1500:]}" for p in self.procs)


def warm_up(queue: Queue, n: int = 20) -> list[str]:
    """Run `n` no-op tasks on the worker(s) already started. A worker buffers what its slots finish
    during one claim round trip (issue 10; one per slot before any task finished): once it has
    seen tasks take µs its buffer target is `--prefetch`, so a test of the buffer itself can fill
    it with long tasks. Returns the warm-up lines (they are submitted tasks too)."""
    warm = [f"builtin:1:0:0:noop warm-up {i}" for i in range(n)]
    before = queue.counts()["finished"]
    queue.submit(warm)
    wait_until(lambda: queue.counts()["finished"] >= before + n, timeout=20, what="warm-up tasks run")
    return warm


#: fast timings for tests: sub-second leases, quick heartbeats and reaps
FAST = ["--heartbeat-interval", "0.2", "--lease", "1", "--reap-interval", "0.3", "--grace-period", "5"]


@pytest.fixture
def start_worker(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    procs: list[WorkerProc] = []

    def start(*flags: str, name: str | None = None, url: str | None = None, fast: bool = True,
              env: dict[str, str] | None = None) -> WorkerProc:  # fmt: skip
        name = name or f"w{len(procs) + 1}"
        argv = distcomp_argv("worker", "--redis-url", url or redis_url, "--prefix", prefix, "--name", name,
                             *(FAST if fast else []), *flags)  # fmt: skip
        proc = WorkerProc(argv, tmp_path / f"{name}-{len(procs)}.log", {**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop(timeout=10)
        proc.close()
