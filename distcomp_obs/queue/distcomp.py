"""DistComp's protocol: one command per round trip (the worker with `--no-pipeline`).

It writes the same records as the Lua scripts, in an order chosen so that a crash between any
two commands at worst runs a task twice, never loses it: the owned set is written first on a
claim and cleared last on a report, and terminal_count (the commit point) is written once.
The score and constants come from records.py, as the scripts' do.
"""

from __future__ import annotations

import json
import time
from typing import Any

from distcomp_obs.queue.core import Queue
from distcomp_obs.records import (
    EVENTS_MAXLEN,
    Claimed,
    ClaimLimits,
    ClaimResult,
    Report,
    ReportCode,
    by_class_member,
    claim_score,
    resource_class,
)
from distcomp_obs.task import parse_line


class OneCommandProtocol:
    def __init__(self, q: Queue) -> None:
        self.q = q
        self.r = q.r
        self.k = q.keys

    def _one(self, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.q.rt.call(op, 1, fn, *args, **kwargs)

    def claim(self, worker: str, incarnation: str, limits: ClaimLimits) -> ClaimResult:
        """Claim one task. The owned set is written first, so a crash at any point leaves the
        task either in todo or owned by this worker (the reaper's)."""
        k, r = self.k, self.r
        if self._one("claim", r.get, k.lease(worker)) != incarnation:
            return ClaimResult(False, 0)
        candidates: list[str] = self._one("claim", r.zrange, k.todo_index, 0, limits.window - 1)
        for task in candidates:
            t = parse_line(task)
            if t.min_dram_gb > limits.free_dram_gb or t.min_cpu > limits.cpus:
                continue
            failed_on = self._one("claim", r.hget, k.failed_tasks, task) or ","
            if f",{worker}," in failed_on:
                continue
            self._one("claim", r.sadd, k.owned(worker), task)
            meta = self._one("claim", r.hget, k.task_meta, task) or "{}"
            member = by_class_member(task, t.priority, int(json.loads(meta).get("seq", 0)))
            if not self._one("claim", r.zrem, k.todo_by_class, member):  # another worker won it
                self._one("claim", r.srem, k.owned(worker), task)
                continue
            self._one("claim", r.zrem, k.todo_index, task)  # its class, if emptied, is dropped lazily
            return ClaimResult(True, *self._take(worker, incarnation, task, meta))
        return ClaimResult(True, len(candidates))

    def _take(self, worker: str, incarnation: str, task: str, meta: str) -> tuple[int, list[Claimed]]:
        """The rest of a won claim: move the task's records to in progress, issue its token."""
        k, r = self.k, self.r
        now_ms = int(time.time() * 1000)
        self._one("claim", r.hdel, k.todo_tasks, task)
        self._one("claim", r.zrem, k.todo_age, task)
        self._one("claim", r.hset, k.in_progress_tasks, task, worker)
        self._one("claim", r.zadd, k.in_progress_age, {task: now_ms})
        token = f"{incarnation}:{self._one('claim', r.hincrby, k.stats, 'claimed', 1)}"
        self._one("claim", r.hset, k.claims, task, token)
        remaining = int(self._one("claim", r.zcard, k.todo_index))
        return remaining, [Claimed.from_reply(task, token, meta)]

    def report(self, worker: str, rep: Report, max_retry: int) -> ReportCode:
        """Record one result. The claim is consumed (HDEL) before anything is recorded and the
        owned entry removed last, so a crash in between leaves a task the reaper returns: it may
        run twice, but is never lost, and terminal_count (the commit point) is written once."""
        k, r, task = self.k, self.r, rep.task
        if self._one("report", r.hget, k.claims, task) != rep.token or not self._one("report", r.hdel, k.claims, task):
            return self._not_ours(worker, rep)
        if rep.outcome == "finished":
            self._one("report", r.hset, k.finished_tasks, task, rep.payload)
            return self._commit(worker, rep, ReportCode.FINISHED)
        failed_on = f"{self._one('report', r.hget, k.failed_tasks, task) or ','}{worker},"
        self._one("report", r.hset, k.failed_tasks, task, failed_on)
        self._one("report", r.hset, k.task_fail_reason, task, rep.payload)
        attempts = self._one("report", r.hincrby, k.attempts, task, 1)
        if attempts > max_retry or not self._retry_possible(failed_on):
            self._one("report", r.hset, k.failed_final, task, rep.payload)
            return self._commit(worker, rep, ReportCode.FAILED_FINAL)
        self._requeue_for_retry(worker, task)
        return ReportCode.RETRIED

    def _not_ours(self, worker: str, rep: Report) -> ReportCode:
        k, r, task = self.k, self.r, rep.task
        if self._one("report", r.hget, k.in_progress_tasks, task) != worker:  # as disown() in lib.lua
            self._one("report", r.srem, k.owned(worker), task)
        if self._one("report", r.hget, k.settled, task) == rep.token:
            return ReportCode.DUPLICATE
        self._one("report", r.hincrby, k.stats, "stale_reports", 1)
        return ReportCode.STALE

    def _requeue_for_retry(self, worker: str, task: str) -> None:
        k, r = self.k, self.r
        # Release our in-progress record *before* the task becomes claimable again: afterwards
        # another worker may claim it, and our HDEL would erase its record. Until the ZADD it is
        # still in our owned set, so a crash here leaves it to the reaper.
        self._one("report", r.hdel, k.in_progress_tasks, task)
        self._one("report", r.zrem, k.in_progress_age, task)
        meta = json.loads(self._one("report", r.hget, k.task_meta, task) or "{}")
        priority, seq = parse_line(task).priority, int(meta.get("seq", 0))
        now_ms = int(time.time() * 1000)
        # The ZADD to todo_by_class makes it claimable, so it comes last: a claim racing in between
        # deleted todo_tasks before we wrote it (test_clock_skew, --no-pipeline).
        self._one("report", r.hset, k.todo_tasks, task, now_ms)
        self._one("report", r.zadd, k.todo_age, {task: now_ms})
        self._one("report", r.zadd, k.todo_index, {task: claim_score(priority, seq)})
        self._one("report", r.sadd, k.todo_classes, resource_class(task))
        self._one("report", r.zadd, k.todo_by_class, {by_class_member(task, priority, seq): 0})
        self._one("report", r.hincrby, k.stats, "retried", 1)
        self._one("report", r.srem, k.owned(worker), task)
        self._one("report", r.publish, k.wake_channel, "submit 0")

    def _commit(self, worker: str, rep: Report, code: ReportCode) -> ReportCode:
        k, r, task = self.k, self.r, rep.task
        self._one("report", r.hincrby, k.terminal_count, task, 1)  # the commit point
        self._one("report", r.hset, k.settled, task, rep.token)
        self._one("report", r.hincrby, k.stats, code.outcome, 1)
        event = {"task": task, "state": code.outcome}
        self._one("report", r.xadd, k.events, event, maxlen=EVENTS_MAXLEN, approximate=True)
        self._one("report", r.hdel, k.in_progress_tasks, task)
        self._one("report", r.zrem, k.in_progress_age, task)
        self._one("report", r.srem, k.owned(worker), task)
        return code

    def _retry_possible(self, failed_on: str) -> bool:
        """Whether a live worker that has not failed this task exists (as lib.lua decides).
        Liveness is judged by the Redis server's clock, as seen_ms was written: with this
        worker's clock 10 minutes fast, every worker looked dead and failures were not retried
        (test_clock_skew_on_one_worker)."""
        sec, usec = self._one("report", self.r.time)
        now_ms = sec * 1000 + usec / 1000
        statuses = self._one("report", self.r.hgetall, self.k.worker_status)
        for name, raw in statuses.items():
            st = json.loads(raw)
            if f",{name}," not in failed_on and st.get("seen_ms", 0) + st.get("lease_ms", 0) >= now_ms:
                return True
        return False
