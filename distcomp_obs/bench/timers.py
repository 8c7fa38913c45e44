"""Callbacks at sub-millisecond deadlines on an asyncio loop: the latency proxy's clock.

asyncio's own timers have 1 ms granularity (epoll timeouts are whole milliseconds); a Linux
timerfd armed at the earliest deadline has nanosecond ones. Elsewhere, loop.call_at.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
import time
from collections.abc import Callable

#: chunks due within this much of now are written in the same wake-up
EPSILON_S = 20e-6


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018 - probe: not every libc has it
        return libc
    except (OSError, AttributeError):
        return None


_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME, _TFD_NONBLOCK, _TFD_CLOEXEC = 1, 1, 0o4000, 0o2000000


class Timers:
    """Callbacks at absolute time.monotonic() deadlines, with sub-millisecond precision.

    One timerfd armed at the earliest deadline, watched by the event loop: it wakes when due
    without spinning. (time.monotonic() is CLOCK_MONOTONIC on Linux, the timerfd's clock.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._armed_at: float | None = None
        self._fd = -1
        self._settime: Callable[..., int] | None = None  # timerfd_settime, once a timerfd exists
        libc = _libc()
        if libc is not None:
            fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
            if fd >= 0:
                self._fd, self._settime = fd, libc.timerfd_settime
                loop.add_reader(fd, self._fire)

    @property
    def precise(self) -> bool:
        """True with a timerfd (sub-millisecond), False on loop.call_at (1 ms granularity)."""
        return self._fd >= 0

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), callback))
        if self._armed_at is None or deadline < self._armed_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self._armed_at = deadline
        if self._settime is None:
            self.loop.call_at(self.loop.time() + max(0.0, deadline - time.monotonic()), self._fire)
            return
        sec = int(deadline)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, max(1, int((deadline - sec) * 1e9))))
        self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)

    def _fire(self) -> None:
        if self._fd >= 0:
            try:
                os.read(self._fd, 8)
            except BlockingIOError:
                pass
        self._armed_at = None
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now + EPSILON_S:
            _, _, callback = heapq.heappop(self._heap)
            callback()
        if self._heap:
            self._arm(self._heap[0][0])

    def close(self) -> None:
        if self._fd >= 0:
            self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd, self._settime = -1, None
