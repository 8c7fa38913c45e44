"""Read models of single tasks and of jobs: what `distcomp task ID`, `distcomp job NAME` and the
console show of one task or job.

A task is named by its id (its submit `seq`, kept in `task_ids`) or by its line. One pipelined
round trip reads every record the task may have; nothing here walks a queue-sized hash. A job's
progress is its counters (O(1)); its split of unfinished tasks into waiting and claimed walks the
claims (as many as the workers hold, not the queue's length); its ETA adds a bounded read of the
newest terminal transitions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from distcomp_obs.queue.core import Queue
from distcomp_obs.records import NO_JOB, DoneRecord, Holding, TaskView, attempt, meta_job, parse_meta, todo_member
from distcomp_obs.task import priority_of


def resolve(q: Queue, ref: str) -> str | None:
    """The task line `ref` names (an id, or a line), None if no such task is known."""
    if ref.isdigit():
        line = q.task_line(ref)
        if line is not None:
            return line
    return ref if q.r.hexists(q.keys.tasks, ref) else None


def _attempts(log: str) -> list[dict[str, Any]]:
    """The retried attempts' records (`attempt_log`: a JSON object per line), oldest first."""
    out = []
    for raw in log.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(attempt(entry, str(entry.get("reason", ""))))
    return out


def task_view(q: Queue, ref: str) -> TaskView | None:
    """Everything known of one task in one pipelined round trip (two for an id, and a third for a
    task in no state), or None if `ref` names no known task."""
    line = resolve(q, ref)
    if line is None:
        return None
    k = q.keys
    keys = (k.tasks, k.in_progress_tasks, k.finished_tasks, k.failed_final, k.cancelled_tasks, k.attempt_log,
            k.task_fail_reason)  # fmt: skip
    pipe = q.r.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, line)
    values = [None if v is None else str(v) for v in pipe.execute()]
    meta, holding, finished, failed, cancelled, log, last_reason = values
    if meta is None:  # forgotten meanwhile
        return None
    seq, submitted_us, _ = parse_meta(meta)
    priority = priority_of(line)
    view = TaskView(seq, line, "todo", priority, submitted_us / 1e6 if submitted_us else None,
                    attempts=_attempts(log or ""), reason=last_reason or "")  # fmt: skip
    if holding is not None:
        held = Holding.parse(holding)
        view.state, view.worker = "in_progress", held.worker
        view.started, view.claimed_ms = held.started, held.claimed_ms
    elif finished is not None or failed is not None:
        record = DoneRecord.parse(finished if finished is not None else failed or "")
        view.state = "finished" if finished is not None else "failed"
        view.worker, view.stderr = str(record.header.get("worker", "")), str(record.header.get("stderr", ""))
        if finished is not None:
            view.stdout, view.reason = record.body, ""
        else:
            view.stdout, view.reason = str(record.header.get("stdout", "")), record.body
        view.attempts.append(attempt(record.header, view.reason))
    elif cancelled is not None:
        record = DoneRecord.parse(cancelled)  # its header names the worker that stopped it, if one did
        view.state, view.reason, view.worker = "cancelled", record.body, str(record.header.get("worker", ""))
    elif priority is None or q.r.zscore(k.todo_tasks, todo_member(line, priority, seq)) is None:
        view.state = "unknown"  # known but in no state: the audit reports it as lost
    return view


JOB_COUNTERS = ("submitted", "finished", "failed", "cancelled")


def claimed_by_job(q: Queue) -> Counter[str]:
    """job -> its claimed tasks (buffered or running), from the claims' holding values: a walk of
    in_progress_tasks, which holds at most what the workers' slots and buffers hold, whatever the
    queue's length (the exporter's age read walks it too)."""
    return Counter(Holding.parse(str(v)).job for v in q.r.hvals(q.keys.in_progress_tasks))


def _with_pending(counts: dict[str, int], claimed: int) -> dict[str, int]:
    """The counters, `pending` (the rest: waiting or claimed), and that split: `in_progress`
    (claimed by a worker) and `todo` (waiting). A task claimed between the two reads may show as
    claimed and its counter not yet moved, so the split is clamped to `pending`."""
    full = {c: counts.get(c, 0) for c in JOB_COUNTERS}
    full["pending"] = full["submitted"] - full["finished"] - full["failed"] - full["cancelled"]
    full["in_progress"] = min(claimed, max(0, full["pending"]))
    full["todo"] = max(0, full["pending"] - full["in_progress"])
    return full


def jobs(q: Queue) -> dict[str, dict[str, int]]:
    """job -> its counters (submitted, finished, failed, cancelled, and pending: the rest, split into
    todo and in_progress)."""
    out: dict[str, dict[str, int]] = {}
    for field, n in q.r.hgetall(q.keys.jobs).items():
        job_name, _, counter = str(field).rpartition("\t")
        out.setdefault(job_name, {})[counter] = int(n)
    claimed = claimed_by_job(q) if out else Counter()
    return {name: _with_pending(c, claimed[name]) for name, c in out.items()}


def job(q: Queue, name: str) -> dict[str, int] | None:
    """One job's counters (O(1): one HMGET, plus the walk of the claimed tasks for the split), None
    if no task was ever submitted to it."""
    values = q.r.hmget(q.keys.jobs, [f"{name}\t{c}" for c in JOB_COUNTERS])
    if all(v is None for v in values):
        return None
    counts = {c: int(v or 0) for c, v in zip(JOB_COUNTERS, values, strict=True)}
    return _with_pending(counts, claimed_by_job(q)[name])


def job_of(q: Queue, task: str) -> str:
    """The job a known task belongs to (NO_JOB if none or unknown)."""
    raw = q.r.hget(q.keys.tasks, task)
    return meta_job(str(raw)) if raw is not None else NO_JOB


LIVE_STATES = ("todo", "in_progress")


def live_tasks(q: Queue, states: Sequence[str] = LIVE_STATES, job: str | None = None, include: str = "") -> list[str]:
    """The tasks in these states (waiting, claimed), of that job, whose line holds `include`: a walk
    of the states, for a manager command or a console action, not a page."""
    live = [t for state in states for t in q.list_state(state) if include in t]
    if job is None:
        return live
    jobs = jobs_of(q, live)
    return [t for t in live if jobs.get(t) == job]


def jobs_of(q: Queue, tasks: list[str]) -> dict[str, str]:
    """task -> its job, for known tasks (`Queue.metas`: one HMGET per 1,000)."""
    return {task: meta_job(meta) for task, meta in q.metas(tasks).items()}


#: a job's finish rate is measured over the terminal transitions of the last ETA_WINDOW_S seconds,
#: reading at most ETA_MAX_TASKS of them (newest first): a bounded cost, however big the queue
ETA_WINDOW_S = 300.0
ETA_MAX_TASKS = 5000
_EVENTS_PAGE = 100


def _raw_client(q: Queue) -> redis.Redis:
    """A client on the queue's connections whose XREVRANGE replies stay raw: redis-py turns an
    entry's fields into a dict, and an event repeats its `task` field once per task."""
    client: Any = q.r
    if isinstance(client, RedisCluster):  # the node serving the queue's hash slot
        client = client.get_node_from_key(q.keys.events).redis_connection  # type: ignore[no-untyped-call]
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XREVRANGE", lambda reply, **_: reply)
    return raw


def recent_rates(q: Queue, window_s: float = ETA_WINDOW_S, max_tasks: int = ETA_MAX_TASKS) -> dict[str, float]:
    """job -> tasks it finished, failed or cancelled per second lately, from the newest `events`
    entries (one per batch of terminal transitions, read newest first) and their tasks' jobs (HMGET).

    A job's rate runs from its oldest batch read to now and counts the tasks of its later batches,
    so a job needs two batches in the window to have a rate, and one that stalls sees it fall."""
    now_ms = q.server_time_ms()
    oldest = f"{max(0, now_ms - int(window_s * 1000))}-0"
    raw, top = _raw_client(q), "+"
    batches: list[tuple[int, list[str]]] = []  # (server ms, tasks), newest first
    seen = 0
    while seen < max_tasks:
        entries: Any = raw.xrevrange(q.keys.events, top, oldest, count=_EVENTS_PAGE)
        for entry_id, fields in entries:
            tasks = [str(fields[i + 1]) for i in range(0, len(fields), 2) if fields[i] == "task"]
            batches.append((int(str(entry_id).split("-", 1)[0]), tasks))
            seen += len(tasks)
            if seen >= max_tasks:  # a batch can be big (a worker reports many at once)
                break
        if len(entries) < _EVENTS_PAGE:
            break
        top = f"({entries[-1][0]}"
    job_by_task = jobs_of(q, sorted({t for _, tasks in batches for t in tasks}))
    first_ms: dict[str, int] = {}  # each job's oldest batch read
    done: dict[str, int] = {}  # its tasks in the batches after that one
    for at_ms, tasks in reversed(batches):
        for name, n in Counter(job_by_task.get(t, NO_JOB) for t in tasks).items():
            if name in first_ms:
                done[name] = done.get(name, 0) + n
            else:
                first_ms[name] = at_ms
    return {name: n / max(0.001, (now_ms - first_ms[name]) / 1000) for name, n in done.items()}


def eta(counts: dict[str, int], rate_per_s: float | None) -> dict[str, Any]:
    """A job's ETA from its O(1) counters and its recent rate: `remaining` (submitted less
    finished, failed and cancelled), `rate_per_s`, `eta_s` (0 when nothing remains, None while
    there is no rate: unknown)."""
    remaining = max(0, counts["submitted"] - counts["finished"] - counts["failed"] - counts["cancelled"])
    if remaining == 0:
        eta_s: float | None = 0.0
    else:
        eta_s = remaining / rate_per_s if rate_per_s else None
    return {"remaining": remaining, "rate_per_s": rate_per_s, "eta_s": eta_s}


def job_eta(q: Queue, name: str, counts: dict[str, int] | None = None) -> dict[str, Any] | None:
    """One job's ETA (`eta`), None for a job never submitted to: its counters (one HMGET, unless
    given) and the recent terminal transitions (`recent_rates`, a bounded read)."""
    counts = counts if counts is not None else job(q, name)
    if counts is None:
        return None
    return eta(counts, recent_rates(q).get(name) if counts["pending"] else None)
