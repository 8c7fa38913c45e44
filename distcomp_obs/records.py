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
#: The record layout a queue was written with (its `layout` key). 4: task ids (`task_ids`). 3: one field per task and
#: state (lua/lib.lua), keys hash-tagged `{prefix}:`; 2 had the claim-by-class index beside a
#: priority index and per-task side records; a queue without the key but with tasks predates 2.
LAYOUT = 4


class ReportCode(IntEnum):
    """What recording one result did (the scripts return these numbers; lua/lib.lua gets them
    from the generated preamble, so the two sides cannot drift)."""

    STALE = -1  # the claim is no longer ours: nothing recorded
    DUPLICATE = 0  # already recorded with this token (a re-sent report)
    FINISHED = 1
    FAILED_FINAL = 2  # failed for good
    RETRIED = 3  # failed here, back in the queue for another worker
    CANCELLED = 4  # stopped on a cancel request, recorded cancelled

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
    ReportCode.CANCELLED: "cancelled",
}


def claim_key(priority: int, seq: int) -> str:
    """Claim order as 17 digits that sort as text: highest priority first (MAX_PRIORITY - priority
    in 7 digits), FIFO (the submit order `seq`, 10 digits) within one."""
    return f"{MAX_PRIORITY - priority:07d}{seq:010d}"


def resource_class(line: str) -> str:
    """A task line's resource class, "min_dram_gb:min_cpu" as written in the line."""
    _, _, dram, cpu, _ = line.split(":", 4)
    return f"{dram}:{cpu}"


def todo_member(line: str, priority: int, seq: int) -> str:
    """A waiting task's member in todo_tasks (lua/lib.lua `member` makes the same)."""
    return f"{resource_class(line)}|{claim_key(priority, seq)}|{line}"


def todo_line(member: str) -> str:
    """The task line of a todo_tasks member (`todo_member`'s inverse)."""
    return member.split("|", 2)[2]


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
    def from_reply(cls, line: str, token: str, meta: str) -> Claimed:
        seq, submitted_us, trace = parse_meta(meta)
        return cls(line, token, seq, submitted_us / 1e6 if submitted_us else None, trace)


def parse_meta(meta: str) -> tuple[int, int, str]:
    """A `tasks` field, "seq submitted_us job[ trace]" -> (seq, submitted µs, trace context or "")."""
    parts = meta.split(" ", 3) if meta else []
    seq = int(parts[0]) if parts else 0
    submitted_us = int(parts[1]) if len(parts) > 1 else 0
    return seq, submitted_us, parts[3] if len(parts) > 3 else ""


#: the job of tasks submitted without one
NO_JOB = "-"


def meta_job(meta: str) -> str:
    """The job a `tasks` field names (NO_JOB if none)."""
    parts = meta.split(" ", 3) if meta else []
    return parts[2] if len(parts) > 2 else NO_JOB


@dataclass(frozen=True, slots=True)
class Holding:
    """An in_progress_tasks field, "token claim_ms started job worker": who holds a claimed task
    (and its job, so a report counts toward it without reading the task's meta)."""

    token: str
    claimed_ms: int
    started: bool  # its worker reported it started (a start mark)
    worker: str
    job: str = NO_JOB

    @classmethod
    def parse(cls, value: str) -> Holding:
        token, claimed_ms, started, job, worker = value.split(" ", 4)
        return cls(token, int(claimed_ms), started == "s", worker, job)

    def text(self) -> str:
        return f"{self.token} {self.claimed_ms} {'s' if self.started else '-'} {self.job} {self.worker}"


@dataclass(frozen=True, slots=True)
class DoneRecord:
    """A finished_tasks / failed_final field: a JSON header line (token, worker, `at`: server ms
    of the report, and what the worker measured: exit code, duration, ...), then the output (a
    finished task's stdout) or the reason (a failed one)."""

    header: dict[str, Any]
    body: str

    @classmethod
    def parse(cls, value: str) -> DoneRecord:
        head, _, body = value.partition("\n")
        try:
            header = json.loads(head)
        except ValueError:  # not a record: keep the text whole rather than lose it
            return cls({}, value)
        return cls(header if isinstance(header, dict) else {}, body)

    @staticmethod
    def text(token: str, worker: str, at_ms: int, body: str, **detail: Any) -> str:
        """The one-command protocol writes records itself (lua/lib.lua `record` makes the same)."""
        header = json.dumps({"token": token, "worker": worker, "at": at_ms, **detail}, separators=(",", ":"))
        return f"{header}\n{body}"


@dataclass(slots=True)
class TaskView:
    """One task as `distcomp task`, the console and its API show it (`queue.views.task_view` reads it)."""

    id: int  # its submit seq: short, stable until it is forgotten
    line: str
    state: str  # todo | in_progress | finished | failed | cancelled (| unknown: in no state, see the audit)
    priority: int | None  # None: a line that does not parse (kept as submitted)
    submitted_s: float | None  # server time
    worker: str = ""  # its holder while in progress; who ran (or stopped) it once done
    started: bool = False  # in progress and reported started (not only buffered)
    claimed_ms: int | None = None  # in progress: when its holder claimed it (server ms)
    #: each attempt's header (worker, `at`: server ms of its report, `ended_ms`, ms, exit, reason,
    #: stdout/stderr tails), oldest first: the retried attempts, then the final one
    attempts: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""  # a finished task's output; a failed one's stdout tail
    stderr: str = ""  # the final attempt's stderr tail
    reason: str = ""  # why it failed or was cancelled; while it waits or runs again, its last failure

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def attempt(header: dict[str, Any], reason: str = "") -> dict[str, Any]:
    """An attempt as shown: its record header with `ended_ms` (the report's server time less how
    long the worker held the result) and its reason, when it has one."""
    at, ago = header.get("at"), header.get("ago_ms", 0)
    ended = at - ago if isinstance(at, int) and isinstance(ago, int) else None
    return {**header, "ended_ms": ended, **({"reason": reason} if reason else {})}


@dataclass(slots=True)
class ClaimResult:
    lease_ok: bool
    remaining: int  # tasks still queued after this claim
    tasks: list[Claimed] = field(default_factory=list)
    report_codes: list[ReportCode] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)  # tasks this worker holds that it must stop (cancel requests)


@dataclass(frozen=True, slots=True)
class Report:
    task: str
    token: str
    outcome: str  # "finished" | "failed" | "cancelled" (stopped on a cancel request)
    payload: str  # stdout on success, the reason on failure
    detail: str = ""  # what the worker measured (ms, ago_ms, exit, stderr/stdout tails): JSON object members, no braces


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

    counts: dict[str, int]  # todo, in_progress (buffered + running), finished, failed (for good), cancelled
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
