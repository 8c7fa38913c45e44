"""The figures behind the bench report: medians and min-max per (workload, variant, latency),
ratios to the baseline, the proposal's claims against the measured figures, and the issue's
targets. report.py renders them.

Verdicts are computed from the numbers, never written by hand, so a rerun on a faster worker
changes them by itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from statistics import median
from typing import Any

Summary = dict[str, dict[str, float]]  # metric -> {median, min, max, n}

METRICS = (
    "tasks_per_s",
    "redis_commands_per_task",
    "redis_script_calls_per_task",
    "worker_roundtrips_per_task",
    "worker_commands_per_task",
    "worker_cpu_us_per_task",
    "pickup_p50_ms",
    "pickup_p99_ms",
    "pickup_le_1ms_share",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "idle_redis_commands_per_s_per_worker",
    "idle_worker_housekeeping_commands_per_s",
    "idle_worker_beyond_heartbeat_commands_per_s",
    # the cluster workload (Redis-side costs from INFO)
    "redis_cpu_us_per_task",
    "redis_cpu_us_per_line",
    "redis_busy_pct",
    "redis_bytes_per_queued_task",
    "submit_lines_per_s",
)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], Summary]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["workload"], run["variant"], float(run["latency_ms"]))].append(run)
    out: dict[tuple[str, str, float], Summary] = {}
    for key, rs in groups.items():
        out[key] = {}
        for m in METRICS:
            values = [float(r[m]) for r in rs if isinstance(r.get(m), int | float)]
            if values:
                out[key][m] = {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}
    return out


class Figures:
    """Lookups into the summary: med("noop", "all", 1.0) -> median tasks/s, or None."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.s = summarize(results.get("runs", []))
        self.latencies = sorted({float(k[2]) for k in self.s if k[0] in ("noop", "shell")}) or [
            float(x) for x in results.get("meta", {}).get("options", {}).get("latencies_ms", [])
        ]

    def med(self, workload: str, variant: str, latency: float, metric: str = "tasks_per_s") -> float | None:
        entry = self.s.get((workload, variant, float(latency)), {}).get(metric)
        return entry["median"] if entry else None

    def ratio(
        self, a: str, b: str, latency: float, metric: str = "tasks_per_s", workload: str = "noop"
    ) -> float | None:
        x, y = self.med(workload, a, latency, metric), self.med(workload, b, latency, metric)
        return x / y if x is not None and y else None


# ---------------------------------------------------------------------- verdicts
def fmt(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}{unit}"
    return f"{x:.{digits}g}{unit}"


def pct(r: float | None) -> str:
    return "n/a" if r is None else f"{(r - 1) * 100:+.0f} %"


def combine(per_latency: dict[float, bool | None], what_when_partial: str = "") -> str:
    """holds / does not hold / holds only at ... from one boolean per latency."""
    known = {lat: ok for lat, ok in per_latency.items() if ok is not None}
    if not known:
        return "not measured"
    if all(known.values()):
        return "holds"
    if not any(known.values()):
        return "does not hold"
    at = ", ".join(f"{lat:g} ms" for lat, ok in known.items() if ok)
    return f"holds only at {at}" + (f" ({what_when_partial})" if what_when_partial else "")


def _gain_claim(f: Figures, name: str, variant: str, low: float, high: float, against: str) -> dict[str, Any]:
    measured, ok = {}, {}
    for lat in f.latencies:
        r = f.ratio(variant, against, lat)
        measured[lat] = pct(r)
        ok[lat] = None if r is None else r - 1 >= low
    verdict = combine(ok)
    ratios = [f.ratio(variant, against, lat) for lat in f.latencies]
    if verdict == "holds" and all(r is not None and r - 1 > 2 * high for r in ratios):
        verdict = "holds (understated: the measured gain is far larger)"
    return {
        "claim": name,
        "basis": f"noop drain tasks/s, `{variant}` vs `{against}`",
        "measured": measured,
        "verdict": verdict,
    }


def claims(f: Figures) -> list[dict[str, Any]]:
    rows = [
        _gain_claim(f, "pipelining +30–50 %", "pipeline", 0.30, 0.50, "baseline-nosleep"),
        _gain_claim(f, "adaptive polling +20–30 %", "adaptive", 0.20, 0.30, "baseline-nosleep"),
        _gain_claim(f, "prefetching +20–40 %", "prefetch", 0.20, 0.40, "baseline-nosleep"),
        _gain_claim(f, "overall +50–100 %", "all", 0.50, 1.00, "baseline-nosleep"),
    ]
    # Against DistComp as shipped (2 s sleep) the gains are of another order: shown beside.
    for row, variant in zip(rows, ("pipeline", "adaptive", "prefetch", "all"), strict=True):
        row["vs_baseline_2s"] = {lat: ratio_x(f.ratio(variant, "baseline", lat)) for lat in f.latencies}

    # "baseline ~100-200 tasks/s per worker"
    measured, ok, nosleep_ok = {}, {}, {}
    for lat in f.latencies:
        b, ns = f.med("noop", "baseline", lat), f.med("noop", "baseline-nosleep", lat)
        measured[lat] = f"{fmt(b)} (2 s sleep); {fmt(ns)} (0 s)"
        ok[lat] = None if b is None else 100 <= b <= 200 * 1.25
        nosleep_ok[lat] = None if ns is None else 100 <= ns
    verdict = combine(ok)
    if verdict == "does not hold" and any(nosleep_ok.values()):
        verdict = "does not hold as shipped (2 s sleep); " + combine(nosleep_ok).replace(
            "holds", "holds without the sleep"
        )
    rows.append(
        {
            "claim": "baseline ~100–200 tasks/s per worker",
            "basis": "noop drain tasks/s",
            "measured": measured,
            "verdict": verdict,
        }
    )

    # "pipelining 5-10x on Redis operations"
    measured, ok = {}, {}
    for lat in f.latencies:
        rt = f.ratio("baseline-nosleep", "pipeline", lat, "worker_roundtrips_per_task")
        cmd = f.ratio("baseline-nosleep", "pipeline", lat, "redis_commands_per_task")
        measured[lat] = f"{ratio_x(rt)} fewer round trips; {ratio_x(cmd)} fewer commands executed"
        ok[lat] = None if rt is None else rt >= 5
    rows.append(
        {
            "claim": "pipelining 5–10× on Redis operations",
            "basis": "round trips per task (worker counters) and commands per task (INFO commandstats), "
            "`baseline-nosleep` / `pipeline`",
            "measured": measured,
            "verdict": combine(ok),
        }
    )

    # "network latency is the primary bottleneck in large deployments"
    rows.append(_latency_claim(f))
    return rows


def ratio_x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3g}×"


def _latency_claim(f: Figures) -> dict[str, Any]:
    """Share of a task's time that the injected latency adds: (t(L) - t(0)) / t(L), t = 1/rate."""
    measured: dict[float, str] = {}
    ok_by_variant: dict[str, dict[float, bool | None]] = {}
    zero = 0.0 if 0.0 in f.latencies else None
    for lat in f.latencies:
        if zero is None or lat == zero:
            measured[lat] = "reference" if lat == zero else "n/a (needs a 0 ms run)"
            continue
        parts = []
        for v in ("baseline-nosleep", "all"):
            r0, r = f.med("noop", v, zero), f.med("noop", v, lat)
            if r0 and r:
                share = (1 / r - 1 / r0) / (1 / r)
                parts.append(f"`{v}` {share * 100:.0f} % of task time")
                ok_by_variant.setdefault(v, {})[lat] = share > 0.5
        measured[lat] = "; ".join(parts) or "n/a"
    unpiped = combine(ok_by_variant.get("baseline-nosleep", {}))
    piped = combine(ok_by_variant.get("all", {}))
    if unpiped.startswith("holds") and not piped.startswith("holds"):
        verdict = f"holds only for DistComp's protocol ({unpiped}); with all optimizations on: {piped}"
    elif unpiped.startswith("holds") and piped.startswith("holds"):
        verdict = "holds"
    elif unpiped == "not measured":
        verdict = "not measured"
    else:
        verdict = f"does not hold (DistComp's protocol: {unpiped}; all on: {piped})"
    return {
        "claim": "network latency is the primary bottleneck in large deployments",
        "basis": "share of per-task time added by the injected round trip (noop drain)",
        "measured": measured,
        "verdict": verdict,
    }


# ---------------------------------------------------------------------- targets
def _at_least(goal: float) -> Callable[[float], bool]:
    return lambda v: v >= goal


def targets(f: Figures, results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, good: Callable[[float], bool], shown: str = "") -> None:
        met = None if value is None else good(value)
        rows.append(
            {
                "target": name,
                "goal": target,
                "measured": shown or fmt(value),
                "met": "n/a" if met is None else ("yes" if met else "no"),
            }
        )

    for lat, goal in ((0.0, 10_000), (1.0, 5_000), (5.0, 2_500)):
        add(f"noop all-on tasks/s at {lat:g} ms", f"≥ {goal:,}", f.med("noop", "all", lat), _at_least(goal))
    lat0 = f.latencies[0] if f.latencies else 0.0
    add(
        "round trips per task at steady drain (all on)",
        "≤ 0.1",
        f.med("noop", "all", lat0, "worker_roundtrips_per_task"),
        lambda v: v <= 0.1,
    )
    add(
        "worker CPU per task, noop 0 ms, metrics on",
        "≤ 100 µs",
        f.med("noop", "all", 0.0, "worker_cpu_us_per_task"),
        lambda v: v <= 100,
    )
    add("pickup p50 at 0 ms (all on)", "≤ 1 ms", f.med("pickup", "all", 0.0, "pickup_p50_ms"), lambda v: v <= 1)
    add("pickup p99 at 0 ms (all on)", "≤ 10 ms", f.med("pickup", "all", 0.0, "pickup_p99_ms"), lambda v: v <= 10)
    add(
        "idle worker commands/s beyond heartbeat (all on)",
        "≤ 0.1",
        f.med("pickup", "all", lat0, "idle_worker_beyond_heartbeat_commands_per_s"),
        lambda v: v <= 0.1,
    )
    claim = results.get("scale", {}).get("claim", {})
    add(
        "claim throughput, 1,000,000 vs 1,000 queued",
        "≥ 90 %",
        claim.get("big_vs_small"),
        lambda v: v >= 0.9,
        "n/a" if claim.get("big_vs_small") is None else f"{claim['big_vs_small'] * 100:.0f} %",
    )
    idle = results.get("scale", {}).get("idle_workers", {})
    value = idle.get(
        "extrapolated_beyond_heartbeat_commands_per_s", idle.get("idle_worker_beyond_heartbeat_commands_per_s")
    )
    shown = fmt(value)
    if idle.get("started") and idle.get("started") != idle.get("requested"):
        shown += f" (measured with {idle['started']} workers, extrapolated to {idle['requested']})"
    add(
        f"{idle.get('requested', 200)} idle workers: commands/s beyond heartbeats",
        "≤ 20",
        value,
        lambda v: v <= 20,
        shown,
    )
    shell, bare = f.med("shell", "all", lat0), f.med("shell", "bare-loop", 0.0)
    add(
        "shell all-on vs a bare subprocess loop",
        "≥ 80 %",
        shell / bare if shell and bare else None,
        lambda v: v >= 0.8,
        "n/a" if not (shell and bare) else f"{shell / bare * 100:.0f} % ({fmt(shell)} vs {fmt(bare)} tasks/s)",
    )
    return rows
