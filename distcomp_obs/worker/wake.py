"""WakeSignal: how every other thread wakes the fetch loop, and what the wake-up channel announced.

Rules that keep wake-ups from being lost:
- the fetch loop calls `begin_pass()` (clears the event) *before* it looks at results, the
  buffer or the announcements; a `poke()` after that look is therefore seen by the next `wait()`;
- an announcement (`announce`) sets `submitted` and raises `urgent_priority` under one lock, and
  bumps a generation number; `claimed(generation)` forgets only the announcements the claim saw,
  so one arriving during the claim's round trip still triggers another claim.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Announced:
    submitted: bool  # work was submitted (or may have been: a missed wake-up) since the last claim
    urgent_priority: int  # highest priority announced since then (-1: none)
    generation: int


class WakeSignal:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._submitted = False
        self._priority = -1
        self._generation = 0
        self._cancel = False

    def cancel_requested(self) -> None:
        """The channel said a task was cancelled: the next pass settles even with nothing to send."""
        with self._lock:
            self._cancel = True
        self._event.set()

    def take_cancel(self) -> bool:
        with self._lock:
            wanted, self._cancel = self._cancel, False
            return wanted

    def poke(self) -> None:
        """A result is waiting, the buffer is low, or we are stopping: run a pass now."""
        self._event.set()

    def announce(self, priority: int = 0) -> None:
        """The wake-up channel said work of this priority was submitted."""
        with self._lock:
            self._submitted = True
            self._priority = max(self._priority, priority)
            self._generation += 1
        self._event.set()

    def maybe_missed(self) -> None:
        """The listener lost its connection: an announcement may have been missed, so the next
        pass claims once (no poke: Redis is away, the fetch loop learns that on its own)."""
        with self._lock:
            self._submitted = True
            self._generation += 1

    def announced(self) -> Announced:
        with self._lock:
            return Announced(self._submitted, self._priority, self._generation)

    def claimed(self, seen: Announced) -> None:
        """A claim round trip began after `seen`: those announcements are answered."""
        with self._lock:
            if self._generation == seen.generation:
                self._submitted = False
                self._priority = -1

    def begin_pass(self) -> None:
        self._event.clear()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)
