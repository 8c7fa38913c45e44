"""Pace: what the worker has seen of its tasks' durations and of its claim round trips.

Two exponentially weighted means, fed by the fetch loop alone (one writer, no lock): each
collected result's measured duration (`Results.on_collect`) and the wall time of each round trip
that claimed (`Fetcher._round_trip`). `policy.buffer_target` turns them into the prefetch
buffer's target size. No clock, no thread, no Redis: a plain value object, tested in isolation.
"""

from __future__ import annotations

#: weight of the newest observation in each mean: about the last ten count (a change in task
#: length shows within a few tasks; one odd task moves the mean by a fifth)
ALPHA = 0.2


class Ewma:
    """An exponentially weighted mean; `value` is None until the first observation."""

    __slots__ = ("alpha", "count", "value")

    def __init__(self, alpha: float = ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0

    def observe(self, x: float) -> None:
        if x < 0.0:
            x = 0.0  # a clock step must not make a mean negative
        value = self.value
        self.value = x if value is None else value + self.alpha * (x - value)
        self.count += 1


class Pace:
    """Running estimates of task duration and claim round-trip time (the fetch loop's)."""

    __slots__ = ("claim_rtt", "task_duration")

    def __init__(self, alpha: float = ALPHA) -> None:
        self.task_duration = Ewma(alpha)  # seconds a slot spent on one task
        self.claim_rtt = Ewma(alpha)  # seconds from sending a claim to holding its tasks

    def task_done(self, duration_s: float) -> None:
        self.task_duration.observe(duration_s)

    def claimed(self, rtt_s: float) -> None:
        self.claim_rtt.observe(rtt_s)

    @property
    def mean_task_s(self) -> float | None:
        return self.task_duration.value

    @property
    def claim_rtt_s(self) -> float:
        return self.claim_rtt.value or 0.0
