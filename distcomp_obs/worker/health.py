"""What the worker knows of its own health, each piece behind one lock or with one writer:
Redis reachability (seen by the fetch loop and the heartbeat), the lease on its name, and the
liveness times /healthz reads."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("distcomp_obs.worker")


class RedisHealth:
    """Which threads currently see Redis down; logs once per outage, not per attempt."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._down: set[str] = set()

    @property
    def ok(self) -> bool:
        with self._lock:
            return not self._down

    def mark(self, ok: bool, source: str, exc: BaseException | None = None) -> None:
        with self._lock:
            was_ok = not self._down
            if ok:
                self._down.discard(source)
            else:
                self._down.add(source)
            now_ok = not self._down
        if was_ok and not now_ok:
            log.error("worker %s: Redis unreachable (%s); tasks keep running, reports are held, retrying",
                      self.worker, exc)  # fmt: skip
        elif not was_ok and now_ok:
            log.warning("worker %s: Redis reachable again", self.worker)


class Lease:
    """Whether this process still holds its name's lease (heartbeat and claims both learn it)."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._held = True

    @property
    def held(self) -> bool:
        with self._lock:
            return self._held

    def lost(self) -> None:
        with self._lock:
            was_held, self._held = self._held, False
        if was_held:
            log.error(
                "worker %s: lease lost (another process took the name, or we were cut off too long); "
                "not claiming until it is back",
                self.worker,
            )

    def renewed(self) -> None:
        with self._lock:
            self._held = True


class Liveness:
    """Times /healthz judges: each has one writer (a float store is atomic)."""

    def __init__(self) -> None:
        now = time.monotonic()
        self.loop_beat = now  # written by the fetch loop every pass
        self.heartbeat_ok_at = now  # written by the heartbeat when Redis answered

    def check(self, redis: RedisHealth, heartbeat_interval_s: float, idle_max_wait_s: float) -> tuple[bool, str]:
        if not redis.ok:
            return False, "redis unreachable"
        # An idle fetch loop may not touch Redis for idle_max_wait_s; the heartbeat does every interval.
        beat_age = time.monotonic() - self.heartbeat_ok_at
        if beat_age > max(2.0, 3 * heartbeat_interval_s):
            return False, f"redis unreachable: no heartbeat for {beat_age:.0f}s"
        loop_age = time.monotonic() - self.loop_beat
        if loop_age > max(60.0, 3 * idle_max_wait_s):
            return False, f"fetch loop silent for {loop_age:.0f}s"
        return True, "ok"
