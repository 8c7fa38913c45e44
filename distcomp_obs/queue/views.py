"""Read models of single tasks: what `distcomp task ID` and the console show of one task.

A task is named by its id (its submit `seq`, kept in `task_ids`) or by its line. One pipelined
round trip reads every record the task may have; nothing here walks a whole hash.
"""

from __future__ import annotations

import json
from typing import Any

from distcomp_obs.queue.core import Queue
from distcomp_obs.records import NO_JOB, DoneRecord, Holding, TaskView, meta_job, parse_meta, todo_member
from distcomp_obs.task import parse_line


def resolve(q: Queue, ref: str) -> str | None:
    """The task line `ref` names (an id, or a line), None if no such task is known."""
    if ref.isdigit():
        line = q.task_line(ref)
        if line is not None:
            return line
    return ref if q.r.hexists(q.keys.tasks, ref) else None


def task_view(q: Queue, ref: str) -> TaskView | None:
    """Everything known of one task, or None if `ref` names no known task."""
    line = resolve(q, ref)
    if line is None:
        return None
    k = q.keys
    pipe = q.r.pipeline(transaction=False)
    for key in (k.tasks, k.in_progress_tasks, k.finished_tasks, k.failed_final, k.cancelled_tasks, k.attempt_log):
        pipe.hget(key, line)
    meta, holding, finished, failed, cancelled, log = pipe.execute()
    if meta is None:  # forgotten meanwhile
        return None
    seq, submitted_us, _ = parse_meta(str(meta))
    priority = parse_line(line).priority
    attempts: list[dict[str, Any]] = [json.loads(x) for x in str(log or "").splitlines() if x.strip()]
    view = TaskView(str(seq), line, "todo", priority, submitted_us / 1e6 if submitted_us else None, attempts=attempts)
    if holding is not None:
        held = Holding.parse(str(holding))
        view.state, view.worker, view.started = "in_progress", held.worker, held.started
    elif finished is not None or failed is not None:
        record = DoneRecord.parse(str(finished if finished is not None else failed))
        view.state = "finished" if finished is not None else "failed"
        view.output = record.body
        view.attempts.append({**record.header, **({"reason": record.body} if failed is not None else {})})
    elif cancelled is not None:
        view.state, view.output = "cancelled", DoneRecord.parse(str(cancelled)).body
    elif q.r.zscore(k.todo_tasks, todo_member(line, priority, seq)) is None:
        view.state = "unknown"  # known but in no state: the audit reports it as lost
    return view


JOB_COUNTERS = ("submitted", "finished", "failed", "cancelled")


def _with_pending(counts: dict[str, int]) -> dict[str, int]:
    full = {c: counts.get(c, 0) for c in JOB_COUNTERS}
    full["pending"] = full["submitted"] - full["finished"] - full["failed"] - full["cancelled"]
    return full


def jobs(q: Queue) -> dict[str, dict[str, int]]:
    """job -> its counters (submitted, finished, failed, cancelled, and pending: the rest)."""
    out: dict[str, dict[str, int]] = {}
    for field, n in q.r.hgetall(q.keys.jobs).items():
        job_name, _, counter = str(field).rpartition("\t")
        out.setdefault(job_name, {})[counter] = int(n)
    return {name: _with_pending(c) for name, c in out.items()}


def job(q: Queue, name: str) -> dict[str, int] | None:
    """One job's counters in O(1), None if no task was ever submitted to it."""
    values = q.r.hmget(q.keys.jobs, [f"{name}\t{c}" for c in JOB_COUNTERS])
    if all(v is None for v in values):
        return None
    return _with_pending({c: int(v or 0) for c, v in zip(JOB_COUNTERS, values, strict=True)})


def job_of(q: Queue, task: str) -> str:
    """The job a known task belongs to (NO_JOB if none or unknown)."""
    raw = q.r.hget(q.keys.tasks, task)
    return meta_job(str(raw)) if raw is not None else NO_JOB


def jobs_of(q: Queue, tasks: list[str]) -> dict[str, str]:
    """task -> its job, for known tasks (one HMGET per 1,000)."""
    out: dict[str, str] = {}
    for start in range(0, len(tasks), 1000):
        chunk = tasks[start : start + 1000]
        for task, raw in zip(chunk, q.r.hmget(q.keys.tasks, chunk), strict=True):
            if raw is not None:
                out[task] = meta_job(str(raw))
    return out
