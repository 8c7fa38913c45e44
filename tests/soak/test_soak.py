"""Chaos soak: thousands of mixed tasks, several prefetching workers killed (SIGKILL/SIGTERM)
and restarted at random, one worker frozen (SIGSTOP) past its lease, Redis restarted once (AOF,
fsync always) and made read-only once (a demoted master: REPLICAOF a dead port). At the end the
audit holds, and duplicate executions are counted and bounded by what could have been running
at each fault. The `sentinel` variant runs the same chaos against a master, a replica and three
Sentinels, and replaces the Redis restart with a failover (kill -9 of the master) and the read-only
period with nothing (the failover is the demotion).

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
from typing import Any

import pytest

from distcomp_obs.audit import AuditReport, audit
from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import WorkerProc, require, wait_until
from tests.fault_tools import executions
from tests.sentinel_tools import SentinelDeployment

TASKS = int(os.environ.get("DISTCOMP_SOAK_TASKS", "2000"))
CHAOS_S = float(os.environ.get("DISTCOMP_SOAK_SECONDS", "45"))
WORKERS = int(os.environ.get("DISTCOMP_SOAK_WORKERS", "4"))
CONCURRENCY = 2
#: leases a little longer than the fault tests': 2 shared cores, many processes
TIMINGS = ["--heartbeat-interval", "0.3", "--lease", "2", "--reap-interval", "0.5", "--grace-period", "1"]
#: the default: a death counts only toward tasks that may have been running, so random kills of
#: workers with deep buffers must not make healthy tasks look like poison (issue 10)
MAX_REAPS = 3

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


@pytest.fixture(params=["aof", "sentinel"])
def soak_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer | SentinelDeployment]:
    if request.param == "sentinel":
        try:
            deployment = SentinelDeployment().start()
        except RedisUnavailable as exc:
            require(False, str(exc))
            raise
        yield deployment
        deployment.cleanup()
        return
    server = RedisServer(port=free_port(), appendonly=True, directory=str(tmp_path / "redis"),
                         extra_args=["--appendfsync", "always"]).start()  # fmt: skip
    yield server
    server.cleanup()


class Chaos:
    """The soak's workers and faults: spawns, kills (SIGKILL/SIGTERM, some restarted under the
    same name), one Redis restart; counts each fault for the duplicate bound."""

    def __init__(self, redis_server: RedisServer | SentinelDeployment, prefix: str, start_worker: StartWorker,
                 rng: random.Random) -> None:  # fmt: skip
        self.redis, self.prefix, self.start_worker, self.rng = redis_server, prefix, start_worker, rng
        self.url = redis_server.url
        self.sentinel = isinstance(redis_server, SentinelDeployment)
        self.flags = ["--concurrency", str(CONCURRENCY), "--prefetch", "8", "--max-retry-per-task", "2", *TIMINGS]
        self.live: dict[str, WorkerProc] = {}
        self.serial = 0
        self.stats = {"sigkill": 0, "sigterm": 0, "redis_restarts": 0, "restarts_same_name": 0, "sigstops": 0,
                      "read_only_periods": 0, "failovers": 0}  # fmt: skip
        self.q = Queue(connect(self.url), prefix)

    def spawn(self, name: str | None = None) -> None:
        self.serial += 1
        name = name or f"s{self.serial}"
        self.live[name] = self.start_worker(*self.flags, name=name, url=self.url, fast=False,
                                            env={"DISTCOMP_MAX_REAPS": str(MAX_REAPS)})  # fmt: skip

    def fill(self) -> None:
        while len(self.live) < WORKERS:
            self.spawn()

    def restart_redis(self) -> None:
        if isinstance(self.redis, SentinelDeployment):  # a failover: the master dies, the replica takes over
            self.redis.wait_failover(self.redis.kill_master())
            self.stats["failovers"] += 1
            return
        self.redis.stop(kill=self.rng.random() < 0.5)
        time.sleep(self.rng.uniform(0.5, 2.0))  # Redis down for a moment
        self.redis.start()
        self.q = Queue(connect(self.url), self.prefix)
        self.stats["redis_restarts"] += 1

    def freeze_one(self) -> None:
        """SIGSTOP a worker past its lease (2 s): others reap its tasks; on SIGCONT it must not start
        its stale buffer (issue 11)."""
        name = self.rng.choice(sorted(self.live))
        self.live[name].signal(signal.SIGSTOP)
        time.sleep(self.rng.uniform(3.0, 4.0))
        self.live[name].signal(signal.SIGCONT)
        self.stats["sigstops"] += 1

    def read_only_period(self) -> None:
        """What a failover does to the old master: read-only for a while, then a master again."""
        self.q.r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.q.r.execute_command("REPLICAOF", "NO", "ONE")
        self.stats["read_only_periods"] += 1

    def forget_exited(self) -> None:
        """Drop workers that exited by themselves (refused same-name restarts, drained)."""
        for name, w in list(self.live.items()):
            if w.proc.poll() is not None:
                del self.live[name]

    def kill_one(self) -> None:
        name = self.rng.choice(sorted(self.live))
        sig = signal.SIGKILL if self.rng.random() < 0.6 else signal.SIGTERM
        self.live[name].signal(sig)
        self.stats["sigkill" if sig == signal.SIGKILL else "sigterm"] += 1
        if self.rng.random() < 0.3:  # a supervisor restarting it under the same name
            self.live[name].proc.wait(10)
            del self.live[name]
            self.spawn(name)
            self.stats["restarts_same_name"] += 1

    def run(self, seconds: float) -> None:
        t0 = time.monotonic()
        redis_restart_at = t0 + seconds * self.rng.uniform(0.3, 0.6)
        freeze_at = t0 + seconds * self.rng.uniform(0.1, 0.3)
        read_only_at = t0 + seconds * self.rng.uniform(0.65, 0.9)
        while time.monotonic() - t0 < seconds:
            time.sleep(self.rng.uniform(0.3, 1.5))  # chaos pacing, not a timing assertion
            if redis_restart_at and time.monotonic() >= redis_restart_at:
                self.restart_redis()
                redis_restart_at = 0
                continue
            if freeze_at and time.monotonic() >= freeze_at and self.live:
                self.freeze_one()
                freeze_at = 0
                continue
            if read_only_at and time.monotonic() >= read_only_at and not self.sentinel:
                self.read_only_period()
                read_only_at = 0
                continue
            self.forget_exited()
            action = self.rng.random()  # drawn even with no worker live: a seed replays the same run
            if self.live and action < 0.45:
                self.kill_one()
            if len(self.live) < WORKERS:
                self.spawn()

    @property
    def kills(self) -> int:
        return self.stats["sigkill"] + self.stats["sigterm"]


def soak_summary(chaos: Chaos, tasks: list[str], failing: set[str], log: Path, report: AuditReport,
                 elapsed_s: float) -> dict[str, Any]:  # fmt: skip
    """The soak's figures; duplicates are executions beyond the first of a finished task."""
    q, stats = chaos.q, chaos.stats
    counts = executions(log)
    finished = q.list_state("finished")
    failed = q.list_state("failed")
    finished_ids = {str(i) for i, t in enumerate(tasks) if t in finished}
    # Each kill or grace-period kill re-runs at most what that worker was running; a Redis
    # restart can at worst expire every lease (all running tasks); lost replies are reconciled.
    # A freeze re-runs what the frozen worker was running; a read-only period can expire every lease.
    # A failover can also lose the last reports the replica had not received: a worker's unreported
    # results and buffer (CONCURRENCY + prefetch 8) per worker.
    bound = CONCURRENCY * (
        chaos.kills + stats["sigstops"] + WORKERS * (stats["redis_restarts"] * 2 + stats["read_only_periods"])
    )
    bound += WORKERS * (CONCURRENCY + 8 + CONCURRENCY) * stats["failovers"]  # fmt: skip
    return {
        **stats, "tasks": TASKS, "chaos_s": CHAOS_S, "workers": WORKERS, "finished": len(finished),
        "failed": len(failed), "failing_by_design": len(failing), "executions": sum(counts.values()),
        "duplicate_executions": sum(counts[i] - 1 for i in finished_ids if counts[i] > 1),
        "duplicate_bound": bound, **{k: q.stats().get(k, 0) for k in ("stale_reports", "reaped", "returned")},
        "audit_ok": report.ok, "audit": report.summary(), "elapsed_s": round(elapsed_s, 1),
        # not printed as figures: what the assertions look at
        "never_ran": sorted(i for i in finished_ids if counts[i] == 0),
        "failed_tasks": sorted(failed),
        "poisoned": sorted(t for t, reason in failed.items() if "worker died" in reason),
    }  # fmt: skip


def test_chaos_soak(soak_redis: RedisServer, prefix: str, start_worker: StartWorker, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("DISTCOMP_SOAK_SEED", "0")) or None)
    log = tmp_path / "executions.log"
    tasks, failing = mixed_tasks(TASKS, log, rng)
    chaos = Chaos(soak_redis, prefix, start_worker, rng)
    chaos.q.submit(tasks)
    chaos.fill()
    t0 = time.monotonic()
    chaos.run(CHAOS_S)
    chaos.fill()  # calm: enough healthy workers to drain, bounded

    def drained() -> bool:
        c = chaos.q.counts()
        return c["todo"] == 0 and c["in_progress"] == 0

    wait_until(drained, 60 + TASKS / 20, 0.5, what=f"queue drained after the chaos (now {chaos.q.counts()})")
    for w in chaos.live.values():
        w.stop(timeout=20)
    chaos.q.reap(max_tasks=10_000, max_reaps=MAX_REAPS)
    report = audit(chaos.q, submitted=tasks, expect_done=True)
    details = soak_summary(chaos, tasks, failing, log, report, time.monotonic() - t0)
    never_ran, failed, poisoned = details.pop("never_ran"), details.pop("failed_tasks"), details.pop("poisoned")
    print("\nsoak:", json.dumps(details, indent=2))
    if os.environ.get("DISTCOMP_SOAK_REPORT"):
        Path(os.environ["DISTCOMP_SOAK_REPORT"]).write_text(json.dumps(details, indent=2) + "\n")
    assert report.ok, report.summary()
    assert not never_ran, f"finished without ever running: {never_ran[:5]}"
    assert set(failed) == {tasks[int(i)] for i in failing}, "only the failing tasks fail"
    assert not poisoned
    assert chaos.kills >= 3 and chaos.stats["redis_restarts"] + chaos.stats["failovers"] == 1
    assert details["duplicate_executions"] <= details["duplicate_bound"], details
