"""What `distcomp run` shows: this file's tasks per state, the progress line (rate and ETA over the
active period) and the summary, as text or one JSON object.

Only the run's own task file is counted: a state that also holds other tasks (an earlier version
of the file, or a queue shared through `--queue` or `--redis-url`) never shows `214/2 done`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distcomp_obs.audit import AuditReport
from distcomp_obs.queue import Queue

BAR_WIDTH = 30
#: failures listed one by one in the text summary; the rest are counted on one line
MAX_LISTED_FAILURES = 20
#: how often the slow, per-task count runs when the queue holds other tasks too
SLOW_COUNT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class FileCounts:
    """The run's own tasks per state."""

    total: int
    finished: int = 0
    failed: int = 0
    waiting: int = 0  # queued or running
    running: int = 0

    @property
    def done(self) -> int:
        return self.finished + self.failed


class FileCounter:
    """Counts the task file's tasks. `exact`: the queue holds exactly these tasks (the common case of
    a per-file state), so the O(1) queue counts are this file's; otherwise each state is scanned
    and intersected with the file's lines, at most once per SLOW_COUNT_INTERVAL_S."""

    def __init__(self, q: Queue, lines: list[str], exact: bool) -> None:
        self.q = q
        self.lines = set(lines)
        self.exact = exact
        self._last: FileCounts | None = None
        self._last_at = 0.0

    def read(self, force: bool = False) -> FileCounts:
        total = len(self.lines)
        if self.exact:
            c = self.q.counts()
            return FileCounts(total, c["finished"], c["failed"], c["todo"] + c["in_progress"], c["in_progress"])
        now = time.monotonic()
        if self._last is not None and not force and now - self._last_at < SLOW_COUNT_INTERVAL_S:
            return self._last
        mine = {s: sum(1 for t in self.q.list_state(s) if t in self.lines) for s in
                ("finished", "failed", "todo", "in_progress")}  # fmt: skip
        self._last = FileCounts(
            total, mine["finished"], mine["failed"], mine["todo"] + mine["in_progress"], mine["in_progress"]
        )
        self._last_at = now
        return self._last

    def failures(self) -> dict[str, str]:
        """This file's failed-for-good tasks and their reasons, in task order."""
        return {t: r for t, r in sorted(self.q.list_state("failed").items()) if t in self.lines}


class Rate:
    """Tasks per second over the active period: from the first task this run saw done, not from
    the start (worker start-up and idle time before it do not dilute the rate)."""

    def __init__(self, base_done: int) -> None:
        self.base_done = base_done
        self.first: tuple[float, int] | None = None  # (when, done) at the first completion seen
        self.last: tuple[float, int] | None = None

    def update(self, done: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.first is None:
            if done > self.base_done:
                self.first = (now, done)
            return
        self.last = (now, done)

    def per_s(self) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def eta_s(self, remaining: int) -> float | None:
        rate = self.per_s()
        if remaining <= 0:
            return 0.0
        return remaining / rate if rate else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def progress_line(c: FileCounts, rate: Rate) -> str:
    done = min(c.done, c.total)
    filled = BAR_WIDTH * done // c.total if c.total else BAR_WIDTH
    per_s = rate.per_s()
    speed = f"{per_s:.1f} tasks/s" if per_s is not None else "-- tasks/s"
    eta = format_duration(rate.eta_s(c.total - done))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{c.total} done, {c.failed} failed, {speed}, ETA {eta}"


def show_progress(c: FileCounts, rate: Rate, tty: bool) -> None:
    line = progress_line(c, rate)
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


@dataclass
class Summary:
    """What a run ends with."""

    file: str
    counts: FileCounts
    elapsed_s: float
    rate_per_s: float | None
    failures: dict[str, str]
    unrunnable: dict[str, str]
    audit: AuditReport
    interrupted: bool = False
    state_dir: Path | None = None
    failed_file: Path | None = None  # where every failure is listed (embedded runs)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        c = self.counts
        rate = f"{self.rate_per_s:.1f}" if self.rate_per_s is not None else "--"
        head = f"summary: {c.finished} finished, {c.failed} failed, {c.waiting} waiting"
        if self.unrunnable:
            head += f", {len(self.unrunnable)} cannot run on this machine"
        out = [f"\n{head}, {rate} tasks/s over {self.elapsed_s:.1f}s"]
        for task, reason in list(self.failures.items())[:MAX_LISTED_FAILURES]:
            out.append(f"  FAILED {task}\n         {reason.strip()[:300]}")
        more = len(self.failures) - MAX_LISTED_FAILURES
        if more > 0:
            where = f"every failure is in {self.failed_file}" if self.failed_file else "distcomp status --failed"
            out.append(f"  ... and {more} more: {where}")
        for task, reason in self.unrunnable.items():
            out.append(f"  CANNOT RUN HERE {task}\n         {reason}")
        out.extend(self.notes)
        out.append(self.audit.summary())
        return "\n".join(out)

    def as_json(self, exit_status: int) -> dict[str, Any]:
        c = self.counts
        return {
            "file": self.file,
            "state_dir": str(self.state_dir) if self.state_dir else None,
            "tasks": c.total + len(self.unrunnable),
            "finished": c.finished,
            "failed": c.failed,
            "waiting": c.waiting,
            "rate_per_s": self.rate_per_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted,
            "failed_tasks": [{"task": t, "reason": r} for t, r in self.failures.items()],
            "unrunnable": [{"task": t, "reason": r} for t, r in self.unrunnable.items()],
            "audit": {"ok": self.audit.ok, "problems": list(self.audit.problems)},
            "notes": self.notes,
            "exit_status": exit_status,
        }

    def write_failures(self) -> None:
        """Every failure with its reason in failed_file (the text summary lists the first few)."""
        if self.failed_file is None:
            return
        if not self.failures:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.failed_file)
            return
        self.failed_file.write_text("".join(f"{t}\n    {r.strip()}\n" for t, r in self.failures.items()))

    def emit(self, as_json: bool, exit_status: int) -> None:
        self.write_failures()
        if as_json:
            print(json.dumps(self.as_json(exit_status), indent=2))
        else:
            print(self.text())
