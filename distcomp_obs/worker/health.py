"""What the worker knows of its own health, each piece behind one lock or with one writer:
Redis reachability (seen by the fetch loop and the heartbeat), the lease on its name, and the
liveness times /healthz reads."""

from __future__ import annotations

import logging
import threading
import time

from distcomp_obs.redis_io import outage_cause

log = logging.getLogger("distcomp_obs.worker")


class RedisHealth:
    """Which threads currently see Redis down, and why; logs one line per change of state (down,
    a different cause, back), not per attempt."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}  # source -> cause (redis_io.outage_cause)
        self._logged = ""  # the cause last logged ("" while up)

    @property
    def ok(self) -> bool:
        with self._lock:
            return not self._down

    @property
    def cause(self) -> str:
        """Why Redis is down ("unreachable", "out of memory (maxmemory reached)", ...), "" when up."""
        with self._lock:
            return next(iter(self._down.values()), "")

    def mark(self, ok: bool, source: str, exc: BaseException | None = None) -> None:
        with self._lock:
            if ok:
                self._down.pop(source, None)
            else:
                self._down[source] = outage_cause(exc) if exc is not None else "unreachable"
            cause = next(iter(self._down.values()), "")
            was, self._logged = self._logged, cause
        if cause and cause != was:
            log.error("worker %s: Redis %s (%s); tasks keep running, reports are held, retrying",
                      self.worker, cause, exc)  # fmt: skip
        elif was and not cause:
            log.warning("worker %s: Redis reachable again", self.worker)


class Lease:
    """Whether this process still holds its name's lease (heartbeat and claims both learn it), and
    until when that is certain: a renewal sent at t keeps the lease on the server until at least
    t + lease_s, so after that, without a newer renewal, the reaper may have handed our buffered
    tasks to another worker. Slots start a task only while the lease is `trusted()`."""

    #: trust a renewal for this share of the lease (the rest absorbs timer and scheduling slack)
    TRUST = 0.9

    def __init__(self, worker: str, lease_s: float = 15.0) -> None:
        self.worker = worker
        self.lease_s = lease_s
        self._lock = threading.Lock()
        self._held = True
        self._trusted_until = time.monotonic() + lease_s * self.TRUST

    @property
    def held(self) -> bool:
        with self._lock:
            return self._held

    def trusted(self) -> bool:
        """Held, and renewed recently enough that no reaper can have returned our tasks."""
        with self._lock:
            return self._held and time.monotonic() < self._trusted_until

    def lost(self) -> None:
        with self._lock:
            was_held, self._held = self._held, False
        if was_held:
            log.error("worker %s: our lease was not found at a claim (it expired while we were frozen or cut "
                      "off, or another process took the name); not claiming or starting tasks until the "
                      "heartbeat settles it", self.worker)  # fmt: skip

    def renewed(self, sent_at: float | None = None) -> None:
        """The server renewed the lease by a heartbeat sent at `sent_at` (time.monotonic())."""
        with self._lock:
            self._held = True
            if sent_at is not None:
                self._trusted_until = max(self._trusted_until, sent_at + self.lease_s * self.TRUST)


class Liveness:
    """Times /healthz and /livez judge: each has one writer (a float store is atomic)."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.loop_beat = now  # written by the fetch loop every pass, and while it waits for Redis
        self.chores_beat = now  # written by the chores thread every tick
        self.heartbeat_ok_at = now  # written by the heartbeat when Redis answered

    def alive(self, idle_max_wait_s: float, stopping: bool) -> tuple[bool, str]:
        """/livez: the process is not wedged, whatever Redis does. Its two loops go round (the
        fetch loop also while it waits for Redis); a draining worker is alive until it exits (the
        grace period bounds the drain). A probe of this restarts only a stuck worker, never one
        waiting out a Redis outage with its tasks running."""
        if stopping:
            return True, "draining"
        now, limit = time.monotonic(), max(60.0, 3 * idle_max_wait_s)
        for loop, beat in (("fetch loop", self.loop_beat), ("chores thread", self.chores_beat)):
            if now - beat > limit:
                return False, f"{loop} silent for {now - beat:.0f}s"
        return True, "ok"

    def check(self, redis: RedisHealth, heartbeat_interval_s: float, idle_max_wait_s: float) -> tuple[bool, str]:
        if not redis.ok:
            return False, f"redis {redis.cause}"
        # An idle fetch loop may not touch Redis for idle_max_wait_s; the heartbeat does every interval.
        beat_age = time.monotonic() - self.heartbeat_ok_at
        if beat_age > max(2.0, 3 * heartbeat_interval_s):
            return False, f"redis unreachable: no heartbeat for {beat_age:.0f}s"
        return self.alive(idle_max_wait_s, stopping=False)
