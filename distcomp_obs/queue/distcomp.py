"""DistComp's protocol: one command per round trip (the worker with `--no-pipeline`).

It writes the same records as the Lua scripts, in an order chosen so that a crash between any
two commands at worst runs a task twice, never loses it: a claim writes the task's
in_progress_tasks field (HSETNX) before taking it out of todo_tasks, and a report writes the done
record (HSETNX, the commit point) before releasing the claim; either half-done state is a task
held by a dead worker, which the reaper returns or, if settled, just releases.
The score, member and record formats come from records.py, as the scripts' do.
"""

from __future__ import annotations

import json
from typing import Any

from distcomp_obs.queue.core import Queue
from distcomp_obs.records import (
    Claimed,
    ClaimLimits,
    ClaimResult,
    DoneRecord,
    Holding,
    Report,
    ReportCode,
    meta_job,
    parse_meta,
    resource_class,
    todo_line,
    todo_member,
)
from distcomp_obs.redis_io import server_time
from distcomp_obs.task import parse_line


class OneCommandProtocol:
    def __init__(self, q: Queue) -> None:
        self.q = q
        self.r = q.r
        self.k = q.keys

    def _one(self, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.q.rt.call(op, 1, fn, *args, **kwargs)

    def _now_ms(self, op: str) -> int:
        """Server time: records and liveness never use this worker's clock."""
        sec, usec = self._one(op, server_time, self.r, self.k.tasks)  # the queue's own master on a cluster
        return int(sec) * 1000 + int(usec) // 1000

    def claim(self, worker: str, incarnation: str, limits: ClaimLimits) -> ClaimResult:
        """Claim one task: the head of todo_tasks in lexical order (claim order within a resource
        class), the first that fits and has not failed here."""
        k, r = self.k, self.r
        if self._one("claim", r.get, k.lease(worker)) != incarnation:
            return ClaimResult(False, 0)
        members: list[str] = self._one("claim", r.zrange, k.todo_tasks, 0, limits.window - 1)
        for member in members:
            task = todo_line(member)
            t = parse_line(task)
            if t.min_dram_gb > limits.free_dram_gb or t.min_cpu > limits.cpus:
                continue
            failed_on = self._one("claim", r.hget, k.failed_tasks, task) or ","
            if f",{worker}," in failed_on:
                continue
            token = f"{incarnation}:{self._one('claim', r.hincrby, k.stats, 'claimed', 1)}"
            meta = self._one("claim", r.hget, k.tasks, task) or ""
            holding = Holding(token, self._now_ms("claim"), False, worker, meta_job(meta)).text()
            if not self._one("claim", r.hsetnx, k.in_progress_tasks, task, holding):
                continue  # held already (another worker's claim, or a crashed one's)
            if not self._one("claim", r.zrem, k.todo_tasks, member):  # another worker won it
                if self._one("claim", r.hget, k.in_progress_tasks, task) == holding:
                    self._one("claim", r.hdel, k.in_progress_tasks, task)
                continue
            remaining = int(self._one("claim", r.zcard, k.todo_tasks))
            return ClaimResult(True, remaining, [Claimed.from_reply(task, token, meta)])
        return ClaimResult(True, len(members))

    def cancels(self, incarnation: str) -> list[str]:
        """The cancel requests for tasks this incarnation holds (what a settle returns on the
        pipelined protocol): none to read while none is pending."""
        if not self._one("poll", self.r.hlen, self.k.cancel_requests):
            return []
        pending: dict[str, str] = self._one("poll", self.r.hgetall, self.k.cancel_requests)
        return [task for task, token in pending.items() if token.startswith(f"{incarnation}:")]

    def report(self, worker: str, rep: Report, max_retry: int) -> ReportCode:
        """Record one result: the done record first (HSETNX: the commit point, written once),
        then the counters and the event, then the claim is released."""
        k, r, task = self.k, self.r, rep.task
        current = self._one("report", r.hget, k.in_progress_tasks, task)
        if current is None or Holding.parse(current).token != rep.token:
            return self._not_ours(rep)
        if rep.outcome == "finished":
            return self._commit(worker, rep, k.finished_tasks, rep.payload, ReportCode.FINISHED)
        if rep.outcome == "cancelled":  # stopped on a cancel request: a terminal state of its own
            return self._commit(worker, rep, k.cancelled_tasks, rep.payload, ReportCode.CANCELLED)
        failed_on = f"{self._one('report', r.hget, k.failed_tasks, task) or ','}{worker},"
        self._one("report", r.hset, k.failed_tasks, task, failed_on)
        attempts = self._one("report", r.hincrby, k.attempts, task, 1)
        if attempts > max_retry:
            return self._commit(worker, rep, k.failed_final, rep.payload, ReportCode.FAILED_FINAL)
        if not self._retry_possible(failed_on):
            reason = rep.payload + " [not retried: it failed on every live worker]"
            return self._commit(worker, rep, k.failed_final, reason, ReportCode.FAILED_FINAL)
        self._requeue_for_retry(worker, rep)
        return ReportCode.RETRIED

    def _not_ours(self, rep: Report) -> ReportCode:
        k, r, task = self.k, self.r, rep.task
        done = (self._one("report", r.hget, k.finished_tasks, task) or self._one("report", r.hget, k.failed_final, task)
                or self._one("report", r.hget, k.cancelled_tasks, task))  # fmt: skip
        if done and DoneRecord.parse(done).header.get("token") == rep.token:
            return ReportCode.DUPLICATE
        self._one("report", r.hincrby, k.stats, "stale_reports", 1)
        return ReportCode.STALE

    def _record(self, worker: str, rep: Report, body: str) -> str:
        return DoneRecord.text(rep.token, worker, self._now_ms("report"), body, **_detail(rep.detail))

    def _requeue_for_retry(self, worker: str, rep: Report) -> None:
        """Back to todo with its FIFO place. Releasing the claim and making the task claimable
        are one MULTI/EXEC (one round trip): apart, a crash between them would lose the task
        (released first) or a claim racing in between would lose its record (claimable first)."""
        k, r, task = self.k, self.r, rep.task
        self._one("report", r.hset, k.task_fail_reason, task, rep.payload)
        line = DoneRecord.text(rep.token, worker, self._now_ms("report"), "", **_detail(rep.detail)).rstrip("\n")
        entry = line[:-1] + f',"reason":{json.dumps(rep.payload)}}}\n'
        log = self._one("report", r.hget, k.attempt_log, task) or ""
        self._one("report", r.hset, k.attempt_log, task, log + entry)
        seq = parse_meta(self._one("report", r.hget, k.tasks, task) or "")[0]
        pipe = r.pipeline(transaction=True)
        pipe.hdel(k.in_progress_tasks, task)
        pipe.sadd(k.todo_classes, resource_class(task))
        pipe.zadd(k.todo_tasks, {todo_member(task, parse_line(task).priority, seq): 0})
        self._one("report", pipe.execute)
        self._one("report", r.hincrby, k.stats, "retried", 1)
        self._one("report", r.publish, k.wake_channel, "submit 0")

    def _commit(self, worker: str, rep: Report, key: str, body: str, code: ReportCode) -> ReportCode:
        k, r, task = self.k, self.r, rep.task
        if not self._one("report", r.hsetnx, key, task, self._record(worker, rep, body)):  # the commit point
            return ReportCode.DUPLICATE
        job = meta_job(self._one("report", r.hget, k.tasks, task) or "")
        self._one("report", r.hincrby, k.jobs, f"{job}\t{code.outcome}", 1)
        if code is ReportCode.FAILED_FINAL:
            self._one("report", r.hset, k.task_fail_reason, task, body)
        self._one("report", r.hincrby, k.stats, code.outcome, 1)
        self._one("report", r.xadd, k.events, {"state": code.outcome, "ms": self._now_ms("report"), "task": task})
        self._one("report", r.hdel, k.cancel_requests, task)  # a late request for a task now done
        self._one("report", r.hdel, k.in_progress_tasks, task)
        return code

    def _retry_possible(self, failed_on: str) -> bool:
        """Whether a live worker that has not failed this task exists (as lib.lua decides).
        Liveness is judged by the Redis server's clock, as seen_ms was written: with this
        worker's clock 10 minutes fast, every worker looked dead and failures were not retried
        (test_clock_skew_on_one_worker)."""
        now_ms = self._now_ms("report")
        statuses = self._one("report", self.r.hgetall, self.k.worker_status)
        for name, raw in statuses.items():
            st = _json_load(raw)
            if f",{name}," not in failed_on and st.get("seen_ms", 0) + st.get("lease_ms", 0) >= now_ms:
                return True
        return False


def _json_load(raw: str) -> dict[str, Any]:
    loaded = json.loads(raw)
    return loaded if isinstance(loaded, dict) else {}


def _detail(detail: str) -> dict[str, Any]:
    """A report's detail is the members of a JSON object, without its braces."""
    return _json_load("{" + detail + "}") if detail else {}
