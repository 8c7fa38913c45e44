"""The console's actions, each a `Queue` method or a `queue.manager` function: retry one failed
task (back into its own job), delete one done task, cancel one waiting or running task, retry every
failed task, purge the finished ones; per job: cancel its waiting and running tasks, retry its failed ones."""

from __future__ import annotations

from collections import Counter
from typing import Any

from distcomp_obs.queue import Queue, manager, views


class ActionError(Exception):
    """An action that cannot apply to the task as it is (HTTP 409), or to no task (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def retry(q: Queue, line: str) -> dict[str, Any]:
    """A failed task: forget its records, submit it again (a new submission: a new id)."""
    view = views.task_view(q, line)
    if view is None:
        raise ActionError(404, "no such task")
    if view.state != "failed":
        raise ActionError(409, f"only a failed task can be retried; this one is {view.state}")
    job = views.job_of(q, line)  # read before forgetting: the record that names it goes
    if manager.retry(q, "failed", [line]) != 1:
        raise ActionError(409, "the task changed state meanwhile")
    meta = q.meta(line)
    return {"retried": 1, "line": line, "id": meta[0] if meta else None, "job": job}


def delete(q: Queue, line: str) -> dict[str, Any]:
    """A finished or failed task: forget it (the same line may then be submitted again)."""
    view = views.task_view(q, line)
    if view is None:
        raise ActionError(404, "no such task")
    if view.state not in ("finished", "failed"):
        raise ActionError(409, f"only a finished or failed task can be deleted; this one is {view.state}")
    if q.forget(view.state, [line]) != 1:
        raise ActionError(409, "the task changed state meanwhile")
    return {"deleted": 1, "line": line, "id": view.id}


def retry_failed(q: Queue) -> dict[str, Any]:
    return {"retried": manager.retry_failed(q)}


def purge_finished(q: Queue) -> dict[str, Any]:
    return {"purged": manager.purge_finished(q)}


WHO = "distcomp console"
#: Queue.cancel's words that mean the task is (or will shortly be) cancelled
CANCELLING = ("cancelled", "stopping", "already_cancelled")


def cancel(q: Queue, line: str) -> dict[str, Any]:
    """A waiting task leaves the queue; a claimed one is stopped by its worker; both end cancelled."""
    [word] = q.cancel([line], who=WHO)
    if word == "unknown":
        raise ActionError(404, "no such task")
    if word not in CANCELLING:
        raise ActionError(409, f"only a waiting or running task can be cancelled; this one is {word}")
    return {"cancel": word, "line": line}


def cancel_job(q: Queue, name: str) -> dict[str, Any]:
    if views.job(q, name) is None:
        raise ActionError(404, f"no job {name!r}")
    tasks = views.live_tasks(q, job=name)  # its waiting and claimed tasks
    return {"job": name, "tasks": len(tasks), "result": dict(Counter(q.cancel(tasks, who=WHO)))}


def retry_failed_job(q: Queue, name: str) -> dict[str, Any]:
    if views.job(q, name) is None:
        raise ActionError(404, f"no job {name!r}")
    return {"job": name, "retried": manager.retry_failed(q, job=name)}


#: tasks per atomic script call in a bulk action
BULK_BATCH = 500


def bulk(q: Queue, action: str, lines: list[str]) -> dict[str, Any]:
    """Retry, cancel or delete many tasks, BULK_BATCH to a script call. Each applies only where it
    may (retry: failed; delete: finished or failed; cancel: waiting or running), atomically per
    task, so a task that changed state meanwhile is counted `unchanged`, never wrongly acted on."""
    result: Counter[str] = Counter()
    for start in range(0, len(lines), BULK_BATCH):
        chunk = lines[start : start + BULK_BATCH]
        if action == "cancel":
            result.update(q.cancel(chunk, who=WHO))
            continue
        if action == "retry":  # each back into its own job
            done, word = manager.retry(q, "failed", chunk), "retried"
        else:
            done, word = q.forget("finished", chunk) + q.forget("failed", chunk), "deleted"
        result[word] += done
        result["unchanged"] += len(chunk) - done
    return {"action": action, "tasks": len(lines), "result": {k: v for k, v in result.items() if v}}
