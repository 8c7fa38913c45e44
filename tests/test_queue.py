"""The claim protocol on a real Redis, pipelined (Lua) and DistComp-style (one command per round trip)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from distcomp_obs.audit import audit
from distcomp_obs.queue import Queue, manager
from distcomp_obs.queue.distcomp import OneCommandProtocol
from distcomp_obs.records import ClaimLimits, Holding, Report, ReportCode, todo_member

FINISHED, FAILED_FINAL, RETRIED = ReportCode.FINISHED, ReportCode.FAILED_FINAL, ReportCode.RETRIED
DUPLICATE, STALE = ReportCode.DUPLICATE, ReportCode.STALE

ROOMY = ClaimLimits(free_dram_gb=64.0, cpus=8.0)


def register(q: Queue, name: str) -> str:
    incarnation = f"{name}.inc"
    assert q.acquire_lease(name, incarnation, 60_000)
    q.heartbeat(name, incarnation, 60_000, {"time": 0})
    return incarnation


def claim(q: Queue, name: str, n: int, pipelined: bool, limits: ClaimLimits = ROOMY) -> list[tuple[str, str]]:
    inc = f"{name}.inc"
    if pipelined:
        return [(c.line, c.token) for c in q.claim(name, inc, n, limits).tasks]
    got = []
    for _ in range(n):
        result = OneCommandProtocol(q).claim(name, inc, limits)
        if not result.tasks:
            break
        got += [(c.line, c.token) for c in result.tasks]
    return got


def report(q: Queue, name: str, rep: Report, pipelined: bool, max_retry: int = 2) -> int:
    if pipelined:
        return q.settle(name, f"{name}.inc", [rep], 0, ROOMY, max_retry).report_codes[0]
    return OneCommandProtocol(q).report(name, rep, max_retry)


both = pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "unpipelined"])


def test_submit_dedups_identical_and_known_lines(queue: Queue) -> None:
    assert queue.submit(["shell:1:0:0:a", "shell:1:0:0:a", "shell:1:0:0:b"]) == 2
    assert queue.submit(["shell:1:0:0:a", "shell:1:0:0:c"]) == 1
    assert queue.counts()["todo"] == 3


@both
def test_claim_order_is_priority_then_fifo(queue: Queue, pipelined: bool) -> None:
    register(queue, "w")
    queue.submit(["shell:1:0:0:low-a", "shell:9:0:0:high-a", "shell:5:0:0:mid", "shell:9:0:0:high-b",
                  "shell:1:0:0:low-b"])  # fmt: skip
    got = [t for t, _ in claim(queue, "w", 5, pipelined)]
    assert got == ["shell:9:0:0:high-a", "shell:9:0:0:high-b", "shell:5:0:0:mid", "shell:1:0:0:low-a",
                   "shell:1:0:0:low-b"]  # fmt: skip


@both
def test_claim_skips_tasks_that_do_not_fit_memory_or_cores(queue: Queue, pipelined: bool) -> None:
    register(queue, "w")
    queue.submit(["shell:9:100:0:huge", "shell:8:0:16:wide", "shell:1:1:1:small"])
    got = claim(queue, "w", 3, pipelined, ClaimLimits(free_dram_gb=4, cpus=2))
    assert [t for t, _ in got] == ["shell:1:1:1:small"]
    assert queue.counts()["todo"] == 2


def test_concurrent_claims_never_hand_out_a_task_twice(queue: Queue) -> None:
    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(600)])
    names = [f"w{i}" for i in range(6)]
    for name in names:
        register(queue, name)
    got: dict[str, list[str]] = {n: [] for n in names}

    def grab(name: str, pipelined: bool) -> None:
        while True:
            batch = claim(queue, name, 7, pipelined)
            if not batch:
                return
            got[name] += [t for t, _ in batch]

    threads = [threading.Thread(target=grab, args=(n, i % 2 == 0)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [t for tasks in got.values() for t in tasks]
    assert len(everything) == 600 and len(set(everything)) == 600
    assert sum(1 for tasks in got.values() if tasks) >= 2  # they really competed


@both
def test_finished_report_is_recorded_once_and_a_retried_report_is_idempotent(queue: Queue, pipelined: bool) -> None:
    register(queue, "w")
    queue.submit(["shell:1:0:0:echo hi"])
    [(task, token)] = claim(queue, "w", 1, pipelined)
    assert report(queue, "w", Report(task, token, "finished", "hi\n"), pipelined) == FINISHED
    assert report(queue, "w", Report(task, token, "finished", "hi\n"), pipelined) == DUPLICATE
    assert queue.list_state("finished") == {task: "hi\n"}
    assert audit(queue, [task], expect_done=True).ok


@both
def test_stale_report_is_rejected_and_counted(queue: Queue, pipelined: bool) -> None:
    register(queue, "w1")
    register(queue, "w2")
    queue.submit(["shell:1:0:0:slow"])
    [(task, old_token)] = claim(queue, "w1", 1, pipelined)
    queue.requeue("w1", [(task, old_token)])  # e.g. the reaper gave it back
    [(_, new_token)] = claim(queue, "w2", 1, pipelined)
    assert report(queue, "w1", Report(task, old_token, "finished", "late"), pipelined) == STALE
    assert queue.stats()["stale_reports"] == 1
    assert report(queue, "w2", Report(task, new_token, "finished", "ok"), pipelined) == FINISHED
    assert queue.list_state("finished") == {task: "ok"}
    assert audit(queue, [task], expect_done=True).ok


@both
def test_failed_task_is_retried_elsewhere_never_on_the_same_worker(queue: Queue, pipelined: bool) -> None:
    for name in ("w1", "w2", "w3"):
        register(queue, name)
    queue.submit(["shell:1:0:0:flaky"])
    [(task, token)] = claim(queue, "w1", 1, pipelined)
    assert report(queue, "w1", Report(task, token, "failed", "boom 1"), pipelined, max_retry=2) == RETRIED
    assert claim(queue, "w1", 1, pipelined) == []  # never again on w1
    [(_, token)] = claim(queue, "w2", 1, pipelined)
    assert report(queue, "w2", Report(task, token, "failed", "boom 2"), pipelined, max_retry=2) == RETRIED
    [(_, token)] = claim(queue, "w3", 1, pipelined)
    assert report(queue, "w3", Report(task, token, "failed", "boom 3"), pipelined, max_retry=2) == FAILED_FINAL
    assert queue.list_state("failed") == {task: "boom 3"}
    assert audit(queue, [task], expect_done=True).ok


@both
def test_failure_is_final_when_no_other_live_worker_could_retry(queue: Queue, pipelined: bool) -> None:
    register(queue, "only")
    queue.submit(["shell:1:0:0:bad"])
    [(task, token)] = claim(queue, "only", 1, pipelined)
    assert report(queue, "only", Report(task, token, "failed", "nope"), pipelined, max_retry=5) == FAILED_FINAL
    assert "failed on every live worker" in queue.list_state("failed")[task] or not pipelined
    assert audit(queue, [task], expect_done=True).ok


def test_reaper_returns_tasks_of_a_worker_whose_lease_expired(queue: Queue) -> None:
    register(queue, "dead")
    queue.submit(["shell:2:0:0:a", "shell:1:0:0:b"])
    claim(queue, "dead", 2, True)
    assert queue.reap() == (0, 0)  # lease alive: nothing to do
    queue.r.delete(queue.keys.lease("dead"))
    assert queue.reap() == (2, 0)
    assert queue.todo_in_order() == ["shell:2:0:0:a", "shell:1:0:0:b"]  # original order kept
    assert audit(queue).ok


def test_a_task_that_keeps_killing_its_worker_fails_for_good(queue: Queue) -> None:
    queue.submit(["shell:1:0:0:poison"])
    for i in range(3):
        register(queue, f"victim{i}")
        assert claim(queue, f"victim{i}", 1, True)
        queue.r.delete(queue.keys.lease(f"victim{i}"))
        queue.reap(max_reaps=3)
    assert "worker died while running it 3 times" in queue.list_state("failed")["shell:1:0:0:poison"]
    assert audit(queue, ["shell:1:0:0:poison"], expect_done=True).ok


def _register_with_slots(q: Queue, name: str, slots: int) -> str:
    incarnation = f"{name}.inc"
    assert q.acquire_lease(name, incarnation, 60_000)
    q.heartbeat(name, incarnation, 60_000, {"time": 0, "concurrency": slots})
    return incarnation


def test_a_death_counts_only_toward_tasks_that_may_have_been_running(queue: Queue) -> None:
    """A dead worker held 10 tasks: 2 reported started; with 3 slots one more (the first in claim
    order of the unreported ones) may have started since. Only those 3 count a death."""
    inc = _register_with_slots(queue, "w", 3)
    tasks = [f"shell:1:0:0:t{i}" for i in range(10)]
    queue.submit(tasks)
    held = queue.claim("w", inc, 10, ROOMY).tasks
    started = [(c.line, c.token) for c in held if c.line in ("shell:1:0:0:t4", "shell:1:0:0:t7")]
    queue.settle("w", inc, [], 0, ROOMY, 2, started)
    queue.r.delete(queue.keys.lease("w"))
    assert queue.reap(max_reaps=3) == (10, 0)
    assert queue.r.hgetall(queue.keys.reap_count) == {"shell:1:0:0:t4": "1", "shell:1:0:0:t7": "1",
                                                      "shell:1:0:0:t0": "1"}  # fmt: skip
    assert queue.r.hlen(queue.keys.in_progress_tasks) == 0  # start marks are released with the claims
    assert audit(queue, tasks).ok


def test_a_stale_start_mark_does_not_count(queue: Queue) -> None:
    """A start reported under a token that is no longer the task's claim marks nothing."""
    inc = _register_with_slots(queue, "w", 1)
    queue.submit(["shell:1:0:0:a", "shell:1:0:0:b"])
    [a, b] = queue.claim("w", inc, 2, ROOMY).tasks
    queue.settle("w", inc, [], 0, ROOMY, 2, [(a.line, "someone-else:1"), (b.line, b.token)])
    assert {t: h.started for t, h in queue.holdings().items()} == {a.line: False, b.line: True}


def test_buffered_tasks_of_killed_workers_never_fail_as_poison(queue: Queue) -> None:
    """Deep buffers, six deaths in a row: each death counts only the task its one slot was
    running; the 49 others, buffered by every victim, are returned each time and never counted."""
    tasks = [f"shell:1:0:0:t{i:02}" for i in range(50)]
    queue.submit(tasks)
    running = []
    for i in range(6):
        name = f"victim{i}"
        inc = _register_with_slots(queue, name, 1)
        held = queue.claim(name, inc, 50, ROOMY).tasks
        assert len(held) == 50
        queue.settle(name, inc, [], 0, ROOMY, 2, [(held[i].line, held[i].token)])  # its slot runs one
        running.append(held[i].line)
        queue.r.delete(queue.keys.lease(name))
        assert queue.reap(max_reaps=3) == (50, 0)
    assert queue.r.hgetall(queue.keys.reap_count) == dict.fromkeys(running, "1")
    assert queue.list_state("failed") == {}
    assert audit(queue, tasks).ok


def test_unfit_tasks_at_the_head_do_not_block_the_rest(queue: Queue) -> None:
    """250 tasks no worker here can take (1 TB each) ahead of 50 that fit: a claim finds the 50 at
    any depth, in claim order, and the unfit ones stay waiting, counted under their class.
    (DistComp's one-command protocol, `--baseline`, keeps its window scan: the A/B's reference.)"""
    register(queue, "w")
    unfit = [f"shell:9:1000:0:big {i}" for i in range(250)]
    fit = [f"shell:1:0:0:small {i}" for i in range(50)]
    queue.submit(unfit + fit)
    assert [t for t, _ in claim(queue, "w", 50, True)] == fit
    assert queue.waiting_classes() == {"1000:0": 250}
    assert audit(queue, unfit + fit).ok


def test_unpipelined_claim_abandoned_midway_is_recovered_by_the_reaper(queue: Queue) -> None:
    """DistComp's own claim loses a task if the worker dies between HDEL and HSET; ours writes
    the claim first, so any prefix of the steps leaves something the reaper can return."""
    inc = register(queue, "crash")
    queue.submit(["shell:1:0:0:x"])
    k = queue.keys
    queue.r.hsetnx(k.in_progress_tasks, "shell:1:0:0:x", Holding(f"{inc}:1", 0, False, "crash").text())
    queue.r.zrem(k.todo_tasks, todo_member("shell:1:0:0:x", 1, 1))  # ... and the worker dies here
    queue.r.delete(k.lease("crash"))
    assert queue.reap()[0] == 1
    assert queue.todo_in_order() == ["shell:1:0:0:x"]
    assert audit(queue).ok


def test_lease_is_exclusive(queue: Queue) -> None:
    assert queue.acquire_lease("same", "a", 60_000)
    assert not queue.acquire_lease("same", "b", 60_000)
    holder, ttl = queue.lease_holder("same")
    assert holder == "a" and ttl > 0


def test_claim_cost_does_not_grow_with_the_queue(queue: Queue) -> None:
    """O(batch), not O(queue): the claim script's inner commands do not depend on queue length."""
    register(queue, "w")

    def commands_for_one_claim() -> int:
        before = sum(v["calls"] for v in queue.r.info("commandstats").values())
        claim(queue, "w", 10, True)
        return sum(v["calls"] for v in queue.r.info("commandstats").values()) - before

    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(100)])
    small = commands_for_one_claim()
    queue.submit([f"builtin:1:0:0:noop big {i}" for i in range(50_000)])
    assert commands_for_one_claim() <= small + 2  # +INFO noise


def test_reset_deletes_only_this_queue(queue: Queue, redis_url: str) -> None:
    from distcomp_obs.redis_io import connect

    other = Queue(connect(redis_url), queue.keys.prefix + "other:")
    other.submit(["shell:1:0:0:keep me"])
    register(queue, "w")
    queue.submit(["shell:1:0:0:x"])
    claim(queue, "w", 1, True)
    manager.reset(queue)
    assert queue.r.exists(queue.keys.todo_tasks, queue.keys.in_progress_tasks, queue.keys.lease("w")) == 0
    assert other.counts()["todo"] == 1
    manager.reset(other)


def test_retry_failed_and_purge_finished(queue: Queue) -> None:
    register(queue, "w")
    queue.submit(["shell:1:0:0:good", "shell:1:0:0:bad"])
    for task, token in claim(queue, "w", 2, True):
        outcome = "finished" if "good" in task else "failed"
        report(queue, "w", Report(task, token, outcome, "x"), True, max_retry=0)
    assert manager.retry_failed(queue) == 1
    assert queue.todo_in_order() == ["shell:1:0:0:bad"]
    assert manager.purge_finished(queue) == 1
    assert queue.submit(["shell:1:0:0:good"]) == 1  # forgotten, so it can run again
    assert audit(queue).ok


def test_reaper_forgets_a_dead_worker_only_after_the_grace(queue: Queue) -> None:
    register(queue, "gone")
    queue.r.delete(queue.keys.lease("gone"))
    queue.reap(forget_after_s=3600)
    assert "gone" in queue.workers()  # still listed: dashboards and alerts see it down
    queue.reap(forget_after_s=0)
    assert "gone" not in queue.workers()


@both
def test_a_woken_old_incarnation_does_not_hide_the_new_ones_task(queue: Queue, pipelined: bool) -> None:
    """An old process under a name wakes after a new one took the name and re-claimed the task:
    its stale report must not drop the task from the name's owned set (the reaper relies on it)."""
    queue.submit(["shell:1:0:0:x"])
    register(queue, "n")
    [(task, old)] = claim(queue, "n", 1, pipelined)
    queue.requeue("n", [(task, old)])
    [(_, new)] = claim(queue, "n", 1, pipelined)  # the new incarnation holds it again
    assert report(queue, "n", Report(task, old, "finished", "late"), pipelined) == STALE
    assert queue.requeue("n", [(task, old)]) == 0
    assert queue.held_by("n") == {task}
    queue.r.delete(queue.keys.lease("n"))  # the new one dies too: the reaper must find the task
    assert queue.reap()[0] == 1
    assert audit(queue).ok


def test_audit_flags_tasks_in_progress_on_a_live_worker_that_does_not_hold_them(queue: Queue) -> None:
    """Issue 11 case 3: a finished report lost in a Redis rollback leaves the task in progress on a
    live worker that no longer holds it; the audit must say so (it said OK)."""
    inc = register(queue, "w")
    queue.submit(["shell:1:0:0:a", "shell:1:0:0:b"])
    queue.claim("w", inc, 2, ROOMY)
    holding = Holding.parse(queue.r.hget(queue.keys.in_progress_tasks, "shell:1:0:0:a"))
    old = Holding(holding.token, holding.claimed_ms - 5000, holding.started, "w").text()
    queue.r.hset(queue.keys.in_progress_tasks, mapping={"shell:1:0:0:a": old, "shell:1:0:0:b": old})
    queue.heartbeat("w", inc, 60_000, {"time": 0, "holds": 2})
    assert audit(queue).ok  # it holds both
    queue.heartbeat("w", inc, 60_000, {"time": 0, "holds": 1})
    report = audit(queue)
    assert not report.ok and "in progress on live worker w that does not hold them" in report.summary()


def _finish_all(queue: Queue, name: str, inc: str) -> None:
    held = queue.claim(name, inc, 1000, ROOMY).tasks
    reports = [Report(c.line, c.token, "finished", f"out {c.line}", '"ms":1.5,"exit":0') for c in held]
    queue.settle(name, inc, reports, 0, ROOMY, 2)


def test_done_records_keep_each_attempt_in_server_time(queue: Queue) -> None:
    """Issue 10: a done record says which worker, when (server ms), how long, the exit code; a
    failed attempt that was retried keeps its own line in attempt_log."""
    inc = register(queue, "w")
    register(queue, "v")  # a second live worker, so a failure on w is retried
    queue.submit(["shell:1:0:0:a", "shell:1:0:0:b"])
    before_ms = int(queue.r.time()[0]) * 1000
    [a, b] = queue.claim("w", inc, 2, ROOMY).tasks
    reports = [
        Report(a.line, a.token, "finished", "hello\n", '"ms":12.5,"exit":0'),
        Report(b.line, b.token, "failed", "exit code 3; stderr: boom", '"ms":4,"exit":3,"stdout":"partial"'),
    ]
    codes = queue.settle("w", inc, reports, 0, ROOMY, 2).report_codes
    assert codes == [FINISHED, ReportCode.RETRIED]
    [(task, rec)] = queue.records("finished").items()
    assert task == a.line and rec.body == "hello\n" and queue.list_state("finished") == {a.line: "hello\n"}
    assert rec.header["worker"] == "w" and rec.header["token"] == a.token and rec.header["exit"] == 0
    assert rec.header["ms"] == 12.5 and rec.header["at"] >= before_ms
    [attempt] = [json.loads(line) for line in queue.r.hget(queue.keys.attempt_log, b.line).splitlines()]
    assert attempt["worker"] == "w" and attempt["exit"] == 3 and attempt["stdout"] == "partial"
    assert attempt["reason"] == "exit code 3; stderr: boom"


def test_retention_forgets_the_oldest_done_records_and_keeps_the_counts(queue: Queue) -> None:
    """Issue 10: done records go beyond keep_count (oldest first) or past keep_s; the counters stay
    (forgotten_finished says how many went), the audit still holds, and a forgotten line may be
    submitted again."""
    inc = register(queue, "w")
    lines = [f"builtin:1:0:0:noop r{i}" for i in range(50)]
    for start in range(0, 50, 10):  # five settles: five events, oldest first
        queue.submit(lines[start : start + 10])
        _finish_all(queue, "w", inc)
    assert queue.retain(0, 20) == 30
    assert set(queue.list_state("finished")) == set(lines[30:])  # the newest kept
    stats = queue.stats()
    assert stats["finished"] == 50 and stats["forgotten_finished"] == 30
    assert audit(queue).ok
    assert queue.submit(lines[:1]) == 1  # forgotten: the same line is a new task
    assert queue.retain(0, 0) == 0  # no limit at all: nothing goes
    time.sleep(0.05)
    assert queue.retain(0.01, 0) == 20  # older than 10 ms: every remaining record
    assert queue.counts()["finished"] == 0 and queue.stats()["finished"] == 50
    assert audit(queue).ok
