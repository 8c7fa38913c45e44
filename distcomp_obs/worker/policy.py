"""The worker's decisions as pure functions of what it sees: how many tasks to claim, whether to
send results now, how long to wait, what memory a claim may take, whether a task may start.
No threads, no Redis: the fetch loop and the slots gather the inputs, these decide.
"""

from __future__ import annotations

import math
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
#: added to the measured claim round trip when sizing the buffer: the fetch loop's own reaction
#: (a thread wake-up, the GIL shared with busy slots, reports riding the same round trip)
CLAIM_MARGIN_S = 0.02


def buffer_target(concurrency: int, prefetch: int, claim_rtt_s: float, mean_task_s: float | None) -> int:
    """Claimed tasks to keep buffered beyond the running ones: what the slots finish during one
    claim round trip plus CLAIM_MARGIN_S, concurrency × (rtt + margin) / mean task duration,
    rounded to the nearest (a task is buffered only if a slot more likely than not frees for it
    within one round trip), at most `prefetch`. A worker holding long tasks thus keeps none queued
    that another idle worker could start now: its slots claim as they free, as with prefetch 0.
    Before any task finished (`mean_task_s` None): one per slot, growing once durations come in
    (no-op tasks take µs: the target is `prefetch` after the first results)."""
    if prefetch <= 0:
        return 0
    if mean_task_s is None:
        return min(prefetch, max(1, concurrency))
    per_round_trip = concurrency * (max(0.0, claim_rtt_s) + CLAIM_MARGIN_S)  # slot-seconds
    if mean_task_s * prefetch <= per_round_trip:  # also a zero duration: no division
        return prefetch
    return min(prefetch, math.floor(per_round_trip / mean_task_s + 0.5))


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
    target: int | None = None  # buffer_target now (None: prefetch), capped by prefetch


def capacity_wanted(o: Occupancy) -> int:
    """How many tasks to claim now (0: none): the free slots plus the buffer's target, less what
    is buffered; never more than free slots + target. Refill at the low-water mark target // 2,
    or sooner if the buffer cannot fill the free slots (a buffered task that does not fit yet must
    not idle the others: with target 0 this is exactly prefetch 0)."""
    free_slots = max(0, o.concurrency - o.busy)
    if o.prefetch == 0:
        return max(0, free_slots - o.buffered)
    target = o.prefetch if o.target is None else max(0, min(o.target, o.prefetch))
    want = max(0, target + free_slots - o.buffered)
    if o.submitted and want == 0:
        # Strict priority: work more urgent than anything buffered was just submitted. Claim it
        # now (the buffer may overflow a little) rather than start lower-priority tasks first.
        lowest = o.lowest_buffered_priority
        if lowest is not None and o.urgent_priority > lowest:
            return max(1, target // 4)
    if o.buffered > target // 2 and o.buffered >= free_slots and not o.submitted:
        return 0  # above the low-water mark
    return want


def below_low_water(buffered: int, prefetch: int) -> bool:
    """A slot that leaves the buffer this low wakes the fetch loop to refill it. The target is at
    most `prefetch`, so its own mark (target // 2) is never missed: at worst a pass claims nothing."""
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
