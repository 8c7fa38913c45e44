"""The typed records that cross module borders: what a claim returns, what a report says, what
the queue answers to a heartbeat or a scrape. Redis replies become these at the `Queue` boundary,
so nothing past it reads raw Lua replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from distcomp_obs.task import MAX_PRIORITY

#: How far down the priority index a claim looks for tasks this worker may run.
CLAIM_WINDOW = 200
#: Entries kept in the capped stream of terminal transitions.
EVENTS_MAXLEN = 100_000
#: The record layout a queue was written with (its `layout` key). 2: the claim-by-class index
#: (todo_by_class) and start marks; a queue without the key but with tasks predates it.
LAYOUT = 2


class ReportCode(IntEnum):
    """What recording one result did (the scripts return these numbers; lua/lib.lua gets them
    from the generated preamble, so the two sides cannot drift)."""

    STALE = -1  # the claim is no longer ours: nothing recorded
    DUPLICATE = 0  # already recorded with this token (a re-sent report)
    FINISHED = 1
    FAILED_FINAL = 2  # failed for good
    RETRIED = 3  # failed here, back in the queue for another worker

    @property
    def outcome(self) -> str:
        """The `outcome` label of distcomp_tasks_completed_total / the settle span's outcome."""
        return _OUTCOMES[self]


_OUTCOMES = {
    ReportCode.STALE: "stale",
    ReportCode.DUPLICATE: "duplicate",
    ReportCode.FINISHED: "finished",
    ReportCode.FAILED_FINAL: "failed",
    ReportCode.RETRIED: "retried",
}


def claim_score(priority: int, seq: int) -> int:
    """Claim order in todo_index: highest priority first, FIFO (submit order) within one."""
    return (MAX_PRIORITY - priority) * 2**32 + seq


def resource_class(line: str) -> str:
    """A task line's resource class, "min_dram_gb:min_cpu" as written in the line."""
    _, _, dram, cpu, _ = line.split(":", 4)
    return f"{dram}:{cpu}"


def by_class_member(line: str, priority: int, seq: int) -> str:
    """A waiting task's member in todo_by_class (lua/lib.lua by_class_member makes the same)."""
    return f"{resource_class(line)}|{claim_score(priority, seq):017d}|{line}"


@dataclass(slots=True)
class Claimed:
    """A task a claim handed to this worker, with what was stored when it was submitted."""

    line: str
    token: str  # "incarnation:n": fences the report
    seq: int  # submit order
    submitted_s: float | None  # server time of the submit (µs precision), None if unknown
    trace_context: str = ""  # W3C context of the submit (JSON carrier), "" when not traced
    receive_link: object | None = None  # the receive span's context, set by the tracer (in memory only)

    @classmethod
    def from_reply(cls, line: str, token: str, meta_json: str) -> Claimed:
        meta: dict[str, Any] = json.loads(meta_json) if meta_json else {}
        submitted = meta.get("submitted_ms")  # a string: submit.lua keeps microseconds
        return cls(
            line,
            token,
            int(meta.get("seq", 0)),
            float(submitted) / 1000 if submitted else None,
            str(meta.get("trace") or ""),
        )


@dataclass(slots=True)
class ClaimResult:
    lease_ok: bool
    remaining: int  # tasks still queued after this claim
    tasks: list[Claimed] = field(default_factory=list)
    report_codes: list[ReportCode] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Report:
    task: str
    token: str
    outcome: str  # "finished" | "failed"
    payload: str  # stdout on success, the reason on failure


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    free_dram_gb: float
    cpus: float
    window: int = CLAIM_WINDOW


#: limits for a round trip that only reports
NO_CLAIM = ClaimLimits(0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    lease: int  # 1 renewed, 0 expired and re-taken, -1 held by another process
    epoch: str | None
    stop_requested: str | None
    workers: list[str]  # registered workers: the reaper's cadence scales with their number


@dataclass(slots=True)
class Snapshot:
    """Queue-level state read at once (the exporter's scrape)."""

    counts: dict[str, int]  # todo, in_progress (buffered + running), finished, failed (for good)
    stats: dict[str, int]  # the Redis-kept counters: submitted, claimed, finished, failed, ...
    oldest_age_s: dict[str, float | None]  # todo, in_progress; None when empty
    workers: dict[str, dict[str, Any]]  # registered workers: last status + "live" (lease alive)
    server_time_s: float
    classes: dict[str, int] = field(default_factory=dict)  # waiting tasks per resource class "dram:cpu"


def unrunnable(classes: dict[str, int], workers: dict[str, dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """Resource classes of waiting tasks that no live worker can take: class -> (tasks, why).
    A live worker can take a class when its memory and cores (from its last heartbeat) cover it.
    With no live worker at all nothing is listed: any worker that starts may take them."""
    live = [w for w in workers.values() if w.get("live")]
    if not live:
        return {}
    most_gb = max(float(w.get("mem_total_gb", 0.0)) for w in live)
    most_cores = max(int(w.get("cores", 0)) for w in live)
    out: dict[str, tuple[int, str]] = {}
    for cls, count in classes.items():
        dram_text, _, cpu_text = cls.partition(":")
        dram, cpu = float(dram_text or 0), float(cpu_text or 0)
        why = []
        if dram > most_gb:
            why.append(f"needs {dram:g} GB of memory (largest live worker: {most_gb:g} GB)")
        if cpu > most_cores:
            why.append(f"needs {cpu:g} cores (largest live worker: {most_cores})")
        if why and count > 0:
            out[cls] = (count, "; ".join(why))
    return out
