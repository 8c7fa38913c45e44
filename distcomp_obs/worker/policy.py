"""The worker's decisions as pure functions of what it sees: how many tasks to claim, whether to
send results now, how long to wait, what memory a claim may take, whether a task may start.
No threads, no Redis: the fetch loop and the slots gather the inputs, these decide.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from distcomp_obs.records import ClaimLimits
from distcomp_obs.task import Task
from distcomp_obs.worker.polling import NO_WAIT, Wait, adaptive_wait, fixed_wait

#: a lone result waits at most this long for others to share its report round trip (a report
#: round trip costs ~300 µs of worker CPU: for subprocess tasks at ~1,000/s this halves them)
REPORT_COALESCE_S = 0.01
#: most reports sent in one round trip (a long script blocks Redis for everyone)
MAX_REPORT_BATCH = 500


@dataclass(frozen=True, slots=True)
class Occupancy:
    """What the worker holds when it decides whether to claim."""

    concurrency: int
    prefetch: int
    busy: int  # tasks running in slots
    buffered: int  # claimed, not started
    submitted: bool  # the wake-up channel announced work since the last claim
    urgent_priority: int  # highest priority announced since the last claim (-1: none)
    lowest_buffered_priority: int | None


def capacity_wanted(o: Occupancy) -> int:
    """How many tasks to claim now (0: none)."""
    free_slots = max(0, o.concurrency - o.busy)
    if o.prefetch == 0:
        return max(0, free_slots - o.buffered)
    want = max(0, o.prefetch + free_slots - o.buffered)
    if o.submitted and want == 0:
        # Strict priority: work more urgent than anything buffered was just submitted. Claim it
        # now (the buffer may overflow a little) rather than start lower-priority tasks first.
        lowest = o.lowest_buffered_priority
        if lowest is not None and o.urgent_priority > lowest:
            return max(1, o.prefetch // 4)
    if o.buffered > o.prefetch // 2 and not o.submitted:
        return 0  # above the low-water mark
    return want


def below_low_water(buffered: int, prefetch: int) -> bool:
    """A slot that leaves the buffer this low wakes the fetch loop to refill it."""
    return buffered <= prefetch // 2


def reports_due(unsent: int, oldest_age_s: float, pipeline: bool, stopping: bool, concurrency: int) -> bool:
    """Send results now, or let a few more join them in one round trip?"""
    if not unsent:
        return False
    if not pipeline or stopping or unsent >= max(16, concurrency):
        return True
    return oldest_age_s >= REPORT_COALESCE_S


@dataclass(frozen=True, slots=True)
class FetchState:
    """What the last pass of the fetch loop saw."""

    want: int  # tasks it wanted
    claimed: int  # tasks it got
    remaining: int  # tasks still queued (-1: it did not ask)
    misses: int  # claims in a row that got nothing
    since_fetch_s: float  # since the last claim began


def next_wait(
    s: FetchState, *, results_waiting: bool, unsent: int, polling: str, poll_interval_s: float,
    still_wanted: int, idle_max_wait_s: float, rng: random.Random,
) -> Wait:  # fmt: skip
    """How long the fetch loop sleeps before its next pass (a poke ends any sleep early).
    `still_wanted`: capacity_wanted now (slots may have freed since the pass began)."""
    if results_waiting:
        return NO_WAIT
    if unsent:  # coalescing reports: come back when the oldest is due
        return Wait(REPORT_COALESCE_S, "")  # not a poll sleep: not recorded
    if s.want == 0:
        if polling == "fixed" and still_wanted:
            return fixed_wait(poll_interval_s, s.since_fetch_s)
        return Wait(1.0, "buffer_full")  # woken by a finishing task
    if polling == "fixed":
        return fixed_wait(poll_interval_s, s.since_fetch_s)
    return adaptive_wait(s.claimed, max(s.remaining, 0), s.misses, idle_max_wait_s, rng)


def claim_limits(available_gb: float, floor_gb: float, reserved_gb: float, cores: int) -> ClaimLimits:
    """Memory a claim may take: free memory above the floor, less what buffered tasks will need.
    Below the floor nothing is claimed (-1 fits no task, not even one needing 0 GB)."""
    above_floor = available_gb - floor_gb
    if above_floor < 0:
        return ClaimLimits(free_dram_gb=-1.0, cpus=float(cores))
    return ClaimLimits(free_dram_gb=max(0.0, above_floor - reserved_gb), cpus=float(cores))


def fits(task: Task, available_gb: float, floor_gb: float, cores_used: float, cores: int) -> bool:
    """DistComp's admission: memory above the floor and, when tasks declare cores, no more
    cores than the machine has (a task that alone needs more still runs, on an idle machine)."""
    if (task.min_dram_gb > 0 or floor_gb > 0) and task.min_dram_gb > available_gb - floor_gb:
        return False
    return not (task.min_cpu > 0 and cores_used > 0 and cores_used + task.min_cpu > cores)
