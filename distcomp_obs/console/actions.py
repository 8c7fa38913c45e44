"""The console's actions, each a `Queue` method or a `queue.manager` function: retry one failed
task, delete one done task, retry every failed task, purge the finished ones."""

from __future__ import annotations

from typing import Any

from distcomp_obs.console.reads import task_view
from distcomp_obs.queue import Queue, manager


class ActionError(Exception):
    """An action that cannot apply to the task as it is (HTTP 409), or to no task (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def retry(q: Queue, line: str) -> dict[str, Any]:
    """A failed task: forget its records, submit it again (a new submission: a new id)."""
    view = task_view(q, line)
    if view is None:
        raise ActionError(404, "no such task")
    if view.state != "failed":
        raise ActionError(409, f"only a failed task can be retried; this one is {view.state}")
    if q.forget("failed", [line]) != 1:
        raise ActionError(409, "the task changed state meanwhile")
    q.submit([line])
    meta = q.meta(line)
    return {"retried": 1, "line": line, "id": meta[0] if meta else None}


def delete(q: Queue, line: str) -> dict[str, Any]:
    """A finished or failed task: forget it (the same line may then be submitted again)."""
    view = task_view(q, line)
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
