"""The `cluster` workload: W worker processes on one Redis, for W in --cluster-workers.

What a deployment meets when it adds workers: aggregate no-op tasks/s per W, and what Redis
pays for it, read from INFO (not estimated): CPU µs per task (claim + report) and per submitted
line, how busy its one core was, and bytes of memory per queued task. Workers connect directly
(no latency proxy: the proxy would be the bottleneck); W values run interleaved per repeat, in a
rotating order, so drift on a shared machine spreads over all of them.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import redis

from distcomp_obs.audit import audit
from distcomp_obs.bench.workers import Variant
from distcomp_obs.bench.workloads import drain_record, per
from distcomp_obs.queue import Queue, manager

if TYPE_CHECKING:
    from distcomp_obs.bench.runner import Bench

#: how often the drain loop reads the counters (one HGETALL each)
PROBE_INTERVAL_S = 0.01


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds Redis has used (user + system, all its threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_memory_bytes(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def cluster_workload(b: Bench, workload: str = "cluster") -> None:
    counts = b.o.cluster_workers
    for rep in range(b.o.repeat):
        shift = rep % len(counts)
        for w in counts[shift:] + counts[:shift]:
            b.record(workload, f"all-w{w}", 0.0, rep, partial(cluster_run, b, w, rep))


def _submit(b: Bench, q: Queue, n: int) -> dict[str, float]:
    """Submit n no-op lines the way `distcomp submit` does; what it cost Redis and took."""
    lines = b.task_lines("noop", n)
    mem0, cpu0 = redis_memory_bytes(b.admin), redis_cpu_s(b.admin)
    t0 = time.perf_counter()
    q.submit(lines)
    elapsed = time.perf_counter() - t0
    cpu1, mem1 = redis_cpu_s(b.admin), redis_memory_bytes(b.admin)
    return {
        "submit_lines_per_s": n / elapsed if elapsed > 0 else 0.0,
        "redis_cpu_us_per_line": (cpu1 - cpu0) * 1e6 / n,
        "redis_bytes_per_queued_task": (mem1 - mem0) / n,
    }


def _drain(b: Bench, q: Queue, n: int) -> tuple[int, float, float]:
    """Wait until n tasks are recorded (or the window ends): (done, elapsed s, Redis CPU s)."""
    cpu0 = redis_cpu_s(b.admin)
    t0 = time.perf_counter()
    done, elapsed = 0, 0.0
    while done < n and elapsed < b.o.window_s * 4:
        time.sleep(PROBE_INTERVAL_S)
        s = q.stats()
        done = s.get("finished", 0) + s.get("failed", 0)
        elapsed = time.perf_counter() - t0
    return done, elapsed, redis_cpu_s(b.admin) - cpu0


def cluster_run(b: Bench, workers: int, rep: int) -> dict[str, Any]:
    n = b.o.noop_tasks * workers
    q = b.new_queue()
    group = b.group(q, Variant("all", Variant.named("all").flags, direct=True))
    try:
        group.start(workers)
        group.wait_ready(q)
        time.sleep(0.3)  # every worker has made its first (empty) fetch: all idle
        group.pause()
        submit = _submit(b, q, n)
        group.resume()
        done, elapsed, cpu = _drain(b, q, n)
    finally:
        group.stop()
    report = audit(q)
    manager.reset(q)
    return {
        **drain_record("cluster", f"all-w{workers}", 0.0, rep, n, done, elapsed),
        "workers": workers,
        # the drain's Redis CPU includes the probe's HGETALL every 10 ms: < 1 µs per task at these rates
        "redis_cpu_us_per_task": per(cpu * 1e6, done),
        "redis_busy_pct": 100 * cpu / elapsed if elapsed > 0 else 0.0,
        **submit,
        "audit_ok": report.ok,
    }
