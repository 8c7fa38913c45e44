"""The "nothing lost" invariant as code (docs/ARCHITECTURE.md#the-invariant), shared by tests, `distcomp run`,
`distcomp status --check` and the bench.

Holds when: the records agree with each other (todo index = todo hash; in-progress = claims =
the union of the workers' owned sets), no task is held by a dead worker, finished and
failed-for-good are disjoint and each terminal task was recorded exactly once, every failure has
a reason, and every submitted task is in exactly one state. With `expect_done` nothing may be
left waiting or running either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from distcomp_obs.queue import Queue


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = "audit OK" if self.ok else f"audit FAILED ({len(self.problems)} problem(s))"
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return "\n".join([f"{head}: {counts}", *(f"  - {p}" for p in self.problems)])


def _sample(items: Iterable[str], n: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(repr(i) for i in items[:n]) + more


def _text(value: object) -> str:
    """One reply item as text (the queue's client decodes replies; a raw client would not)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _members(values: Iterable[object]) -> set[str]:
    return {_text(v) for v in values}


def _fields(mapping: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in mapping.items()}


def _check_class_index(
    problem: Callable[[bool, str, Iterable[str]], None], todo: set[str], by_class: set[str], classes: set[str]
) -> None:
    """todo_by_class holds each waiting task once, under its resource class, and every class with
    a waiting task is listed in todo_classes (which may also list emptied ones)."""
    tasks = [m.split("|", 2)[2] for m in by_class]
    problem(set(tasks) != todo or len(tasks) != len(todo), "claim-by-class index and todo index disagree",
            set(tasks) ^ todo)  # fmt: skip
    unlisted = {m.split("|", 1)[0] for m in by_class} - classes
    problem(bool(unlisted), "resource classes with waiting tasks missing from todo_classes", unlisted)


def audit(q: Queue, submitted: Iterable[str] | None = None, expect_done: bool = False) -> AuditReport:
    k, r = q.keys, q.r
    rep = AuditReport()
    todo_index = _members(r.zrange(k.todo_index, 0, -1))
    todo = _members(r.hkeys(k.todo_tasks))
    in_progress = _fields(r.hgetall(k.in_progress_tasks))
    claims = _members(r.hkeys(k.claims))
    finished = _members(r.hkeys(k.finished_tasks))
    failed = _fields(r.hgetall(k.failed_final))
    reasons = _fields(r.hgetall(k.task_fail_reason))
    terminal = _fields(r.hgetall(k.terminal_count))
    known = _members(r.hkeys(k.task_meta))
    by_class = _members(r.zrange(k.todo_by_class, 0, -1))
    classes = _members(r.smembers(k.todo_classes))
    workers = q.workers()
    owned: dict[str, set[str]] = {name: _members(r.smembers(k.owned(name))) for name in workers}
    rep.counts = {
        "submitted": len(known),
        "todo": len(todo_index),
        "in_progress": len(in_progress),
        "finished": len(finished),
        "failed": len(failed),
    }

    def problem(condition: bool, text: str, items: Iterable[str]) -> None:
        if condition:
            rep.problems.append(f"{text}: {_sample(items)}")

    problem(todo_index != todo, "todo index and todo hash disagree", todo_index ^ todo)
    _check_class_index(problem, todo_index, by_class, classes)
    problem(
        set(in_progress) != claims,
        "in-progress tasks without a claim (or claims without a task)",
        set(in_progress) ^ claims,
    )
    all_owned: set[str] = set().union(*owned.values())
    problem(set(in_progress) - all_owned != set(), "in-progress tasks no worker owns", set(in_progress) - all_owned)
    for name, tasks in owned.items():
        if tasks and not workers[name]["live"]:
            problem(True, f"stranded: held by dead worker {name} (the reaper returns them)", tasks)
    problem(bool(finished & set(failed)), "both finished and failed", finished & set(failed))
    problem(
        any(not reasons.get(t) and not failed[t] for t in failed),
        "failed without a reason",
        [t for t in failed if not failed[t]],
    )
    terminal_tasks = finished | set(failed)
    problem(
        set(terminal) != terminal_tasks,
        "terminal records disagree with finished/failed",
        set(terminal) ^ terminal_tasks,
    )
    problem(
        any(v != "1" for v in terminal.values()),
        "recorded more than once",
        [t for t, v in terminal.items() if v != "1"],
    )
    placed = todo_index | set(in_progress) | terminal_tasks
    problem(bool(known - placed), "lost: submitted but in no state", known - placed)
    problem(bool(placed - known), "in a state but never submitted", placed - known)
    overlap = (todo_index & set(in_progress)) | (todo_index & terminal_tasks) | (set(in_progress) & terminal_tasks)
    problem(bool(overlap), "in two states at once", overlap)
    if submitted is not None:
        expected = set(submitted)
        problem(bool(expected - known), "submitted but unknown to the queue", expected - known)
        if expect_done:
            problem(bool(expected - terminal_tasks), "submitted but not finished or failed", expected - terminal_tasks)
    if expect_done:
        problem(bool(todo_index), "still waiting", todo_index)
        problem(bool(in_progress), "still in progress", set(in_progress))
    return rep
