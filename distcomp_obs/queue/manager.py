"""Operator actions on a queue: `distcomp retry-failed`, `purge-finished`, `requeue-dead`,
`stop-workers`, `reset`. None of them is on a worker's hot path."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from distcomp_obs.queue.core import Queue

DELETE_BATCH = 500


def _forget(
    q: Queue, tasks: list[str], hashes: Sequence[str], after_each: Callable[[list[str]], object] | None = None
) -> None:
    """Delete these tasks' fields from `hashes`, one transaction per batch, then call
    `after_each(batch)` (retry-failed resubmits each batch right after forgetting it)."""
    for start in range(0, len(tasks), DELETE_BATCH):
        chunk = tasks[start : start + DELETE_BATCH]
        pipe = q.r.pipeline(transaction=True)
        for key in hashes:
            pipe.hdel(key, *chunk)
        pipe.execute()
        if after_each is not None:
            after_each(chunk)


def retry_failed(q: Queue) -> int:
    """Put every failed-for-good task back in todo with a clean failure history. The stats
    counters are never decremented (the exporter serves them as Prometheus counters, and a
    decrease reads as a reset): a retry counts as a new submission."""
    tasks = list(q.list_state("failed"))
    k = q.keys
    hashes = (k.failed_final, k.failed_tasks, k.attempts, k.reap_count, k.terminal_count, k.settled, k.task_meta)
    _forget(q, tasks, hashes, after_each=q.submit)
    return len(tasks)


def purge_finished(q: Queue) -> int:
    """Forget finished tasks (so the same lines can be submitted again)."""
    tasks = list(q.list_state("finished"))
    k = q.keys
    hashes = (k.finished_tasks, k.task_meta, k.terminal_count, k.settled, k.attempts, k.failed_tasks,
              k.task_fail_reason, k.reap_count)  # fmt: skip
    _forget(q, tasks, hashes)
    return len(tasks)


def requeue_dead(q: Queue, older_than_s: float) -> tuple[list[str], int]:
    """Treat workers silent for older_than_s as dead: drop their lease, return their tasks."""
    now = time.time()
    dead = [n for n, info in q.workers().items() if now - float(info.get("time", 0)) >= older_than_s]
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


def request_stop(q: Queue) -> None:
    """Ask every running worker to drain and exit (workers started later run normally)."""
    q.r.set(q.keys.stop_requested, str(time.time()))
    q.r.publish(q.keys.wake_channel, "stop")


def clear_stop(q: Queue) -> None:
    q.r.delete(q.keys.stop_requested)


def reset(q: Queue) -> int:
    """Delete this queue's keys only (never FLUSHALL/FLUSHDB/KEYS), in batches."""
    names = list(q.workers())
    doomed = q.keys.queue_keys() + [q.keys.owned(n) for n in names] + [q.keys.lease(n) for n in names]
    deleted = 0
    for start in range(0, len(doomed), DELETE_BATCH):
        deleted += int(q.r.unlink(*doomed[start : start + DELETE_BATCH]))
    return deleted
