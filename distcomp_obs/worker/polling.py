"""Polling policies: pure functions of what the last fetch saw, so they are easy to test.

fixed: DistComp's sleep between fetches. adaptive: fetch again at once while work flows; when
the queue is empty block on the wake-up channel; when tasks are queued but none fits this
worker, back off exponentially with jitter so 100 workers do not poll in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str  # a distcomp_poll_sleep_seconds reason
    wake_on_submit: bool = False


NO_WAIT = Wait(0.0, "")


def fixed_wait(poll_interval_s: float, since_last_fetch_s: float) -> Wait:
    """Sleep what is left of the interval since the last fetch began."""
    left = poll_interval_s - since_last_fetch_s
    return Wait(left, "fixed_interval") if left > 0 else NO_WAIT


def adaptive_wait(claimed: int, remaining: int, misses: int, max_wait_s: float, rng: random.Random) -> Wait:
    """claimed: tasks the last fetch got; remaining: tasks still queued; misses: fetches in a row that got none."""
    if claimed > 0 and remaining > 0:
        return NO_WAIT  # work flows: fetch again at once
    if remaining == 0:
        # Nothing queued: block until `submit` publishes a wake-up (or a safety timeout).
        return Wait(max_wait_s * rng.uniform(0.8, 1.0), "blocking_wait", wake_on_submit=True)
    return Wait(idle_backoff(misses, max_wait_s, rng), "idle_backoff", wake_on_submit=True)


def idle_backoff(misses: int, cap_s: float, rng: random.Random, base_s: float = 0.01) -> float:
    """Full-jitter exponential backoff: 10 ms, 20 ms, ... capped."""
    return rng.uniform(0.5, 1.0) * min(cap_s, base_s * 2.0 ** min(misses, 20))
