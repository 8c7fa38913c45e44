"""Every Prometheus metric of the worker, with its help text and buckets (docs/OBSERVABILITY.md).

Metrics are built on a registry passed in (one per worker process, one per test), never as
import-time globals. Known label values are initialised so `increase()` sees the first event.
`WorkerMetrics(None)` gives the same attributes backed by no-ops, for `--no-metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, disable_created_metrics

# `_created` series double the series count and confuse users (celery-exporter #251, #304).
disable_created_metrics()  # type: ignore[no-untyped-call]

ROUNDTRIP_OPS = ("claim", "report", "heartbeat", "reap", "poll", "return", "submit", "reconcile")
REDIS_ERRORS = ("connection", "timeout", "response", "script")
TASK_TYPES = ("shell", "python", "builtin")
OUTCOMES = ("finished", "failed", "retried")  # prebound; "cancelled" is labelled when it happens
#: why claimed tasks go back unfinished (a task that times out is failed, not returned)
RETURN_REASONS = ("sigterm", "memory_pressure", "restart", "reconcile", "shutdown", "lease_gap")
SLEEP_REASONS = ("fixed_interval", "idle_backoff", "blocking_wait", "buffer_full", "redis_down")
BUFFER_EVENTS = ("take", "refill")

#: Loopback Redis answers in ~0.1 ms; the bench proxy injects 1-10 ms.
ROUNDTRIP_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Resolve 1 ms (adaptive pickup) and 2 s (DistComp's fixed polling), reach an hour.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
#: 1 ms ... 4 h: simulations run for hours (a 10 s top bucket is Flower's #1 complaint).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400)
OCCUPANCY_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
SLEEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)

#: Documented budget of series one worker exposes (tests/test_metrics.py enforces it).
SERIES_BUDGET = 700


class _Null:
    """Stands in for a metric or a labelled child when metrics are off."""

    def labels(self, *_: Any, **__: Any) -> _Null:
        return self

    def observe(self, *_: Any, **__: Any) -> None:
        pass

    def inc(self, *_: Any, **__: Any) -> None:
        pass

    def set(self, *_: Any, **__: Any) -> None:
        pass


NULL = _Null()


class WorkerMetrics:
    """The worker's metrics. Attribute names follow the metric names without `distcomp_`."""

    def __init__(self, registry: CollectorRegistry | None, buckets: dict[str, Sequence[float]] | None = None) -> None:
        self.enabled = registry is not None
        b: dict[str, Sequence[float]] = {
            "roundtrip": ROUNDTRIP_BUCKETS,
            "wait": WAIT_BUCKETS,
            "duration": DURATION_BUCKETS,
            "sleep": SLEEP_BUCKETS,
        }
        b.update(buckets or {})

        def hist(name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Any:
            if registry is None:
                return NULL
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return NULL if registry is None else Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return NULL if registry is None else Gauge(name, doc, labels, registry=registry)

        self.redis_roundtrip_seconds = hist(
            "distcomp_redis_roundtrip_seconds",
            "Wall time of one Redis round trip (single command, pipeline or script), by operation.",
            ["op"],
            b["roundtrip"],
        )
        # A summary, not a histogram: a round trip carries one command (a script counts once) or a
        # small fixed pipeline, so per-round-trip buckets were 80 series that never moved. `_sum` is
        # the command counter (commands per task), `_count` equals the round trips.
        self.redis_roundtrip_commands = (
            NULL
            if registry is None
            else Summary(
                "distcomp_redis_roundtrip_commands",
                "Redis commands sent, by operation (a script call counts once): _sum counts commands, "
                "_count round trips.",
                ["op"],
                registry=registry,
            )
        )
        self.redis_errors = counter(
            "distcomp_redis_errors_total",
            "Redis round trips that failed, by operation and error kind.",
            ["op", "error"],
        )
        self.tasks_claimed = counter("distcomp_tasks_claimed_total", "Tasks claimed from Redis into this worker.")
        self.tasks_started = counter("distcomp_tasks_started_total", "Tasks started in a slot, by type.", ["type"])
        self.tasks_completed = counter(
            "distcomp_tasks_completed_total",
            "Task attempts that ended and were recorded, by type and outcome (failed = for good; "
            "retried = failed here, queued for another worker).",
            ["type", "outcome"],
        )
        self.tasks_returned = counter(
            "distcomp_tasks_returned_total", "Claimed tasks given back to the queue unfinished, by reason.", ["reason"]
        )
        self.stale_reports = counter(
            "distcomp_stale_reports_total", "Reports rejected because this worker no longer held the task's claim."
        )
        self.task_duration_seconds = hist(
            "distcomp_task_duration_seconds",
            "Task run time in a slot, by type and outcome.",
            ["type", "outcome"],
            b["duration"],
        )
        self.task_queue_wait_seconds = hist(
            "distcomp_task_queue_wait_seconds",
            "Time from becoming claimable (submit or requeue) to claim.",
            [],
            b["wait"],
        )
        self.task_buffer_wait_seconds = hist(
            "distcomp_task_buffer_wait_seconds",
            "Time from claim to start: spent in the prefetch buffer.",
            [],
            b["wait"],
        )
        self.task_pickup_delay_seconds = hist(
            "distcomp_task_pickup_delay_seconds",
            "Time from becoming claimable to start (queue wait + buffer wait).",
            [],
            b["wait"],
        )
        self.buffer_occupancy_tasks = hist(
            "distcomp_buffer_occupancy_tasks",
            "Buffered tasks seen when a slot takes one (take; le=0 counts a slot finding it empty) or after a refill.",
            ["event"],
            OCCUPANCY_BUCKETS,
        )
        self.buffer_tasks = gauge("distcomp_buffer_tasks", "Claimed tasks waiting in the local buffer.")
        self.buffer_capacity_tasks = gauge("distcomp_buffer_capacity_tasks", "Configured prefetch buffer size.")
        self.slots_busy = gauge("distcomp_slots_busy", "Slots running a task.")
        self.slots_total = gauge("distcomp_slots", "Slots (concurrency) of this worker.")
        self.poll_sleep_seconds = hist(
            "distcomp_poll_sleep_seconds",
            "Every sleep or blocking wait of the fetch loop, by reason.",
            ["reason"],
            b["sleep"],
        )
        self.last_claim_timestamp = gauge(
            "distcomp_worker_last_claim_timestamp_seconds", "Unix time of the last claim that returned a task."
        )
        self.worker_info = gauge(
            "distcomp_worker_info",
            "Always 1: this worker's name, version and optimization flags.",
            ["worker", "version", "variant", "pipeline", "prefetch", "polling"],
        )
        self._init_labels()

    def _init_labels(self) -> None:
        for op in ROUNDTRIP_OPS:
            self.redis_roundtrip_seconds.labels(op)
            self.redis_roundtrip_commands.labels(op)
            for err in REDIS_ERRORS:
                self.redis_errors.labels(op, err)
        for t in TASK_TYPES:
            self.tasks_started.labels(t)
            for outcome in OUTCOMES:
                self.tasks_completed.labels(t, outcome)
                self.task_duration_seconds.labels(t, outcome)
        for reason in RETURN_REASONS:
            self.tasks_returned.labels(reason)
        for reason in SLEEP_REASONS:
            self.poll_sleep_seconds.labels(reason)
        for event in BUFFER_EVENTS:
            self.buffer_occupancy_tasks.labels(event)


def classify_redis_error(exc: BaseException) -> str:
    """Map a redis-py exception to the `error` label of distcomp_redis_errors_total."""
    import redis

    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.ConnectionError):
        return "connection"
    if isinstance(exc, redis.exceptions.NoScriptError):
        return "script"
    return "response"  # RoundTrips names the refusals among these (redis_io.REFUSALS)
