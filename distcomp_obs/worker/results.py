"""Results: finished tasks on their way to Redis.

Slots `put` results from their threads; the fetch loop alone `collect`s them into `unsent` and
sends them (only that thread touches `unsent`). The number of results not yet reported is
shared with the slots behind a lock: a slot wakes the fetch loop only for the first result of a
batch, which then waits out the coalescing window itself instead of being woken by every task.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from distcomp_obs import tracing
from distcomp_obs.records import Report
from distcomp_obs.worker.buffer import Held
from distcomp_obs.worker.execute import Outcome


@dataclass(slots=True)
class Result:
    held: Held
    outcome: Outcome
    duration_s: float
    done_at: float = 0.0  # time.monotonic() when the slot finished it
    trace: tracing.TaskTrace | None = None  # its spans, when tracing is on

    def report(self) -> Report:
        o = self.outcome
        if o.killed_for == "cancelled":
            return Report(self.held.line, self.held.token, "cancelled", o.output, self.detail())
        if o.ok:
            return Report(self.held.line, self.held.token, "finished", o.output, self.detail())
        return Report(self.held.line, self.held.token, "failed", o.output or "failed without a message", self.detail())

    def detail(self) -> str:
        """What the record keeps of this attempt beyond its output: duration, how long ago it
        ended (the script turns that into server time: no worker clock is trusted), exit code,
        and the other stream's tail."""
        o = self.outcome
        fields: dict[str, object] = {"ms": round(self.duration_s * 1000, 3)}
        if self.done_at:
            fields["ago_ms"] = round((time.monotonic() - self.done_at) * 1000)
        if o.exit_code is not None:
            fields["exit"] = o.exit_code
        if o.stderr_tail:
            fields["stderr"] = o.stderr_tail
        if o.stdout_tail:
            fields["stdout"] = o.stdout_tail
        return json.dumps(fields, separators=(",", ":"))[1:-1]  # the members: the script adds them to its header


class Results:
    def __init__(self) -> None:
        self._incoming: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # put and not yet reported (incoming + unsent)
        self.unsent: list[Result] = []  # the fetch loop's: collected, report not yet recorded
        # the fetch loop's: sees each collected task's duration (Fetcher feeds its Pace with it)
        self.on_collect: Callable[[float], None] = lambda duration_s: None

    def put(self, result: Result) -> bool:
        """From a slot. Returns True for the first result of a batch (wake the fetch loop)."""
        with self._lock:
            first = self._pending == 0
            self._pending += 1
        self._incoming.put(result)
        return first

    def pending(self) -> int:
        """Results put and not yet recorded in Redis (any thread)."""
        with self._lock:
            return self._pending

    def waiting(self) -> bool:
        """Results put but not yet collected."""
        return not self._incoming.empty()

    def collect(self) -> None:
        """Fetch loop only: move what the slots put into `unsent`."""
        while True:
            try:
                result = self._incoming.get_nowait()
            except queue.Empty:
                return
            self.unsent.append(result)
            self.on_collect(result.duration_s)

    def oldest_age_s(self) -> float:
        return time.monotonic() - self.unsent[0].done_at if self.unsent else 0.0

    def sent(self, n: int) -> list[Result]:
        """The first n unsent results reached Redis: drop and return them."""
        batch = self.unsent[:n]
        del self.unsent[:n]
        with self._lock:
            self._pending -= len(batch)
        return batch
