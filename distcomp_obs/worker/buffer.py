"""PrefetchBuffer: claimed-but-not-started tasks, owned by this worker in Redis.

Slots take the highest-priority task that fits (memory, cores); tasks that do not fit stay
buffered. Everything in it can be taken back at once for a one-round-trip return on SIGTERM.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distcomp_obs.records import Claimed
from distcomp_obs.task import Task, parse_line


@dataclass(order=True)
class Held:
    """A task this worker holds: its claim token fences its report."""

    sort_key: tuple[int, int] = field(compare=True)  # highest priority first, then submit order
    claim: Claimed = field(compare=False)
    task: Task = field(compare=False)
    claimed_at: float = field(compare=False)  # time.time()
    started_at: float = field(default=0.0, compare=False)

    @property
    def line(self) -> str:
        return self.claim.line

    @property
    def token(self) -> str:
        return self.claim.token


def make_held(claim: Claimed, claimed_at: float) -> Held:
    task = parse_line(claim.line)
    return Held((-task.priority, claim.seq), claim, task, claimed_at)


class PrefetchBuffer:
    """Shared by the fetch loop (puts) and the slots (takes); every access holds its lock."""

    def __init__(self) -> None:
        self._heap: list[Held] = []
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def unstarted(self) -> list[Held]:
        """A snapshot of what is buffered."""
        with self._cond:
            return list(self._heap)

    def reserved_gb(self) -> float:
        """Memory the buffered tasks will need when they start."""
        with self._cond:
            return sum(h.task.min_dram_gb for h in self._heap)

    def put_many(self, items: list[Held]) -> None:
        if not items:
            return
        with self._cond:
            for item in items:
                heapq.heappush(self._heap, item)
            self._cond.notify(len(items))

    def take(self, fits: Callable[[Task], bool], timeout: float) -> tuple[Held | None, int]:
        """Wait up to timeout for a task that fits; returns (task or None, fill seen at the take)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                fill = len(self._heap)
                if fill:
                    top = self._heap[0]
                    if fits(top.task):
                        return heapq.heappop(self._heap), fill
                    for i, item in enumerate(sorted(self._heap)[1:], start=1):  # rare: the top does not fit
                        if fits(item.task):
                            self._heap.remove(item)
                            heapq.heapify(self._heap)
                            return item, fill
                        if i > 64:
                            break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None, fill
                self._cond.wait(remaining)
            return None, len(self._heap)

    def drop(self, doomed: Callable[[Held], bool]) -> list[Held]:
        """Remove (and return) the buffered tasks `doomed` picks."""
        with self._cond:
            gone = [h for h in self._heap if doomed(h)]
            if gone:
                self._heap = [h for h in self._heap if not doomed(h)]
                heapq.heapify(self._heap)
            return gone

    def take_all(self) -> list[Held]:
        with self._cond:
            items, self._heap = self._heap, []
            return items

    def lowest_priority(self) -> int | None:
        with self._cond:
            return min((h.task.priority for h in self._heap), default=None)

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
