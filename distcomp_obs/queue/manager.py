"""Operator actions on a queue: `distcomp retry-failed`, `purge-finished`, `requeue-dead`,
`stop-workers`, `reset`. None of them is on a worker's hot path."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import redis

from distcomp_obs.queue.core import Queue

DELETE_BATCH = 500
#: Every fixed key of record layout 2, deleted by `reset` with the current ones.
LEGACY_NAMES = ("todo_index", "todo_tasks", "todo_age", "todo_by_class", "todo_classes", "in_progress_tasks",
                "in_progress_age", "claims", "settled", "finished_tasks", "failed_tasks", "task_fail_reason",
                "failed_final", "attempts", "reap_count", "terminal_count", "started", "events", "stats",
                "task_meta", "seq", "epoch", "layout", "workers", "worker_status", "reap_lock",
                "stop_requested")  # fmt: skip


def _forget(q: Queue, state: str, tasks: list[str], after_each: Callable[[list[str]], object] | None = None) -> int:
    """Forget these tasks if still in `state`, one atomic script per batch, then call
    `after_each(batch)` (retry-failed resubmits each batch right after forgetting it)."""
    forgotten = 0
    for start in range(0, len(tasks), DELETE_BATCH):
        chunk = tasks[start : start + DELETE_BATCH]
        forgotten += q.forget(state, chunk)
        if after_each is not None:
            after_each(chunk)
    return forgotten


def _matching(tasks: dict[str, str], include: str) -> list[str]:
    """Tasks whose line or detail (output, reason) holds `include` ("" matches all)."""
    return [t for t, detail in tasks.items() if not include or include in t or include in detail]


def _by_job(q: Queue, tasks: list[str]) -> dict[str, list[str]]:
    """The known ones of these tasks, grouped by job (read before a forget: the record naming it goes)."""
    from distcomp_obs.queue.views import jobs_of

    by_job: dict[str, list[str]] = {}
    for task, task_job in jobs_of(q, tasks).items():
        by_job.setdefault(task_job, []).append(task)
    return by_job


def retry_failed(q: Queue, include: str = "", job: str | None = None) -> int:
    """Put every failed-for-good task (whose line or reason holds `include`) back in todo with a
    clean failure history. The stats counters are never decremented (the exporter serves them as
    Prometheus counters, and a decrease reads as a reset): a retry counts as a new submission."""
    retried = 0
    for task_job, tasks in _by_job(q, _matching(q.list_state("failed"), include)).items():
        if job is None or task_job == job:  # each back into its own job
            retried += _forget(q, "failed", tasks, after_each=functools.partial(_resubmit, q, task_job))
    return retried


def retry(q: Queue, state: str, tasks: list[str]) -> int:
    """Run these tasks again if they are in `state` (failed or cancelled): forget them and submit
    them anew (new ids), each into its own job. A task in another state is not forgotten, and its
    resubmission is a duplicate that adds nothing. Returns how many were forgotten."""
    done = 0
    for task_job, group in _by_job(q, tasks).items():
        done += q.forget(state, group)
        q.submit(group, job=task_job)
    return done


def _resubmit(q: Queue, job: str, tasks: list[str]) -> int:
    return q.submit(tasks, job=job)


def purge_finished(q: Queue, include: str = "") -> int:
    """Forget finished tasks (whose line or output holds `include`): their lines may be submitted again."""
    return _forget(q, "finished", _matching(q.list_state("finished"), include))


def requeue_dead(q: Queue, older_than_s: float) -> tuple[list[str], int]:
    """Treat workers silent for older_than_s as dead: drop their lease, return their tasks.
    Silence is measured by the Redis server's clock (`seen_ms`, written by the heartbeat script):
    a worker whose own clock is 10 minutes slow is not silent."""
    now_ms = q.server_time_ms()
    dead = [n for n, info in q.workers().items() if now_ms - float(info.get("seen_ms", 0)) >= older_than_s * 1000]
    for name in dead:
        q.r.delete(q.keys.lease(name))
    returned = 0
    while dead:
        got, _ = q.reap(max_tasks=1000)
        if got <= 0:
            break
        returned += got
    return dead, returned


def forget_worker(q: Queue, worker: str) -> None:
    pipe = q.r.pipeline(transaction=True)
    pipe.srem(q.keys.workers, worker)
    pipe.hdel(q.keys.worker_status, worker)
    pipe.execute()


def request_stop(q: Queue, names: Sequence[str] = ()) -> list[str]:
    """Ask every running worker, or only those named, to drain and exit (workers started later run
    normally): the request carries the server's time in ms, which workers compare with their own
    start, also by the server's clock. Returns the names that are not registered workers, and then
    asks nothing of anyone."""
    if names:
        unknown = sorted(set(names) - set(q.r.smembers(q.keys.workers)))
        if unknown:
            return unknown
        now = str(q.server_time_ms())
        q.r.hset(q.keys.stop_names, mapping=dict.fromkeys(names, now))
        for name in names:
            q.r.publish(q.keys.wake_channel, f"stop {name}")
        return []
    q.r.set(q.keys.stop_requested, str(q.server_time_ms()))
    q.r.publish(q.keys.wake_channel, "stop")
    return []


def clear_stop(q: Queue) -> None:
    q.r.delete(q.keys.stop_requested)


def legacy_keys(q: Queue) -> list[str]:
    """Keys a queue of record layout 2 or older left under this prefix (no hash tag)."""
    untagged = q.keys.prefix
    try:
        names = [_text(n) for n in q.r.smembers(untagged + "workers")]
    except redis.exceptions.NoPermissionError:
        return []  # an ACL user limited to `{prefix}:*` keys cannot have written them
    return [untagged + name for name in LEGACY_NAMES] + [
        f"{untagged}{kind}:{name}" for name in names for kind in ("owned", "worker_lease")
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reset(q: Queue) -> int:
    """Delete this queue's keys only (never FLUSHALL/FLUSHDB/KEYS), in batches."""
    names = list(q.workers())
    doomed = q.keys.queue_keys() + [q.keys.lease(n) for n in names] + legacy_keys(q)
    deleted = 0
    for start in range(0, len(doomed), DELETE_BATCH):
        deleted += int(q.r.unlink(*doomed[start : start + DELETE_BATCH]))
    return deleted
