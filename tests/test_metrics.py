"""A real worker's /metrics and /healthz after it ran real tasks from real Redis: every family of
docs/OBSERVABILITY.md with its type and labels, counts that match the records, buckets, the series budget,
promtool, and health that follows Redis."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from distcomp_obs import __version__, metrics
from distcomp_obs.exporter import sd_target
from distcomp_obs.queue import Queue
from distcomp_obs.redis_server import RedisServer
from tests.conftest import WorkerProc, require, wait_until
from tests.test_exporter import http_get

#: family -> (type, label names) the dashboards and rules rely on
FAMILIES = {
    "distcomp_redis_roundtrip_seconds": ("histogram", {"op"}),
    "distcomp_redis_roundtrip_commands": ("summary", {"op"}),
    "distcomp_redis_errors": ("counter", {"op", "error"}),
    "distcomp_tasks_claimed": ("counter", set()),
    "distcomp_tasks_started": ("counter", {"type"}),
    "distcomp_tasks_completed": ("counter", {"type", "outcome"}),
    "distcomp_tasks_returned": ("counter", {"reason"}),
    "distcomp_stale_reports": ("counter", set()),
    "distcomp_task_duration_seconds": ("histogram", {"type", "outcome"}),
    "distcomp_task_queue_wait_seconds": ("histogram", set()),
    "distcomp_task_buffer_wait_seconds": ("histogram", set()),
    "distcomp_task_pickup_delay_seconds": ("histogram", set()),
    "distcomp_buffer_occupancy_tasks": ("histogram", {"event"}),
    "distcomp_buffer_tasks": ("gauge", set()),
    "distcomp_buffer_capacity_tasks": ("gauge", set()),
    "distcomp_slots_busy": ("gauge", set()),
    "distcomp_slots": ("gauge", set()),
    "distcomp_poll_sleep_seconds": ("histogram", {"reason"}),
    "distcomp_worker_last_claim_timestamp_seconds": ("gauge", set()),
    "distcomp_worker_info": ("gauge", {"worker", "version", "variant", "pipeline", "prefetch", "polling"}),
}


def metrics_url(worker: WorkerProc) -> str:
    found = wait_until(lambda: re.search(r"metrics=(http://\S+)", worker.log()), what="metrics URL logged")
    return found.group(1)


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def drained_worker(queue: Queue, start_worker, *flags: str, ok: int = 40, fail: int = 2) -> tuple[WorkerProc, str]:
    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(ok)] + [f"builtin:1:0:0:fail {i}" for i in range(fail)])
    worker = start_worker("--concurrency", "2", *flags, name="mw")
    url = metrics_url(worker)
    wait_until(lambda: queue.counts()["finished"] + queue.counts()["failed"] == ok + fail, what="queue drained")
    # the finished counter moves when the report's reply is accounted, just after Redis recorded it
    wait_until(
        lambda: sample(http_get(url)[2], "distcomp_tasks_completed_total", type="builtin", outcome="failed") == fail,
        what="reports accounted",
    )
    return worker, url


def test_worker_metrics_after_draining(queue: Queue, start_worker) -> None:
    worker, url = drained_worker(queue, start_worker, "--variant", "opt", "--prefetch", "8")
    code, ctype, text = http_get(url)
    assert code == 200 and ctype.startswith("text/plain")
    fams = families(text)
    for name, (kind, labels) in FAMILIES.items():
        assert name in fams, name
        fam = fams[name]
        assert fam.type == kind, (name, fam.type)
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    assert not [line for line in text.splitlines() if "_created" in line]  # disabled: half the series

    counts = queue.counts()
    done = lambda outcome: sample(text, "distcomp_tasks_completed_total", type="builtin", outcome=outcome)  # noqa: E731
    assert done("finished") == counts["finished"] == 40
    assert done("failed") == counts["failed"] == 2
    assert done("retried") == 0
    assert sample(text, "distcomp_tasks_claimed_total") == 42
    assert sample(text, "distcomp_tasks_started_total", type="builtin") == 42
    assert sample(text, "distcomp_tasks_started_total", type="shell") == 0  # known labels start at 0
    assert sample(text, "distcomp_task_duration_seconds_count", type="builtin", outcome="finished") == 40
    assert sample(text, "distcomp_task_pickup_delay_seconds_count") == 42
    assert sample(text, "distcomp_task_queue_wait_seconds_count") == 42
    for op in ("claim", "report", "heartbeat"):
        assert sample(text, "distcomp_redis_roundtrip_seconds_count", op=op) > 0, op
        assert sample(text, "distcomp_redis_roundtrip_commands_count", op=op) > 0, op
    # pipelined: each claim and report is one script call, so 1 command per round trip
    assert sample(text, "distcomp_redis_roundtrip_commands_sum", op="claim") == sample(
        text, "distcomp_redis_roundtrip_commands_count", op="claim"
    )
    # a summary without quantiles: per-round-trip buckets would never move (always 1 command)
    assert "distcomp_redis_roundtrip_commands_bucket" not in text and 'quantile="' not in text
    assert sample(text, "distcomp_buffer_capacity_tasks") == 8
    assert sample(text, "distcomp_slots") == 2
    assert sample(text, "distcomp_buffer_occupancy_tasks_count", event="take") == 42

    (info,) = fams["distcomp_worker_info"].samples
    assert info.value == 1
    assert info.labels == {"worker": "mw", "version": __version__, "variant": "opt", "pipeline": "true",
                           "prefetch": "8", "polling": "adaptive"}  # fmt: skip

    # buckets fit what they measure (docs/OBSERVABILITY.md)
    def bounds(name: str, **labels: str) -> list[float]:
        return [
            float(s.labels["le"])
            for s in fams[name].samples
            if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    rt = bounds("distcomp_redis_roundtrip_seconds", op="claim")
    assert rt[0] == 5e-5 and rt[-2] == 1.0
    dur = bounds("distcomp_task_duration_seconds", type="builtin", outcome="finished")
    assert dur[0] == 0.001 and dur[-2] == 4 * 3600
    wait = bounds("distcomp_task_pickup_delay_seconds")
    assert wait[0] == 0.001 and wait[-2] >= 3600
    assert bounds("distcomp_buffer_occupancy_tasks", event="take")[0] == 0

    # the OpenMetrics exposition is negotiated (exemplars need it)
    code, ctype, om = http_get(url, "application/openmetrics-text")
    assert code == 200 and ctype.startswith("application/openmetrics-text") and om.rstrip().endswith("# EOF")

    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package: prometheus)")
    res = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    # promtool's lint must pass cleanly: no exception (the slots gauge is `distcomp_slots`, no `_total`).
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 0 and complaints == [], complaints
    assert worker.stop() == 0


def count_series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_series_budget(queue: Queue, start_worker) -> None:
    """One worker's series, after every kind of event, stay within the documented budget."""
    _, url = drained_worker(queue, start_worker, "--prefetch", "4", ok=10, fail=1)
    series = count_series(http_get(url)[2])
    assert series <= metrics.SERIES_BUDGET, f"{series} series > budget {metrics.SERIES_BUDGET}"
    # Everything is pre-initialised, so running tasks adds no series: the count is the steady state.
    registry = CollectorRegistry()
    metrics.WorkerMetrics(registry)
    from prometheus_client import generate_latest

    assert count_series(generate_latest(registry).decode()) <= series


def test_ipv6_metrics_address(queue: Queue, start_worker) -> None:
    """`--metrics-addr [::1]:0` (an IPv6 pod address works the same): the worker binds it, publishes
    a bracketed URL, and the exporter's service discovery hands Prometheus a `[addr]:port` target."""
    worker = start_worker("--metrics-addr", "[::1]:0", name="six")
    url = metrics_url(worker)
    assert url.startswith("http://[::1]:"), url
    code, _, text = http_get(url)
    assert code == 200 and "distcomp_worker_info" in text
    wait_until(lambda: queue.workers().get("six", {}).get("metrics_url") == url, what="URL in the heartbeat")
    group = sd_target("six", queue.workers()["six"], "q")
    assert group is not None and group["targets"] == [url.removeprefix("http://").removesuffix("/metrics")]


def test_no_metrics_flag_serves_nothing(queue: Queue, start_worker) -> None:
    queue.submit(["builtin:1:0:0:noop 1"])
    worker = start_worker("--no-metrics", name="quiet")
    wait_until(lambda: queue.counts()["finished"] == 1, what="task ran")
    assert "metrics=off" in worker.log()
    assert queue.workers()["quiet"]["metrics_url"] == ""


def test_healthz_follows_redis(restartable_redis: RedisServer, start_worker, tmp_path: Path) -> None:
    worker = start_worker(url=restartable_redis.url, name="hw")
    base = metrics_url(worker).rsplit("/", 1)[0]
    wait_until(lambda: http_get(base + "/healthz")[0] == 200, what="healthy")
    restartable_redis.stop(kill=True)
    code, body = wait_until(lambda: (r := http_get(base + "/healthz"))[0] == 503 and (r[0], r[2]), timeout=30,
                            what="503 while Redis is down")  # fmt: skip
    assert "redis unreachable" in body
    assert http_get(base + "/metrics")[0] == 200  # metrics stay readable while Redis is down
    # not ready, but alive: its loops go round while it waits (a liveness probe must not restart it)
    code, _, text = http_get(base + "/livez")
    assert (code, text.strip()) == (200, "ok")
    restartable_redis.start()
    wait_until(lambda: http_get(base + "/healthz")[0] == 200, timeout=30, what="healthy again")
