"""The "nothing lost" invariant as code (docs/ARCHITECTURE.md#the-invariant), shared by tests, `distcomp run`,
`distcomp status --check` and the bench.

Holds when: the records agree with each other (each waiting task once in todo_tasks, under its
resource class and submit order; every claim names a registered worker), no task is held by a
dead worker, finished and failed-for-good are disjoint, the counters match the records (a
task recorded twice would count twice), every failure has a reason, and every known task is
in exactly one state. With `expect_done` nothing may be left waiting or running either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distcomp_obs.queue import Queue
from distcomp_obs.records import DoneRecord, Holding, parse_meta, todo_line, todo_member
from distcomp_obs.task import parse_line

#: a claim this long before a worker's heartbeat must be in that heartbeat's count of held tasks
PHANTOM_MARGIN_MS = 1000


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


def _check_todo(
    problem: Callable[[bool, str, Iterable[str]], None], members: set[str], classes: set[str], known: dict[str, str]
) -> set[str]:
    """todo_tasks holds each waiting task once, under its resource class and its submit order, and
    every class with a waiting task is listed in todo_classes (which may also list emptied ones).
    Returns the waiting tasks."""
    task_of = {m: todo_line(m) for m in members}
    copies = Counter(task_of.values())
    twice = [t for t, n in copies.items() if n > 1]
    problem(bool(twice), "waiting twice in todo_tasks", twice)
    misplaced = [t for m, t in task_of.items()
                 if m != todo_member(t, parse_line(t).priority, parse_meta(known.get(t, ""))[0])]  # fmt: skip
    problem(bool(misplaced), "todo_tasks members out of their class or submit order", misplaced)
    unlisted = {m.split("|", 1)[0] for m in members} - classes
    problem(bool(unlisted), "resource classes with waiting tasks missing from todo_classes", unlisted)
    return set(copies)


def _check_phantoms(problem: Callable[[bool, str, Iterable[str]], None], name: str, info: dict[str, Any],
                    held: dict[str, Holding]) -> None:  # fmt: skip
    """A live worker reports in each heartbeat how many tasks it holds; Redis recording more tasks
    claimed by it well before that heartbeat than it holds means some are phantoms (a report lost
    in a rollback: the worker gives them back once it notices the restart)."""
    if not info.get("live") or "holds" not in info or "seen_ms" not in info:
        return
    before = float(info["seen_ms"]) - PHANTOM_MARGIN_MS
    old = [t for t, h in held.items() if h.claimed_ms < before]
    problem(len(old) > int(info["holds"]),
            f"in progress on live worker {name} that does not hold them ({len(old)} recorded before its last "
            f"heartbeat, it holds {info['holds']})", old)  # fmt: skip


def _check_counters(problem: Callable[[bool, str, Iterable[str]], None], stats: dict[str, int],
                    recorded: dict[str, int]) -> None:  # fmt: skip
    """Every done record was counted once: a task recorded twice counts twice (a counter may lag its
    record only when a one-command report was cut short between its commands)."""
    for state, n in recorded.items():
        counted = stats.get(state, 0) - stats.get(f"forgotten_{state}", 0)
        problem(counted > n, f"recorded more than once: {counted} {state} counted, {n} recorded", [state])


def audit(q: Queue, submitted: Iterable[str] | None = None, expect_done: bool = False) -> AuditReport:
    k, r = q.keys, q.r
    rep = AuditReport()
    known = _fields(r.hgetall(k.tasks))
    members = _members(r.zrange(k.todo_tasks, 0, -1))
    classes = _members(r.smembers(k.todo_classes))
    holdings = q.holdings()
    finished = _members(r.hkeys(k.finished_tasks))
    cancelled = _members(r.hkeys(k.cancelled_tasks))
    failed = _fields(r.hgetall(k.failed_final))
    reasons = _fields(r.hgetall(k.task_fail_reason))
    workers = q.workers()
    rep.counts = {
        "submitted": len(known),
        "todo": len(members),
        "in_progress": len(holdings),
        "finished": len(finished),
        "failed": len(failed),
        **({"cancelled": len(cancelled)} if cancelled else {}),  # shown once there are any
    }

    def problem(condition: bool, text: str, items: Iterable[str]) -> None:
        if condition:
            rep.problems.append(f"{text}: {_sample(items)}")

    todo = _check_todo(problem, members, classes, known)
    ids = _fields(r.hgetall(k.task_ids))
    expected_ids = {str(parse_meta(meta)[0]): task for task, meta in known.items()}
    problem(ids != expected_ids, "task ids disagree with the known tasks",
            {f"{i}: {ids.get(i)!r} vs {expected_ids.get(i)!r}" for i in set(ids) ^ set(expected_ids)}
            | {i for i in set(ids) & set(expected_ids) if ids[i] != expected_ids[i]})  # fmt: skip
    in_progress = set(holdings)
    unregistered = [t for t, h in holdings.items() if h.worker not in workers]
    problem(bool(unregistered), "in-progress tasks held by an unregistered worker", unregistered)
    for name, info in workers.items():
        held = [t for t, h in holdings.items() if h.worker == name]
        if held and not info["live"]:
            problem(True, f"stranded: held by dead worker {name} (the reaper returns them)", held)
        _check_phantoms(problem, name, info, {t: holdings[t] for t in held})
    problem(bool(finished & set(failed)), "both finished and failed", finished & set(failed))
    problem(
        any(not reasons.get(t) and not DoneRecord.parse(failed[t]).body for t in failed),
        "failed without a reason",
        [t for t in failed if not DoneRecord.parse(failed[t]).body],
    )
    _check_counters(problem, q.stats(), {"finished": len(finished), "failed": len(failed),
                                         "cancelled": len(cancelled)})  # fmt: skip
    problem(bool(cancelled & (finished | set(failed))), "cancelled and finished or failed",
            cancelled & (finished | set(failed)))  # fmt: skip
    terminal_tasks = finished | set(failed) | cancelled
    placed = todo | in_progress | terminal_tasks
    problem(bool(set(known) - placed), "lost: submitted but in no state", set(known) - placed)
    problem(bool(placed - set(known)), "in a state but never submitted", placed - set(known))
    overlap = (todo & in_progress) | (todo & terminal_tasks) | (in_progress & terminal_tasks)
    problem(bool(overlap), "in two states at once", overlap)
    if submitted is not None:
        expected = set(submitted)
        problem(bool(expected - set(known)), "submitted but unknown to the queue", expected - set(known))
        if expect_done:
            problem(bool(expected - terminal_tasks), "submitted but not finished or failed", expected - terminal_tasks)
    if expect_done:
        problem(bool(todo), "still waiting", todo)
        problem(bool(in_progress), "still in progress", in_progress)
    return rep
