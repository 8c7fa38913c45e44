"""From results.json to report.md and a PNG: the tables and verdicts of verdicts.py, one
section of the report per function, and the chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distcomp_obs.bench.verdicts import Figures, claims, fmt, pct, ratio_x, targets


# ---------------------------------------------------------------------- markdown
def _cell(entry: dict[str, float] | None) -> str:
    if not entry:
        return "–"
    if entry["n"] > 1 and entry["max"] != entry["min"]:
        return f"{fmt(entry['median'])} ({fmt(entry['min'])}–{fmt(entry['max'])})"
    return fmt(entry["median"])


def _variant_order(f: Figures, workload: str) -> list[str]:
    seen = [v for (w, v, _) in f.s if w == workload]
    return list(dict.fromkeys(seen))


def _drain_table(f: Figures, workload: str, metric: str, title: str, ratio_to: str = "") -> list[str]:
    variants = _variant_order(f, workload)
    lats = sorted({lat for (w, _, lat) in f.s if w == workload})
    if not variants:
        return []
    head = ["variant", *[f"{lat:g} ms" for lat in lats]]
    if ratio_to:
        head += [f"× `{ratio_to}` at {lat:g} ms" for lat in lats]
    lines = [f"**{title}** — median (min–max)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        cells = [f"`{v}`"] + [_cell(f.s.get((workload, v, lat), {}).get(metric)) for lat in lats]
        if ratio_to:
            cells += [ratio_x(f.ratio(v, ratio_to, lat, metric, workload)) for lat in lats]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _header(meta: dict[str, Any]) -> list[str]:
    m = meta.get("machine", {})
    return [
        "# distcomp bench report",
        "",
        f"- date: {meta.get('date', '?')} (took {meta.get('duration_s', '?')} s); git {meta.get('git_commit', '?')}",
        f"- machine: {m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), {m.get('mem_total_gb', '?')} GB, "
        f"{m.get('platform', '?')}, Python {m.get('python', '?')}, Redis {meta.get('redis_version', '?')}, "
        f"load average at end {tuple(round(x, 2) for x in m.get('loadavg_at_end', ()))}",
        f"- command: `{meta.get('command', '?')}`",
        "",
    ]


def _proxy_section(f: Figures, proxy: dict[str, Any]) -> list[str]:
    if not proxy:
        return []
    direct = proxy.get("ping_rtt_ms_direct", {})
    prox = proxy.get("ping_rtt_ms_proxied", {})
    out = [
        "## Latency proxy",
        "",
        f"PING round trip p50 (p99): direct {fmt(direct.get('p50'))} ms ({fmt(direct.get('p99'))}); "
        + "; ".join(f"proxy set to {k} ms: {fmt(v['p50'])} ms ({fmt(v['p99'])})" for k, v in prox.items())
        + f". Timer: {'timerfd (sub-ms)' if proxy.get('precise_timers') else 'asyncio (1 ms granularity)'}.",
        "",
    ]
    direct_run, proxied_run = f.med("noop", "all-direct", 0.0), f.med("noop", "all", 0.0)
    if direct_run and proxied_run:
        out += [
            f"`all` noop drain at 0 ms: {fmt(proxied_run)} tasks/s through the proxy vs "
            f"{fmt(direct_run)} direct ({pct(proxied_run / direct_run)}).",
            "",
        ]
    return out


def _claims_section(f: Figures) -> list[str]:
    out = [
        "## Claimed vs measured",
        "",
        "| claim | basis | " + " | ".join(f"{lat:g} ms" for lat in f.latencies) + " | verdict |",
        "|" + "---|" * (3 + len(f.latencies)),
    ]
    for row in claims(f):
        cells = [row["claim"], row["basis"], *[str(row["measured"].get(lat, "n/a")) for lat in f.latencies]]
        if "vs_baseline_2s" in row:
            cells[1] += (
                " (vs `baseline` 2 s: "
                + ", ".join(f"{row['vs_baseline_2s'][lat]} at {lat:g} ms" for lat in f.latencies)
                + ")"
            )
        out.append("| " + " | ".join([*cells, f"**{row['verdict']}**"]) + " |")
    return out


def _targets_section(f: Figures, results: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## Targets (issue 3) — goals, not assertions",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for t in targets(f, results):
        out.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {t['met']} |")
    out.append("")
    return out


def _drain_section(f: Figures) -> list[str]:
    out = ["## Drain figures", ""]
    for workload in ("noop", "shell"):
        out += _drain_table(f, workload, "tasks_per_s", f"{workload}: tasks/s", ratio_to="baseline-nosleep")
        out += _drain_table(
            f, workload, "worker_roundtrips_per_task", f"{workload}: Redis round trips per task (worker counters)"
        )
        out += _drain_table(
            f,
            workload,
            "worker_commands_per_task",
            f"{workload}: commands sent per task (worker counters; a script counts 1)",
        )
        out += _drain_table(
            f,
            workload,
            "redis_commands_per_task",
            f"{workload}: commands executed per task (Redis INFO commandstats, commands inside scripts included)",
        )
        out += _drain_table(f, workload, "worker_cpu_us_per_task", f"{workload}: worker CPU µs per task")
    return out + _instrumentation_table(f)


def _instrumentation_table(f: Figures) -> list[str]:
    lat0 = f.latencies[0] if f.latencies else 0.0
    on = f.med("noop", "all", lat0, "worker_cpu_us_per_task")
    controls = [("all-nometrics", "metrics off (`--no-metrics`), tracing off"),
                ("all", "metrics on, tracing off (default)"),
                ("all-tracing1pct", "metrics on, tracing on, 1 % sampled (OTLP to a local sink)"),
                ("all-tracing", "metrics on, tracing on, all sampled (OTLP to a local sink)")]  # fmt: skip
    rows = [(label, f.med("noop", v, lat0, "worker_cpu_us_per_task")) for v, label in controls]
    if not any(cpu is not None for label, cpu in rows if label != controls[1][1]):
        return []
    out = [f"Instrumentation cost (noop, `all`, {lat0:g} ms): worker CPU µs per task, median.", "",
           "| worker setting | CPU µs / task | vs default |", "|---|---|---|"]  # fmt: skip
    out += [f"| {label} | {fmt(cpu)} | {pct(cpu / on if cpu and on else None)} |" for label, cpu in rows]
    out.append("")
    return out


def _pickup_section(f: Figures) -> list[str]:
    out = ["## Pickup and idle cost", ""]
    for metric, title in (
        ("pickup_p50_ms", "pickup delay p50, ms (worker histogram, submit → start)"),
        ("pickup_p99_ms", "pickup delay p99, ms (worker histogram)"),
        ("e2e_p50_ms", "submit → recorded p50, ms (bench clock)"),
        (
            "idle_worker_beyond_heartbeat_commands_per_s",
            "idle: commands/s beyond heartbeat and reaper (worker counters)",
        ),
        ("idle_worker_housekeeping_commands_per_s", "idle: heartbeat + reaper commands/s (worker counters)"),
        ("idle_redis_commands_per_s_per_worker", "idle: commands/s executed by Redis per worker (incl. scripts)"),
    ):
        out += _drain_table(f, "pickup", metric, title)
    return out


def _scale_claim_lines(f: Figures, c: dict[str, Any]) -> list[str]:
    if not c:
        return []
    if "error" in c and "claims_per_s_median" not in c:
        return [f"- claim throughput: not measured ({c['error']})"]
    med = c.get("claims_per_s_median", {})
    q = {size: f"{n:,}" if isinstance(n, int) else "?" for size, n in c.get("queued", {}).items()}
    out = [
        f"- claim throughput (32-task atomic claims from one client): {fmt(med.get('small'))} tasks/s "
        f"with {q.get('small', '?')} queued vs {fmt(med.get('big'))} with {q.get('big', '?')} "
        f"queued ({fmt((c.get('big_vs_small') or 0) * 100)} %)"
    ]
    w = c.get("worker_big", {})
    if w:
        noop = f.med("noop", "all", 0.0)
        out.append(
            f"- one `all` worker draining the big queue: {fmt(w.get('tasks_per_s'))} tasks/s over "
            f"{fmt(w.get('elapsed_s'))} s (noop drain of a small queue at 0 ms: {fmt(noop)} tasks/s)"
        )
    return out


def _scale_idle_lines(i: dict[str, Any]) -> list[str]:
    if not i:
        return []
    return [
        f"- {i.get('started')} idle `all` workers ({fmt(i.get('rss_mb_per_worker'))} MB RSS each): "
        f"{fmt(i.get('idle_redis_commands_per_s'))} commands/s executed by Redis in total; "
        f"{fmt(i.get('idle_worker_housekeeping_commands_per_s'))}/s heartbeat + reaper and "
        f"{fmt(i.get('idle_worker_beyond_heartbeat_commands_per_s'))}/s beyond them (worker counters)"
        + (
            f"; extrapolated to {i['requested']}: {fmt(i.get('extrapolated_beyond_heartbeat_commands_per_s'))}/s"
            if "extrapolated_beyond_heartbeat_commands_per_s" in i
            else ""
        )
    ]


def _scale_section(f: Figures, scale: dict[str, Any]) -> list[str]:
    if not scale:
        return []
    return [
        "## Scale",
        "",
        *_scale_claim_lines(f, scale.get("claim", {})),
        *_scale_idle_lines(scale.get("idle_workers", {})),
        "",
    ]


def _cluster_section(f: Figures) -> list[str]:
    """W workers on one Redis: aggregate throughput, its step from the previous W, Redis costs."""
    rows = sorted(((int(v.removeprefix("all-w")), v) for (w, v, _) in f.s if w == "cluster"), key=lambda r: r[0])
    if not rows:
        return []
    head = ["workers", "tasks/s", "× previous", "Redis µs/task", "Redis busy %", "Redis µs/line", "bytes/queued task",
            "submit lines/s"]  # fmt: skip
    out = ["## Cluster: workers on one Redis", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous: float | None = None
    for workers, variant in rows:
        s = f.s[("cluster", variant, 0.0)]
        tps = s.get("tasks_per_s", {}).get("median")
        step = ratio_x(tps / previous) if tps and previous else "–"
        metrics = ("redis_cpu_us_per_task", "redis_busy_pct", "redis_cpu_us_per_line", "redis_bytes_per_queued_task",
                   "submit_lines_per_s")  # fmt: skip
        out.append(
            "| "
            + " | ".join([str(workers), _cell(s.get("tasks_per_s")), step, *(_cell(s.get(m)) for m in metrics)])
            + " |"
        )
        previous = tps
    return [*out, ""]


def render_markdown(results: dict[str, Any], chart_name: str | None = "bench.png") -> str:
    f = Figures(results)
    out = _header(results.get("meta", {}))
    out += _proxy_section(f, results.get("proxy", {}))
    out += _claims_section(f)
    out += _targets_section(f, results)
    out += _drain_section(f)
    out += _pickup_section(f)
    out += _scale_section(f, results.get("scale", {}))
    out += _cluster_section(f)
    bad = [r for r in results.get("runs", []) if r.get("audit_ok") is False]
    out += [f"Audit after each drain run: {'all OK' if not bad else f'{len(bad)} run(s) FAILED the audit'}.", ""]
    if chart_name:
        out += [f"![bench chart]({chart_name})", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------- chart
def render_chart(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    f = Figures(results)
    panels = [
        ("noop", "tasks_per_s", "noop drain, tasks/s (log)", True),
        ("noop", "worker_roundtrips_per_task", "Redis round trips per task (log)", True),
        ("noop", "worker_cpu_us_per_task", "worker CPU µs per task", False),
        ("pickup", "pickup_p50_ms", "pickup p50, ms (log)", True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for ax, (workload, metric, title, log) in zip(axes.flat, panels, strict=True):
        variants = _variant_order(f, workload)
        lats = sorted({lat for (w, _, lat) in f.s if w == workload})
        width = 0.8 / max(1, len(lats))
        for i, lat in enumerate(lats):
            values = [f.med(workload, v, lat, metric) or 0.0 for v in variants]
            ax.bar([x + i * width for x in range(len(variants))], values, width, label=f"{lat:g} ms")
        ax.set_xticks([x + width * (len(lats) - 1) / 2 for x in range(len(variants))])
        ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if log and any(f.med(workload, v, lat, metric) for v in variants for lat in lats):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"distcomp bench — {results.get('meta', {}).get('date', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path | None]:
    chart: Path | None
    try:
        chart = render_chart(results, out_dir / "bench.png")
    except ImportError:  # matplotlib is the optional `bench` extra
        chart = None
    md = out_dir / "report.md"
    md.write_text(render_markdown(results, chart.name if chart else None))
    return md, chart
