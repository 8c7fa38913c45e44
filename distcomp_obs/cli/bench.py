"""`distcomp exporter`, `distcomp bench` and `distcomp loadgen`: parsers and handlers.

Each handler imports its module only when called (the bench and the exporter are big).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import CONFIG_HELP, REDIS_URL_HELP, _common, open_queue, settings_from

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parsers(sub: Subparsers) -> None:
    _add_exporter(sub)
    _add_bench(sub)
    _add_loadgen(sub)


def _add_exporter(sub: Subparsers) -> None:
    p = sub.add_parser(
        "exporter", help="queue metrics from Redis at scrape time, and HTTP service discovery of the workers"
    )
    p.add_argument("--redis-url", help=REDIS_URL_HELP)
    p.add_argument(
        "--prefix",
        action="append",
        help="key prefix of a queue to watch; repeat or comma-separate for several (default distcomp:)",
    )
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics, /sd and /healthz (default 127.0.0.1:9711)")
    p.add_argument("--log-level")


def _add_bench(sub: Subparsers) -> None:
    from distcomp_obs.bench.runner import WORKLOADS
    from distcomp_obs.bench.workers import DEFAULT_VARIANTS

    p = sub.add_parser("bench", help="A/B benchmark of the optimizations through a latency proxy (docs/BENCHMARKS.md)")
    p.add_argument("--redis-url", help="benchmark against this Redis (default: a private embedded redis-server)")
    p.add_argument("--workloads", type=_names, default=list(WORKLOADS), help=f"comma list of {','.join(WORKLOADS)}")
    p.add_argument("--variants", type=_names, default=list(DEFAULT_VARIANTS), help="comma list (default: all six)")
    p.add_argument("--latency-ms", type=_floats, default=[0.0, 1.0, 5.0], help="injected round trips, e.g. 0,1,5")
    p.add_argument("--repeat", type=int, default=3, help="rounds of interleaved variants (default 3)")
    p.add_argument("--concurrency", type=int, default=2, help="slots per worker and bare-loop threads (default 2)")
    p.add_argument("--tasks", type=int, default=20000, help="noop tasks per drain run (default 20000)")
    p.add_argument("--shell-tasks", type=int, default=1000, help="shell tasks per drain run (default 1000)")
    p.add_argument("--window", type=float, default=5.0, help="longest drain measurement, seconds (default 5)")
    p.add_argument("--pickups", type=int, default=10, help="single submissions per pickup run (default 10)")
    p.add_argument("--pickup-spacing", type=float, default=0.2, help="seconds between them (default 0.2)")
    p.add_argument("--idle-window", type=float, default=20.0, help="idle-cost window, seconds (default 20)")
    p.add_argument("--pickup-repeat", type=int, help="rounds of the pickup workload (default: --repeat)")
    p.add_argument("--scale-queued", type=int, default=1_000_000, help="big queue for the scale run (default 1e6)")
    p.add_argument("--idle-workers", type=int, default=200, help="idle workers for the scale run (default 200)")
    p.add_argument("--scale-seconds", type=float, default=3.0, help="claim loop length per queue size (default 3)")
    p.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        help="skip the --no-metrics and direct (no proxy) control runs",
    )
    p.add_argument("--out", default="bench-results", help="directory for results.json, report.md, bench.png, logs")
    p.add_argument("--report-only", action="store_true", help="re-render report.md and the chart from results.json")


def _add_loadgen(sub: Subparsers) -> None:
    p = sub.add_parser("loadgen", help="submit a steady mixed stream of unique tasks (for dashboards)")
    _common(p)
    p.add_argument("--rate", type=float, default=50.0, help="tasks per second (default 50)")
    p.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM (default)")
    p.add_argument("--mix", help="shares, e.g. noop=70,sleep=20,fail=3,shell=7 (the default)")
    p.add_argument("--seed", type=int, help="random seed (lines stay unique per run anyway)")


def cmd_exporter(args: argparse.Namespace) -> int:
    import logging

    from distcomp_obs.exporter import DEFAULT_ADDR, Exporter, parse_prefixes

    # Settings validate the URL and read DISTCOMP_* from the environment; --prefix is a list here,
    # so it is kept out of them. The worker's metrics_addr default (port 0) is not the exporter's.
    prefixes, addr = args.prefix, args.metrics_addr
    settings = settings_from(argparse.Namespace(**{**vars(args), "prefix": None, "metrics_addr": None}))
    if args.log_level:
        logging.getLogger().setLevel(settings.log_level)
    exporter = Exporter(settings.redis_url, parse_prefixes(prefixes, settings.prefix), addr or DEFAULT_ADDR)
    return exporter.run()


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from distcomp_obs.bench.report import write_report
    from distcomp_obs.bench.runner import WORKLOADS, Bench, BenchOptions, command_line, install_sigterm, write_results
    from distcomp_obs.bench.workers import DEFAULT_VARIANTS

    out = Path(args.out)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        md, chart = write_report(results, out)
        print(f"wrote {md}" + (f" and {chart}" if chart else ""))
        return 0
    bad = [w for w in args.workloads if w not in WORKLOADS] + [v for v in args.variants if v not in DEFAULT_VARIANTS]
    if bad:
        print(f"distcomp bench: unknown workload/variant: {', '.join(bad)}", file=sys.stderr)
        return 2
    opts = BenchOptions(
        workloads=args.workloads,
        variants=args.variants,
        latencies_ms=args.latency_ms,
        repeat=args.repeat,
        concurrency=args.concurrency,
        noop_tasks=args.tasks,
        shell_tasks=args.shell_tasks,
        window_s=args.window,
        pickups=args.pickups,
        pickup_spacing_s=args.pickup_spacing,
        idle_window_s=args.idle_window,
        pickup_repeat=args.pickup_repeat,
        scale_queued=args.scale_queued,
        scale_idle_workers=args.idle_workers,
        scale_seconds=args.scale_seconds,
        overhead=args.overhead,
        redis_url=args.redis_url,
        out_dir=str(out),
        command=command_line(sys.argv[1:]),
    )
    install_sigterm()
    results = Bench(opts).run()
    path = write_results(results, out)
    md, chart = write_report(results, out)
    print(f"wrote {path}, {md}" + (f" and {chart}" if chart else " (no chart: pip install 'distcomp-obs[bench]')"))
    print(md.read_text())
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    from distcomp_obs.loadgen import loadgen_main

    q, _ = open_queue(args)
    return loadgen_main(q, args.rate, args.duration, args.mix, args.seed)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "exporter": cmd_exporter,
    "bench": cmd_bench,
    "loadgen": cmd_loadgen,
}
