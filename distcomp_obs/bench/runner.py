"""`distcomp bench`: real worker processes per variant, one Redis, a latency proxy in between.

Method (docs/BENCHMARKS.md): for each workload and injected latency, variants run one after the other,
interleaved (A B C A B C ...) and repeated, each on a fresh key prefix of the same Redis. A
drain run starts the worker idle, pauses it (SIGSTOP) while the tasks are submitted, and times
from SIGCONT to the last task recorded, so neither interpreter start-up nor submission is in
the figure. Runs that cannot drain in `window_s` (DistComp's 2 s sleep drains 0.5 tasks/s)
are measured over the window instead. Redis-side counts come from INFO commandstats deltas
(the bench's own probe commands removed); worker-side counts from the worker's /metrics.

This module holds the bench itself (Redis, proxy, variants, recording, metadata); the
workloads are in workloads.py (drain, pickup) and scale.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from distcomp_obs.bench import probes
from distcomp_obs.bench.cluster import cluster_workload
from distcomp_obs.bench.proxy import LatencyProxy, Upstream, measure_rtt_ms
from distcomp_obs.bench.scale import scale_workload
from distcomp_obs.bench.workers import DEFAULT_VARIANTS, Variant, WorkerGroup
from distcomp_obs.bench.workloads import drain_workload, pickup_workload
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect, connect_server
from distcomp_obs.redis_server import RedisServer

WORKLOADS = ("noop", "shell", "pickup", "scale", "cluster")
#: what `distcomp bench` runs unless --workloads says otherwise (cluster is opt-in: it takes long)
DEFAULT_WORKLOADS = ("noop", "shell", "pickup", "scale")


@dataclass
class BenchOptions:
    workloads: list[str] = field(default_factory=lambda: list(DEFAULT_WORKLOADS))
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    latencies_ms: list[float] = field(default_factory=lambda: [0.0, 1.0, 5.0])
    repeat: int = 3
    concurrency: int = 2
    noop_tasks: int = 20000
    shell_tasks: int = 1000
    window_s: float = 5.0  # longest drain measurement
    pickups: int = 10
    pickup_spacing_s: float = 0.2
    idle_window_s: float = 20.0
    pickup_repeat: int | None = None  # None: same as repeat
    scale_queued: int = 1_000_000
    scale_idle_workers: int = 200
    scale_seconds: float = 3.0
    cluster_workers: list[int] = field(default_factory=lambda: [1, 2, 4])  # W values of the cluster workload
    overhead: bool = True  # extra control runs: --no-metrics and direct (no proxy)
    redis_url: str | None = None
    out_dir: str = "bench-results"
    command: str = ""
    seed: int = 1


class _SinkHandler(BaseHTTPRequestHandler):
    """Accepts any OTLP/HTTP export and drops it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


#: workload name -> what runs it (an unknown name runs the scale workload, as it always did)
WORKLOAD_RUNNERS: dict[str, Callable[[Bench, str], None]] = {
    "noop": drain_workload,
    "shell": drain_workload,
    "pickup": pickup_workload,
    "scale": scale_workload,
    "cluster": cluster_workload,
}


class Bench:
    def __init__(self, opts: BenchOptions, log: Callable[[str], None] | None = None) -> None:
        self.o = opts
        self.out = Path(opts.out_dir)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log: Callable[[str], None] = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.rng = random.Random(opts.seed)
        self.runs: list[dict[str, Any]] = []
        self.scale: dict[str, Any] = {}
        self.proxy_info: dict[str, Any] = {}
        self._serial = 0
        self._server: RedisServer | None = None
        self.redis_url = ""
        self.proxy: LatencyProxy | None = None
        self.admin: redis.Redis  # the bench's own client (INFO, audits), set by run()
        self._sink: ThreadingHTTPServer | None = None  # OTLP sink for the tracing control runs, started on first use

    def _otlp_sink(self) -> str:
        """A local OTLP/HTTP endpoint that accepts and drops spans: tracing's cost without a backend."""
        if self._sink is None:
            self._sink = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
            threading.Thread(target=self._sink.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._sink.server_address[1]}"

    def _stop_sink(self) -> None:
        if self._sink is not None:
            self._sink.shutdown()
            self._sink.server_close()
            self._sink = None

    # ------------------------------------------------------------------ top level
    def run(self) -> dict[str, Any]:
        started = time.time()
        with self._redis() as url, self._proxied(url) as proxy:
            self.redis_url, self.proxy = url, proxy
            self.admin = connect_server(url)
            try:
                self._measure_proxy()
                for workload in self.o.workloads:
                    self.log(f"== workload {workload}")
                    WORKLOAD_RUNNERS.get(workload, scale_workload)(self, workload)
                redis_version = str(self.admin.info("server").get("redis_version", "?"))
            finally:
                self._stop_sink()
                self.admin.close()
        return {
            "meta": self._meta(started, redis_version),
            "proxy": self.proxy_info,
            "runs": self.runs,
            "scale": self.scale,
        }

    @contextmanager
    def _redis(self) -> Iterator[str]:
        if self.o.redis_url:
            yield self.o.redis_url
            return
        self._server = RedisServer(port=free_port()).start()
        try:
            yield self._server.url
        finally:
            self._server.cleanup()

    @contextmanager
    def _proxied(self, url: str) -> Iterator[LatencyProxy]:
        parts = urlsplit(url)
        upstream: Upstream = (
            parts.path if parts.scheme == "unix" else (parts.hostname or "127.0.0.1", parts.port or 6379)
        )
        proxy = LatencyProxy(upstream).start()
        try:
            yield proxy
        finally:
            proxy.stop()

    def _proxy_url(self, direct: bool) -> str:
        """The URL workers use: the proxy's, with the real URL's credentials and db."""
        if direct:
            return self.redis_url
        assert self.proxy is not None
        parts = urlsplit(self.redis_url)
        auth = ""
        if parts.password is not None:
            auth = f"{parts.username or ''}:{parts.password}@"
        db = parts.path if parts.scheme != "unix" else ""
        return f"redis://{auth}127.0.0.1:{self.proxy.port}{db}"

    def _measure_proxy(self) -> None:
        """PING round trips direct and through the proxy at each latency: its own overhead."""
        assert self.proxy is not None
        direct = measure_rtt_ms(self.redis_url, 300)
        by_latency: dict[str, dict[str, float]] = {}
        for ms in self.o.latencies_ms:
            self.proxy.set_latency(ms)
            by_latency[f"{ms:g}"] = _summary(measure_rtt_ms(self._proxy_url(False), 300))
        self.proxy.set_latency(0)
        self.proxy_info = {
            "precise_timers": self.proxy.precise_timers,
            "ping_rtt_ms_direct": _summary(direct),
            "ping_rtt_ms_proxied": by_latency,
        }
        self.log(
            f"proxy: PING p50 direct {self.proxy_info['ping_rtt_ms_direct']['p50']:.3f} ms; proxied "
            + ", ".join(f"{k} ms -> {v['p50']:.3f} ms" for k, v in by_latency.items())
        )

    def _meta(self, started: float, redis_version: str) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
                cwd=Path(__file__).resolve().parents[2],  # the checkout, not the caller's directory
            ).stdout.strip()
        except OSError:
            commit = ""
        return {
            "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "command": self.o.command,
            "options": asdict(self.o) | {"redis_url": "(set)" if self.o.redis_url else None},
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "mem_total_gb": round(vm.total / 2**30, 1),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_at_end": os.getloadavg(),
            },
            "redis_version": redis_version,
            "git_commit": commit,
        }

    # ------------------------------------------------------------------ helpers
    def record(self, workload: str, variant: str, latency: float, rep: int, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement; a failing run (a worker that cannot start, say) is recorded
        with its error and the bench goes on, so one bad variant does not lose the others."""
        try:
            run = fn()
        except (RuntimeError, OSError, ValueError, redis.RedisError) as exc:
            run = {
                "workload": workload,
                "variant": variant,
                "latency_ms": latency,
                "repeat": rep,
                "error": str(exc)[-2000:],
            }
            self.log(f"  {workload:6} {variant:16} {latency:g} ms #{rep}: FAILED: {str(exc)[-300:]}")
            self.runs.append(run)
            return
        self.runs.append(run)
        self.log(_run_line(run))

    def variants(self, workload: str, latency_ms: float, first_latency: bool) -> list[Variant]:
        out = [Variant.named(v) for v in self.o.variants]
        if self.o.overhead and workload == "noop" and "all" in self.o.variants:
            if first_latency:  # instrumentation overhead: the same variant without metrics, and with traces
                flags = Variant.named("all").flags
                out.append(Variant("all-nometrics", flags, metrics=False))
                otlp = (("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_EXPORTER_OTLP_ENDPOINT", self._otlp_sink()))
                out.append(Variant("all-tracing1pct", flags, env=(*otlp, ("OTEL_TRACES_SAMPLER", "traceidratio"),
                                                                  ("OTEL_TRACES_SAMPLER_ARG", "0.01"))))  # fmt: skip
                out.append(Variant("all-tracing", flags, env=(*otlp, ("OTEL_TRACES_SAMPLER", "always_on"))))
            if latency_ms == 0:  # the proxy's overhead: the same variant connected directly
                out.append(Variant("all-direct", Variant.named("all").flags, direct=True))
        return out

    def new_queue(self) -> Queue:
        self._serial += 1
        return Queue(connect(self.redis_url), f"bench{self._serial}-{uuid.uuid4().hex[:6]}:")

    def group(self, q: Queue, variant: Variant, concurrency: int | None = None) -> WorkerGroup:
        return WorkerGroup(
            variant, self._proxy_url(variant.direct), q.keys.prefix, self.logs, concurrency or self.o.concurrency
        )

    def task_lines(self, workload: str, n: int) -> list[str]:
        tag = uuid.uuid4().hex[:6]  # unique across runs: identical lines are one task
        if workload == "shell":
            return [f"shell:1:0:0:true {tag}-{i}" for i in range(n)]
        return [f"builtin:1:0:0:noop {tag}-{i}" for i in range(n)]


# ---------------------------------------------------------------------- small helpers
def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": probes.percentile(values, 0.5) or 0.0,
        "p99": probes.percentile(values, 0.99) or 0.0,
        "min": min(values),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _run_line(run: dict[str, Any]) -> str:
    keys: tuple[str, ...] = ("tasks_per_s", "redis_commands_per_task", "worker_roundtrips_per_task")
    keys += ("worker_cpu_us_per_task", "pickup_p50_ms", "pickup_p99_ms", "e2e_p50_ms")
    keys += ("idle_worker_beyond_heartbeat_commands_per_s",)
    figures = " ".join(f"{k}={run[k]:.3g}" for k in keys if isinstance(run.get(k), int | float))
    return f"  {run['workload']:6} {run['variant']:16} {run['latency_ms']:g} ms #{run['repeat']}: {figures}"


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def command_line(argv: list[str]) -> str:
    return "distcomp " + " ".join(shlex.quote(a) for a in argv)


def install_sigterm() -> None:
    """SIGTERM ends the bench like Ctrl-C (its finally blocks stop the workers and Redis)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
