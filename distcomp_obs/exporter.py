"""The queue exporter: queue-level metrics read from Redis at scrape time, and Prometheus HTTP
service discovery of every registered worker's metrics endpoint (docs/ARCHITECTURE.md#endpoints).

One exporter per deployment; it may watch several queues (key prefixes) of one Redis. A scrape
costs two pipelined round trips per queue and O(1) + O(workers) commands (`Queue.snapshot`),
whatever the queue length. Counters come from the Redis `stats` hash, incremented by the same Lua
steps that change the records, so they survive restarts of the exporter and of every worker.
"""

from __future__ import annotations

import logging
import platform
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from distcomp_obs import __version__
from distcomp_obs.httpd import MetricsServer
from distcomp_obs.queue import Queue
from distcomp_obs.records import Snapshot, unrunnable
from distcomp_obs.redis_io import Client, connect, redact_url

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:9711"
TASK_STATES = ("todo", "in_progress", "buffered", "failed", "finished", "cancelled")
#: exporter counter -> field of the Redis `stats` hash. `claimed`, not `started`: a claim may sit in a
#: worker's prefetch buffer before it starts (the worker's own distcomp_tasks_started_total counts starts).
COUNTERS = {
    "submitted": "submitted",
    "claimed": "claimed",
    "finished": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
}
#: Redis read timeout of a scrape: a frozen Redis (reads hang) must cost a scrape well under
#: Prometheus' scrape_timeout (4 s in the bundled config), so the scrape still answers, with redis_up 0.
REDIS_TIMEOUT_S = 1.0
#: /healthz trusts the last scrape this long; older (or none), it pings Redis itself
HEALTH_FRESH_S = 15.0


def queue_label(prefix: str) -> str:
    """The `queue` label of a key prefix: `distcomp:` -> `distcomp` (Prometheus labels read better bare)."""
    return prefix.rstrip(":") or prefix


class QueueCollector(Collector):
    """Reads every watched queue on each scrape (no cache: a scrape is the freshest truth)."""

    def __init__(self, client: Client, prefixes: Sequence[str]) -> None:
        self.client = client
        self.queues = [Queue(client, p) for p in prefixes]
        self.errors = 0
        self.last_ok: bool | None = None  # None: never collected
        self.last_at = 0.0  # time.monotonic() of the last collect
        self.last_error = ""
        self._lock = threading.Lock()  # concurrent scrapes must not interleave the error count

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to check at register time; don't touch Redis there

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            start = time.perf_counter()
            snaps: list[tuple[str, Snapshot]] = []
            try:
                snaps = [(queue_label(q.keys.prefix), q.snapshot()) for q in self.queues]
                self.last_ok, self.last_error = True, ""
            except (redis.RedisError, OSError) as exc:
                # Partial numbers would look like a drop to zero: serve none, count the error.
                self.errors += 1
                self.last_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
                snaps = []
                log.warning("exporter: collect failed: %s", self.last_error)
            self.last_at = time.monotonic()
            duration = time.perf_counter() - start
            errors, ok = self.errors, self.last_ok
        if snaps:
            yield from _queue_metrics(snaps)
        yield GaugeMetricFamily(
            "distcomp_exporter_redis_up",
            "1 if this scrape read every watched queue from Redis, 0 if a read failed or timed out (then no "
            "queue series are served: the reason is in /healthz and the exporter's log).",
            value=1 if ok else 0,
        )
        yield GaugeMetricFamily(
            "distcomp_exporter_collect_duration_seconds", "Time this scrape spent reading Redis.", value=duration
        )
        yield CounterMetricFamily(
            "distcomp_exporter_collect_errors_total", "Scrapes whose Redis reads failed.", value=errors
        )
        info = GaugeMetricFamily(
            "distcomp_build_info", "Always 1: the exporter's version.", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def health(self) -> tuple[bool, str]:
        """Healthy if the last collect worked; without a recent one, ask Redis directly."""
        if self.last_ok is not None and time.monotonic() - self.last_at < HEALTH_FRESH_S:
            return (True, "ok") if self.last_ok else (False, f"last collect failed: {self.last_error}")
        try:
            self.client.ping()
            return True, "ok (no recent scrape; Redis answers)"
        except (redis.RedisError, OSError) as exc:
            return False, f"redis unreachable: {exc}"

    def service_discovery(self) -> list[dict[str, Any]]:
        """Prometheus HTTP SD: one target group per registered worker that serves metrics, live and
        stale (until reaped or forgotten), so a dead worker shows as `up == 0` instead of vanishing."""
        groups: list[dict[str, Any]] = []
        for q in self.queues:
            for name, info in q.snapshot().workers.items():
                group = sd_target(name, info, queue_label(q.keys.prefix))
                if group:
                    groups.append(group)
        return groups


def sd_target(name: str, info: dict[str, Any], queue: str) -> dict[str, Any] | None:
    url = info.get("metrics_url") or ""
    if not url:
        return None  # --no-metrics: nothing to scrape
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    labels = {
        "worker": name,
        "variant": str(info.get("variant", "")),
        "host": str(info.get("host", parts.hostname)),
        "queue": queue,
    }
    if parts.path and parts.path != "/metrics":
        labels["__metrics_path__"] = parts.path
    if parts.scheme == "https":
        labels["__scheme__"] = "https"
    return {"targets": [f"{host}:{parts.port}"], "labels": labels}


def _queue_metrics(snaps: list[tuple[str, Snapshot]]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        "distcomp_queue_tasks",
        "Tasks by state: todo (waiting), in_progress (claimed: buffered or running), buffered (claimed, "
        "not started; sum of workers' last reports), failed (for good), finished.",
        labels=["queue", "state"],
    )
    counters = {
        name: CounterMetricFamily(
            f"distcomp_queue_tasks_{name}_total",
            f"Tasks {name} since the queue was created (kept in Redis by the atomic steps"
            + ("; a task reclaimed after its worker died counts again" if name == "claimed" else "")
            + ").",
            labels=["queue"],
        )
        for name in COUNTERS
    }
    ages = GaugeMetricFamily(
        "distcomp_queue_oldest_task_age_seconds",
        "Age of the oldest task waiting (todo: since claimable) or claimed (in_progress: since claim); 0 when none.",
        labels=["queue", "state"],
    )
    workers = GaugeMetricFamily(
        "distcomp_workers", "Registered workers: live (lease held) or stale (lease expired, not reaped).",
        labels=["queue", "state"],
    )  # fmt: skip
    unrunnable_tasks = GaugeMetricFamily(
        "distcomp_queue_tasks_unrunnable",
        "Tasks waiting that no live worker can take: their min_dram_gb or min_cpu exceed every live worker's "
        "(distcomp status --todo says which and why); 0 while no worker is live.",
        labels=["queue"],
    )
    heartbeats = GaugeMetricFamily(
        "distcomp_worker_last_heartbeat_timestamp_seconds",
        "Unix time of each registered worker's last heartbeat, by the Redis server's clock (a worker's own "
        "clock may be off), kept until it is reaped or forgotten.",
        labels=["queue", "worker"],
    )
    heartbeat_ages = GaugeMetricFamily(
        "distcomp_worker_heartbeat_age_seconds",
        "Seconds since each registered worker's last heartbeat, both ends by the Redis server's clock (no "
        "clock of Prometheus, the exporter or the worker involved), kept until it is reaped or forgotten.",
        labels=["queue", "worker"],
    )
    timeouts = GaugeMetricFamily(
        "distcomp_queue_task_timeout_seconds",
        "The longest task timeout (--task-timeout) among live workers; 0 when one runs tasks without a "
        "timeout; absent when no live worker reports its timeout.",
        labels=["queue"],
    )
    for queue, snap in snaps:
        buffered = sum(int(w.get("buffered", 0)) for w in snap.workers.values())
        values = {**snap.counts, "buffered": buffered}
        for state in TASK_STATES:
            tasks.add_metric([queue, state], values[state])
        for name, field in COUNTERS.items():
            counters[name].add_metric([queue], snap.stats.get(field, 0))
        for state, age in snap.oldest_age_s.items():
            ages.add_metric([queue, state], age or 0.0)
        unrunnable_tasks.add_metric([queue], sum(n for n, _ in unrunnable(snap.classes, snap.workers).values()))
        live = sum(1 for w in snap.workers.values() if w["live"])
        workers.add_metric([queue, "live"], live)
        workers.add_metric([queue, "stale"], len(snap.workers) - live)
        for name, info in snap.workers.items():
            if "seen_ms" in info:
                heartbeats.add_metric([queue, name], float(info["seen_ms"]) / 1000)
                heartbeat_ages.add_metric([queue, name], max(0.0, snap.server_time_s - float(info["seen_ms"]) / 1000))
        timeout = task_timeout_s(snap.workers)
        if timeout is not None:
            timeouts.add_metric([queue], timeout)
    yield tasks
    yield from counters.values()
    yield ages
    yield unrunnable_tasks
    yield workers
    yield heartbeats
    yield heartbeat_ages
    yield timeouts


def task_timeout_s(workers: dict[str, dict[str, Any]]) -> float | None:
    """The longest task timeout of the live workers (the stuck-task alert scales with it): 0 if any
    of them runs tasks without one, None if none reports it (no live worker, or older workers)."""
    reported = [float(w["task_timeout_s"]) for w in workers.values() if w.get("live") and "task_timeout_s" in w]
    if not reported:
        return None
    return 0.0 if min(reported) <= 0 else max(reported)


class Exporter:
    """The `distcomp exporter` process: one collector, one HTTP server (/metrics, /healthz, /sd)."""

    def __init__(self, redis_url: str, prefixes: Sequence[str], addr: str = DEFAULT_ADDR) -> None:
        # check=False: start even while Redis is down (scrapes then report errors, /healthz 503).
        # A short timeout keeps a scrape within Prometheus's scrape_timeout when Redis hangs (REDIS_TIMEOUT_S).
        self.redis_url = redis_url
        self.client = connect(redis_url, timeout_s=REDIS_TIMEOUT_S, check=False)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.collector = QueueCollector(self.client, prefixes)
        self.registry.register(self.collector)
        self.server = MetricsServer(
            addr, self.registry, self.collector.health, {"/sd": self.collector.service_discovery}
        )
        self.stop_event = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.server.url_host}:{self.server.port}"

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        self.server.start()
        log.info(
            "exporter serving %s/metrics, /sd and /healthz for queue(s) %s of %s",
            self.url,
            ", ".join(q.keys.prefix for q in self.collector.queues),
            redact_url(self.redis_url),
        )
        self.stop_event.wait()
        self.server.stop()
        log.info("exporter stopped")
        return 0
