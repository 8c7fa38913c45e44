"""What the bench reads while it runs: Redis INFO deltas, a worker's /metrics, process CPU.

Kept apart from the runner so each figure's source is in one place.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil
import redis
from prometheus_client.parser import text_string_to_metric_families

#: commands the bench itself issues and removes from the Redis-side counts
OWN_COMMANDS = ("cmdstat_info",)


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since Redis started. Commands run inside Lua scripts are included."""
    return {name: int(v["calls"]) for name, v in client.info("commandstats").items()}


def command_delta(before: Mapping[str, int], after: Mapping[str, int], own: Mapping[str, int]) -> dict[str, int]:
    """Per-command calls between two snapshots, minus the bench's own INFO calls and `own` probes."""
    out: dict[str, int] = {}
    for name, calls in after.items():
        if name in OWN_COMMANDS:
            continue
        d = calls - before.get(name, 0) - own.get(name, 0)
        if d > 0:
            out[name] = d
    return out


def script_calls(delta: Mapping[str, int]) -> int:
    return sum(delta.get(n, 0) for n in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_fcall"))


@dataclass
class Scrape:
    """The worker figures the bench needs, from one /metrics scrape."""

    roundtrips: dict[str, float] = field(default_factory=dict)  # op -> round trips
    commands: dict[str, float] = field(default_factory=dict)  # op -> commands carried
    pickup_buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative count)
    cpu_s: float = 0.0
    completed: float = 0.0

    def minus(self, old: Scrape) -> Scrape:
        return Scrape(
            {k: v - old.roundtrips.get(k, 0.0) for k, v in self.roundtrips.items()},
            {k: v - old.commands.get(k, 0.0) for k, v in self.commands.items()},
            [(le, c - dict(old.pickup_buckets).get(le, 0.0)) for le, c in self.pickup_buckets],
            self.cpu_s - old.cpu_s,
            self.completed - old.completed,
        )

    @staticmethod
    def add(scrapes: Sequence[Scrape]) -> Scrape:
        total = Scrape()
        for s in scrapes:
            for k, v in s.roundtrips.items():
                total.roundtrips[k] = total.roundtrips.get(k, 0.0) + v
            for k, v in s.commands.items():
                total.commands[k] = total.commands.get(k, 0.0) + v
            merged = dict(total.pickup_buckets)
            for le, c in s.pickup_buckets:
                merged[le] = merged.get(le, 0.0) + c
            total.pickup_buckets = sorted(merged.items())
            total.cpu_s += s.cpu_s
            total.completed += s.completed
        return total


def scrape(url: str, timeout_s: float = 5.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # a loopback URL we built
        text = resp.read().decode()
    out = Scrape()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "distcomp_redis_roundtrip_seconds_count":
                out.roundtrips[s.labels["op"]] = s.value
            elif s.name == "distcomp_redis_roundtrip_commands_sum":
                out.commands[s.labels["op"]] = s.value
            elif s.name == "distcomp_task_pickup_delay_seconds_bucket":
                out.pickup_buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "process_cpu_seconds_total":
                out.cpu_s = s.value
            elif s.name == "distcomp_tasks_completed_total":
                out.completed += s.value
    out.pickup_buckets.sort()
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (its own threads, not the task subprocesses it waited for)."""
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
