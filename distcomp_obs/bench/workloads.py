"""The drain and pickup workloads of `distcomp bench` (the scale workload is in scale.py).

Each function takes the running `Bench` (runner.py), which owns Redis, the proxy, the options
and the list of recorded runs; a workload only measures and records.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

from distcomp_obs.audit import audit
from distcomp_obs.bench import probes
from distcomp_obs.bench.workers import Variant
from distcomp_obs.queue import manager

if TYPE_CHECKING:
    from distcomp_obs.bench.runner import Bench

#: how often the drain loop reads the finished counter (one HGETALL each, removed from the counts)
PROBE_INTERVAL_S = 0.01


# ---------------------------------------------------------------------- drain workloads
def drain_workload(b: Bench, workload: str) -> None:
    assert b.proxy is not None
    n = b.o.noop_tasks if workload == "noop" else b.o.shell_tasks
    for li, latency in enumerate(b.o.latencies_ms):
        b.proxy.set_latency(latency)
        for rep in range(b.o.repeat):
            for variant in b.variants(workload, latency, li == 0):
                b.record(
                    workload, variant.name, latency, rep, partial(drain_run, b, workload, variant, latency, rep, n)
                )
            if workload == "shell" and li == 0:
                b.record("shell", "bare-loop", 0.0, rep, partial(bare_loop_run, b, rep))


def drain_run(b: Bench, workload: str, variant: Variant, latency: float, rep: int, n: int) -> dict[str, Any]:
    q = b.new_queue()
    group = b.group(q, variant)
    try:
        group.start(1)
        group.wait_ready(q)
        time.sleep(0.3)  # let the first (empty) fetch happen: the worker is idle
        wp = group.procs[0]
        scrape0 = probes.scrape(wp.metrics_url) if wp.metrics_url else None
        cpu0 = probes.cpu_seconds(wp.pid)
        group.pause()
        q.submit(b.task_lines(workload, n))
        stats0 = probes.commandstats(b.admin)
        t0 = time.perf_counter()
        group.resume()
        polls, done = 0, 0
        while True:
            time.sleep(PROBE_INTERVAL_S)
            s = q.stats()
            polls += 1
            done = s.get("finished", 0) + s.get("failed", 0)
            elapsed = time.perf_counter() - t0
            if done >= n or elapsed >= b.o.window_s:
                break
        stats1 = probes.commandstats(b.admin)
        cpu1 = probes.cpu_seconds(wp.pid)
        scrape1 = probes.scrape(wp.metrics_url) if wp.metrics_url else None
    finally:
        group.stop()
    report = audit(q)
    manager.reset(q)
    delta = probes.command_delta(stats0, stats1, {"cmdstat_hgetall": polls})
    run: dict[str, Any] = {
        **drain_record(workload, variant.name, latency, rep, n, done, elapsed),
        "redis_commands_per_task": per(sum(delta.values()), done),
        "redis_script_calls_per_task": per(probes.script_calls(delta), done),
        "worker_cpu_us_per_task": per((cpu1 - cpu0) * 1e6, done),
        "audit_ok": report.ok,
    }
    if scrape0 and scrape1:
        d = scrape1.minus(scrape0)
        run["worker_roundtrips_per_task"] = per(sum(d.roundtrips.values()), done)
        run["worker_commands_per_task"] = per(sum(d.commands.values()), done)
        run["worker_roundtrips_by_op"] = {k: v for k, v in d.roundtrips.items() if v}
    return run


def bare_loop_run(b: Bench, rep: int) -> dict[str, Any]:
    """The same `sh -c 'true N'` subprocesses at the same concurrency, without any queue."""
    n = b.o.shell_tasks
    tag = uuid.uuid4().hex[:6]
    commands = iter(range(n))
    lock = threading.Lock()
    done = 0
    deadline = time.perf_counter() + b.o.window_s

    def slot() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            with lock:
                i = next(commands, None)
            if i is None:
                return
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                subprocess.run(
                    ["/bin/sh", "-c", f"true {tag}-{i}"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    check=False,
                )
            with lock:
                done += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=slot) for _ in range(b.o.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return drain_record("shell", "bare-loop", 0.0, rep, n, done, time.perf_counter() - start)


# ---------------------------------------------------------------------- pickup
def pickup_workload(b: Bench, _workload: str) -> None:
    assert b.proxy is not None
    for li, latency in enumerate(b.o.latencies_ms):
        b.proxy.set_latency(latency)
        for rep in range(b.o.repeat if b.o.pickup_repeat is None else b.o.pickup_repeat):
            for variant in (Variant.named(v) for v in b.o.variants):
                idle = li == 0 and rep == 0  # idle cost does not depend on latency: measured once
                b.record("pickup", variant.name, latency, rep, partial(pickup_run, b, variant, latency, rep, idle=idle))


def pickup_run(b: Bench, variant: Variant, latency: float, rep: int, idle: bool) -> dict[str, Any]:
    q = b.new_queue()
    group = b.group(q, variant, concurrency=b.o.concurrency)
    run: dict[str, Any] = {"workload": "pickup", "variant": variant.name, "latency_ms": latency, "repeat": rep}
    try:
        group.start(1)
        group.wait_ready(q)
        wp = group.procs[0]
        time.sleep(1.0)  # settle into the idle state (adaptive: blocking on the wake-up)
        if idle:
            run |= idle_window(b, [wp.metrics_url], workers=1)
        scrape0 = probes.scrape(wp.metrics_url)
        e2e: list[float] = []
        last = q.last_event_id()
        for i in range(b.o.pickups):
            time.sleep(b.o.pickup_spacing_s * b.rng.uniform(0.8, 1.2))
            t0 = time.perf_counter()
            q.submit([f"builtin:1:0:0:noop pickup-{i}-{uuid.uuid4().hex[:6]}"])
            got = q.wait_event(last, timeout_ms=10_000)
            if got is None:
                continue
            e2e.append((time.perf_counter() - t0) * 1000)
            last = got[0]
        d = probes.scrape(wp.metrics_url).minus(scrape0)
    finally:
        group.stop()
    manager.reset(q)
    p50 = probes.histogram_quantile(0.5, d.pickup_buckets)
    p99 = probes.histogram_quantile(0.99, d.pickup_buckets)
    run |= {
        "pickups": len(e2e),
        "pickup_p50_ms": None if p50 is None else p50 * 1000,
        "pickup_p99_ms": None if p99 is None else p99 * 1000,
        "pickup_le_1ms_share": share_le(d.pickup_buckets, 0.001),
        "e2e_p50_ms": probes.percentile(e2e, 0.5),
        "e2e_p99_ms": probes.percentile(e2e, 0.99),
    }
    return run


def idle_window(b: Bench, metrics_urls: list[str], workers: int) -> dict[str, Any]:
    """Redis commands/s while the workers idle: all of them (Redis side, script-internal
    commands included) and the worker-side split into housekeeping (heartbeat and reaper)
    and everything else (polling) -- the target is about the latter."""
    before = [probes.scrape(u) for u in metrics_urls if u]
    stats0 = probes.commandstats(b.admin)
    t0 = time.perf_counter()
    time.sleep(b.o.idle_window_s)
    stats1 = probes.commandstats(b.admin)
    elapsed = time.perf_counter() - t0
    after = [probes.scrape(u) for u in metrics_urls if u]
    redis_total = sum(probes.command_delta(stats0, stats1, {}).values())
    d = probes.Scrape.add([new.minus(old) for new, old in zip(after, before, strict=True)])
    housekeeping = sum(v for op, v in d.commands.items() if op in ("heartbeat", "reap"))
    polling = sum(v for op, v in d.commands.items() if op not in ("heartbeat", "reap"))
    return {
        "idle_window_s": elapsed,
        "idle_workers": workers,
        "idle_redis_commands_per_s": redis_total / elapsed,
        "idle_redis_commands_per_s_per_worker": redis_total / elapsed / workers,
        "idle_worker_housekeeping_commands_per_s": housekeeping / elapsed,
        "idle_worker_beyond_heartbeat_commands_per_s": polling / elapsed,
        "idle_worker_beyond_heartbeat_per_worker": polling / elapsed / workers,
    }


# ---------------------------------------------------------------------- small helpers
def drain_record(
    workload: str, variant: str, latency: float, rep: int, n: int, done: int, elapsed: float
) -> dict[str, Any]:
    """The fields every drain run records (results.json `runs`)."""
    return {
        "workload": workload,
        "variant": variant,
        "latency_ms": latency,
        "repeat": rep,
        "tasks": n,
        "done": done,
        "drained": done >= n,
        "elapsed_s": elapsed,
        "tasks_per_s": done / elapsed if elapsed > 0 else 0.0,
    }


def per(value: float, n: int) -> float | None:
    return value / n if n else None


def share_le(buckets: list[tuple[float, float]], le: float) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    return dict(buckets).get(le, 0.0) / buckets[-1][1]
