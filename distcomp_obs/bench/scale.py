"""The scale workload of `distcomp bench`: claim cost with a small and a huge queue, and the
Redis load of many idle workers."""

from __future__ import annotations

import time
import uuid
from statistics import median
from typing import TYPE_CHECKING, Any

import psutil
import redis

from distcomp_obs.bench import probes
from distcomp_obs.bench.workers import Variant
from distcomp_obs.bench.workloads import idle_window
from distcomp_obs.queue import Queue, manager
from distcomp_obs.records import ClaimLimits

if TYPE_CHECKING:
    from distcomp_obs.bench.runner import Bench


def scale_workload(b: Bench, _workload: str = "scale") -> None:
    assert b.proxy is not None
    b.proxy.set_latency(b.o.latencies_ms[0] if b.o.latencies_ms else 0.0)
    for part, fn in (("claim", claim_scaling), ("idle_workers", idle_workers)):
        try:
            b.scale[part] = fn(b)
        except (RuntimeError, OSError, ValueError, redis.RedisError) as exc:
            b.scale[part] = {"error": str(exc)[-2000:]}
            b.log(f"scale {part}: FAILED: {str(exc)[-300:]}")


def claim_scaling(b: Bench) -> dict[str, Any]:
    """Claim cost with a small and a huge queue: 32-task claims from the bench process,
    each batch handed back at once so the queue keeps its size; alternated and repeated."""
    small, big = b.new_queue(), b.new_queue()
    sizes = {"small": (small, min(1000, b.o.scale_queued)), "big": (big, b.o.scale_queued)}
    out: dict[str, Any] = {"queued": {k: v[1] for k, v in sizes.items()}, "rounds": []}
    try:
        for label, (q, n) in sizes.items():
            t0 = time.perf_counter()
            tag = uuid.uuid4().hex[:6]
            q.submit([f"builtin:1:0:0:noop {tag}-{i}" for i in range(n)])
            out[f"submit_s_{label}"] = time.perf_counter() - t0
            b.log(f"scale: {n} tasks queued in {out[f'submit_s_{label}']:.1f}s")
        for rep in range(max(1, b.o.repeat)):
            for label, (q, _) in sizes.items():
                out["rounds"].append({"queue": label, "repeat": rep, **claim_loop(b, q)})
                b.log(f"scale claim {label}: {out['rounds'][-1]['claims_per_s']:.0f} tasks/s")
        # a real `all` worker draining the big queue over a window (compare: the noop drain)
        out["worker_big"] = window_rate(b, big)
    finally:
        manager.reset(small)
        manager.reset(big)
    by = {lbl: median(r["claims_per_s"] for r in out["rounds"] if r["queue"] == lbl) for lbl in sizes}
    out["claims_per_s_median"] = by
    out["big_vs_small"] = by["big"] / by["small"] if by["small"] else None
    return out


def claim_loop(b: Bench, q: Queue) -> dict[str, Any]:
    name, inc = f"bench-claimer-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    q.acquire_lease(name, inc, 600_000)
    limits = ClaimLimits(free_dram_gb=1e6, cpus=1e6)
    claimed, claim_s = 0, 0.0
    end = time.perf_counter() + b.o.scale_seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        res = q.claim(name, inc, 32, limits)
        claim_s += time.perf_counter() - t0
        claimed += len(res.tasks)
        q.requeue(name, [(c.line, c.token) for c in res.tasks])
    return {"claimed": claimed, "claim_s": claim_s, "claims_per_s": claimed / claim_s if claim_s else 0.0}


def window_rate(b: Bench, q: Queue) -> dict[str, Any]:
    group = b.group(q, Variant.named("all"))
    try:
        group.start(1)
        group.wait_ready(q)
        s0 = q.stats()
        t0 = time.perf_counter()
        time.sleep(min(b.o.window_s, 3.0))
        s1 = q.stats()
        elapsed = time.perf_counter() - t0
    finally:
        group.stop()
    done = (s1.get("finished", 0) - s0.get("finished", 0)) + (s1.get("failed", 0) - s0.get("failed", 0))
    return {"done": done, "elapsed_s": elapsed, "tasks_per_s": done / elapsed}


def idle_workers(b: Bench) -> dict[str, Any]:
    """Many idle `all` workers on one queue: total Redis commands/s. Started in batches; the
    count is capped so their memory stays under 40 % of what is available."""
    want = b.o.scale_idle_workers
    q = b.new_queue()
    group = b.group(q, Variant.named("all"), concurrency=1)
    out: dict[str, Any] = {"requested": want}
    try:
        first = group.start(min(5, want))
        group.wait_ready(q, first, timeout_s=120)
        time.sleep(0.5)
        rss = max(probes.rss_bytes(p.pid) for p in first)
        fit = int(0.4 * psutil.virtual_memory().available / max(rss, 1)) + len(first)
        target = min(want, fit)
        out |= {"rss_mb_per_worker": rss / 2**20, "started": target, "capped_by_memory": target < want}
        while len(group.procs) < target:
            batch = group.start(min(10, target - len(group.procs)), first_index=len(group.procs))
            group.wait_ready(q, batch, timeout_s=180)
        b.log(f"scale: {target} idle workers up ({rss / 2**20:.0f} MB each); idle window")
        time.sleep(2.0)
        out |= idle_window(b, [p.metrics_url for p in group.procs], workers=target)
    finally:
        group.stop(timeout_s=60)
        manager.reset(q)
    if out.get("started") and out["started"] < want:
        per = out["idle_worker_beyond_heartbeat_per_worker"]
        out["extrapolated_beyond_heartbeat_commands_per_s"] = per * want
    return out
