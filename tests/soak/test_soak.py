"""Chaos soak: thousands of mixed tasks, several prefetching workers killed (SIGKILL/SIGTERM)
and restarted at random, Redis restarted once (AOF, fsync always). At the end the audit holds,
and duplicate executions are counted and bounded by what could have been running at each fault.

CI runs a short version (~2 minutes). The long one (docs/RELIABILITY.md):

    DISTCOMP_SOAK_TASKS=20000 DISTCOMP_SOAK_SECONDS=600 DISTCOMP_SOAK_REPORT=soak.json \\
        pytest tests/soak -m slow -s
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distcomp_obs.audit import audit
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import RedisServer, connect
from tests.conftest import WorkerProc, free_port, wait_until
from tests.fault_tools import executions

TASKS = int(os.environ.get("DISTCOMP_SOAK_TASKS", "2000"))
CHAOS_S = float(os.environ.get("DISTCOMP_SOAK_SECONDS", "45"))
WORKERS = int(os.environ.get("DISTCOMP_SOAK_WORKERS", "4"))
CONCURRENCY = 2
#: leases a little longer than the fault tests': 2 shared cores, many processes
TIMINGS = ["--heartbeat-interval", "0.3", "--lease", "2", "--reap-interval", "0.5", "--grace-period", "1"]
#: random kills also hit buffered tasks; a high max_reaps keeps them from looking like poison
MAX_REAPS = 50

pytestmark = [pytest.mark.slow, pytest.mark.fault, pytest.mark.timeout(int(CHAOS_S + 60 + TASKS / 20))]
StartWorker = Callable[..., WorkerProc]


def mixed_tasks(n: int, log: Path, rng: random.Random) -> tuple[list[str], set[str]]:
    """Quick, slow, failing and memory-hungry (min_dram) shell tasks; each logs its executions."""
    tasks, failing = [], set()
    for i in range(n):
        kind = rng.random()
        body = f"echo {i} >> {log}"
        if kind < 0.15:
            line = f"shell:{rng.randint(0, 5)}:0:0:{body}; sleep {rng.uniform(0.1, 0.6):.2f}"
        elif kind < 0.22:
            line = f"shell:{rng.randint(0, 5)}:0:0:{body}; echo boom >&2; exit 3"
            failing.add(str(i))
        elif kind < 0.30:
            line = f"shell:{rng.randint(0, 5)}:{rng.choice([1, 2, 4])}:0:{body}"
        else:
            line = f"shell:{rng.randint(0, 5)}:0:0:{body}"
        tasks.append(line)
    return tasks, failing


@pytest.fixture
def soak_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), appendonly=True, directory=str(tmp_path / "redis"),
                         extra_args=["--appendfsync", "always"]).start()  # fmt: skip
    yield server
    server.cleanup()


def test_chaos_soak(soak_redis: RedisServer, prefix: str, start_worker: StartWorker, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("DISTCOMP_SOAK_SEED", "0")) or None)
    url = soak_redis.url
    log = tmp_path / "executions.log"
    tasks, failing = mixed_tasks(TASKS, log, rng)
    q = Queue(connect(url), prefix)
    q.submit(tasks)
    flags = ["--concurrency", str(CONCURRENCY), "--prefetch", "8", "--max-retry-per-task", "2", *TIMINGS]  # fmt: skip
    live: dict[str, WorkerProc] = {}
    serial = 0

    def spawn(name: str | None = None) -> None:
        nonlocal serial
        serial += 1
        name = name or f"s{serial}"
        live[name] = start_worker(*flags, name=name, url=url, fast=False, env={"DISTCOMP_MAX_REAPS": str(MAX_REAPS)})

    for _ in range(WORKERS):
        spawn()
    stats = {"sigkill": 0, "sigterm": 0, "redis_restarts": 0, "restarts_same_name": 0}
    t0 = time.monotonic()
    redis_restart_at = t0 + CHAOS_S * rng.uniform(0.3, 0.6)
    while time.monotonic() - t0 < CHAOS_S:
        time.sleep(rng.uniform(0.3, 1.5))  # chaos pacing, not a timing assertion
        if redis_restart_at and time.monotonic() >= redis_restart_at:
            soak_redis.stop(kill=rng.random() < 0.5)
            time.sleep(rng.uniform(0.5, 2.0))  # Redis down for a moment
            soak_redis.start()
            q = Queue(connect(url), prefix)
            stats["redis_restarts"] += 1
            redis_restart_at = 0
            continue
        for name, w in list(live.items()):  # reap exits (refused same-name restarts, drained)
            if w.proc.poll() is not None:
                del live[name]
        action = rng.random()
        if live and action < 0.45:
            name = rng.choice(sorted(live))
            sig = signal.SIGKILL if rng.random() < 0.6 else signal.SIGTERM
            live[name].signal(sig)
            stats["sigkill" if sig == signal.SIGKILL else "sigterm"] += 1
            if rng.random() < 0.3:  # a supervisor restarting it under the same name
                live[name].proc.wait(10)
                del live[name]
                spawn(name)
                stats["restarts_same_name"] += 1
        if len(live) < WORKERS:
            spawn()
    # Calm: enough healthy workers to drain, bounded.
    while len(live) < WORKERS:
        spawn()

    def drained() -> bool:
        c = q.counts()
        return c["todo"] == 0 and c["in_progress"] == 0

    wait_until(drained, 60 + TASKS / 20, 0.5, what=f"queue drained after the chaos (now {q.counts()})")
    for w in live.values():
        w.stop(timeout=20)
    q.reap(max_tasks=10_000, max_reaps=MAX_REAPS)
    report = audit(q, submitted=tasks, expect_done=True)

    counts = executions(log)
    finished = q.list_state("finished")
    failed = q.list_state("failed")
    finished_ids = {str(i) for i, t in enumerate(tasks) if t in finished}
    never_ran = [i for i in finished_ids if counts[i] == 0]
    duplicates = sum(counts[i] - 1 for i in finished_ids if counts[i] > 1)
    kills = stats["sigkill"] + stats["sigterm"]
    # Each kill or grace-period kill re-runs at most what that worker was running; a Redis
    # restart can at worst expire every lease (all running tasks); lost replies are reconciled.
    bound = CONCURRENCY * (kills + WORKERS * stats["redis_restarts"] * 2)
    poisoned = [t for t, reason in failed.items() if "worker died" in reason]
    summary = {
        **stats, "tasks": TASKS, "chaos_s": CHAOS_S, "workers": WORKERS, "finished": len(finished),
        "failed": len(failed), "failing_by_design": len(failing), "executions": sum(counts.values()),
        "duplicate_executions": duplicates, "duplicate_bound": bound, **{k: q.stats().get(k, 0) for k in
                                                                         ("stale_reports", "reaped", "returned")},
        "audit_ok": report.ok,
        "audit": report.summary(), "elapsed_s": round(time.monotonic() - t0, 1),
    }  # fmt: skip
    print("\nsoak:", json.dumps(summary, indent=2))
    if os.environ.get("DISTCOMP_SOAK_REPORT"):
        Path(os.environ["DISTCOMP_SOAK_REPORT"]).write_text(json.dumps(summary, indent=2) + "\n")
    assert report.ok, report.summary()
    assert not never_ran, f"finished without ever running: {never_ran[:5]}"
    assert set(failed) == {tasks[int(i)] for i in failing}, "only the failing tasks fail"
    assert not poisoned
    assert kills >= 3 and stats["redis_restarts"] == 1
    assert duplicates <= bound, summary
