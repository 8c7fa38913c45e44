"""Real `distcomp worker` subprocesses for the bench: start, wait until ready, pause, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue

#: the variants the bench knows: worker flags that select each (docs/ARCHITECTURE.md#the-three-optimizations)
VARIANT_FLAGS: dict[str, list[str]] = {
    "baseline": ["--baseline"],
    "baseline-nosleep": ["--baseline", "--poll-interval", "0"],
    "pipeline": ["--pipeline", "--prefetch", "0", "--polling", "fixed", "--poll-interval", "0"],
    "prefetch": ["--no-pipeline", "--prefetch", "32", "--polling", "fixed", "--poll-interval", "0"],
    "adaptive": ["--no-pipeline", "--prefetch", "0", "--polling", "adaptive"],
    "all": [],
}
DEFAULT_VARIANTS = list(VARIANT_FLAGS)


@dataclass(frozen=True)
class Variant:
    """A worker configuration under test. `metrics=False` and `direct=True` are the bench's
    own control runs: instrumentation overhead and the proxy's overhead."""

    name: str
    flags: tuple[str, ...]
    metrics: bool = True
    direct: bool = False
    env: tuple[tuple[str, str], ...] = ()  # extra environment (the tracing control runs)

    @staticmethod
    def named(name: str) -> Variant:
        if name not in VARIANT_FLAGS:
            raise ValueError(f"unknown variant {name!r} (known: {', '.join(VARIANT_FLAGS)})")
        return Variant(name, tuple(VARIANT_FLAGS[name]))


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str  # "" with --no-metrics
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class WorkerGroup:
    """Worker processes of one variant on one queue prefix."""

    variant: Variant
    redis_url: str
    prefix: str
    log_dir: Path
    concurrency: int
    extra_flags: tuple[str, ...] = ()
    procs: list[WorkerProc] = field(default_factory=list)

    def start(self, n: int = 1, first_index: int = 0) -> list[WorkerProc]:
        started = []
        for i in range(first_index, first_index + n):
            name = f"bench-{self.variant.name}-{i}"
            # the URL goes in the environment, not argv: a password in it would show in `ps`
            argv = [sys.executable, "-m", "distcomp_obs", "worker"]
            argv += ["--prefix", self.prefix, "--name", name, "--concurrency", str(self.concurrency)]
            argv += ["--variant", self.variant.name, *self.variant.flags, *self.extra_flags]
            url = ""
            if self.variant.metrics:
                port = free_port()
                argv += ["--metrics-addr", f"127.0.0.1:{port}"]
                url = f"http://127.0.0.1:{port}/metrics"
            else:
                argv.append("--no-metrics")
            log_path = self.log_dir / f"{self.prefix.rstrip(':')}-{name}.log"
            env = {**os.environ, "DISTCOMP_LOG_LEVEL": "WARNING", "OTEL_SDK_DISABLED": "true",
                   "DISTCOMP_REDIS_URL": self.redis_url}  # fmt: skip
            if self.variant.env:
                env.pop("OTEL_SDK_DISABLED")
                env.update(dict(self.variant.env))
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            wp = WorkerProc(name, proc, url, log_path)
            self.procs.append(wp)
            started.append(wp)
        return started

    def wait_ready(self, q: Queue, procs: list[WorkerProc] | None = None, timeout_s: float = 60.0) -> None:
        """Registered in Redis and, with metrics, serving /metrics."""
        procs = self.procs if procs is None else procs
        deadline = time.monotonic() + timeout_s
        pending = {p.name: p for p in procs}
        while pending:
            for p in pending.values():
                if p.proc.poll() is not None:
                    raise RuntimeError(f"worker {p.name} exited at start: {p.log_path.read_text(errors='replace')}")
            live = {n for n, w in q.workers().items() if w.get("live")}
            for name in [n for n in pending if n in live]:
                p = pending[name]
                if not p.metrics_url or _http_ok(p.metrics_url):
                    del pending[name]
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout_s}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.05)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.send_signal(sig)

    def pause(self) -> None:
        self.signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_all(signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.resume()  # a stopped process cannot handle SIGTERM
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # a loopback URL we built
            return bool(resp.status == 200)
    except OSError:
        return False
