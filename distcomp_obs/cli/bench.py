"""`distcomp exporter`, `distcomp bench` and `distcomp loadgen`: parsers and handlers.

Each handler imports its module only when called (the bench and the exporter are big).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import (
    CONFIG_HELP,
    REDIS_URL_HELP,
    _common,
    log_flags,
    open_queue,
    password_file_flag,
    setting_flag,
    settings_from,
)
from distcomp_obs.errors import DistcompError

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers

#: the bench's workloads and variants, named here so that `distcomp --help` does not import the bench
#: (tests/test_cli.py checks they equal bench.runner.WORKLOADS, DEFAULT_WORKLOADS and bench.workers.DEFAULT_VARIANTS)
BENCH_WORKLOADS = ("noop", "shell", "pickup", "scale", "cluster")
BENCH_DEFAULT_WORKLOADS = ("noop", "shell", "pickup", "scale")
BENCH_VARIANTS = ("baseline", "baseline-nosleep", "pipeline", "prefetch", "adaptive", "all")
#: the exporter's default listening address (exporter.DEFAULT_ADDR, checked by tests/test_cli.py)
EXPORTER_ADDR = "127.0.0.1:9711"


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers >= 0, got {text!r}")
    return values


def _counts(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers >= 1, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parsers(sub: Subparsers) -> None:
    _add_exporter(sub)
    _add_bench(sub)
    _add_loadgen(sub)


def _add_exporter(sub: Subparsers) -> None:
    text = "queue metrics from Redis at scrape time, and HTTP service discovery of the workers"
    p = sub.add_parser("exporter", help=text, description=f"Serve {text} (/metrics, /sd, /healthz).")
    setting_flag(p, "--redis-url", field="redis_url", metavar="URL", help=REDIS_URL_HELP)
    password_file_flag(p)
    p.add_argument(
        "--prefix",
        action="append",
        help="key prefix of a queue to watch; repeat or comma-separate for several (default: the prefix setting, "
        "distcomp: unless DISTCOMP_PREFIX or --config say otherwise)",
    )
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument(
        "--metrics-addr",
        default=EXPORTER_ADDR,
        metavar="HOST:PORT",
        help="where /metrics, /sd and "
        "/healthz listen (DISTCOMP_METRICS_ADDR and a config file's metrics_addr are the workers')",
    )
    log_flags(p)


def _add_bench(sub: Subparsers) -> None:
    text = "A/B benchmark of the optimizations through a latency proxy"
    p = sub.add_parser(
        "bench",
        help=f"{text} (docs/BENCHMARKS.md)",
        description=f"{text}: real worker processes, "
        "one variant at a time, interleaved and repeated. Method and results: docs/BENCHMARKS.md.",
    )
    p.add_argument(
        "--redis-url", metavar="URL", help="benchmark against this Redis (default: a private embedded redis-server)"
    )
    p.add_argument(
        "--workloads",
        type=_names,
        default=list(BENCH_DEFAULT_WORKLOADS),
        metavar="LIST",
        help=f"comma list of {','.join(BENCH_WORKLOADS)} (default: {','.join(BENCH_DEFAULT_WORKLOADS)}; "
        "cluster takes long)",
    )
    p.add_argument(
        "--variants",
        type=_names,
        default=list(BENCH_VARIANTS),
        metavar="LIST",
        help=f"comma list of {','.join(BENCH_VARIANTS)} (default: all)",
    )
    p.add_argument(
        "--latency-ms",
        type=_floats,
        default=[0.0, 1.0, 5.0],
        metavar="LIST",
        help="injected round-trip latencies in ms (default: 0,1,5)",
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds of interleaved variants")
    p.add_argument("--concurrency", type=int, default=2, help="slots per worker and bare-loop threads")
    p.add_argument("--tasks", type=int, default=20000, help="noop tasks per drain run")
    p.add_argument("--shell-tasks", type=int, default=1000, help="shell tasks per drain run")
    p.add_argument("--window", type=float, default=5.0, metavar="SECONDS", help="longest drain measurement")
    p.add_argument("--pickups", type=int, default=10, help="single submissions per pickup run")
    p.add_argument("--pickup-spacing", type=float, default=0.2, metavar="SECONDS", help="time between them")
    p.add_argument("--idle-window", type=float, default=20.0, metavar="SECONDS", help="idle-cost window")
    p.add_argument("--pickup-repeat", type=int, help="rounds of the pickup workload (default: --repeat)")
    p.add_argument("--scale-queued", type=int, default=1_000_000, help="tasks queued for the scale run")
    p.add_argument("--idle-workers", type=int, default=200, help="idle workers for the scale run")
    p.add_argument("--scale-seconds", type=float, default=3.0, metavar="SECONDS", help="claim loop per queue size")
    p.add_argument(
        "--cluster-workers",
        type=_counts,
        default=[1, 2, 4],
        metavar="LIST",
        help="worker counts of the cluster workload, all on one Redis (default: 1,2,4)",
    )
    p.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        help="skip the --no-metrics and direct (no proxy) control runs",
    )
    p.add_argument(
        "--out", default="bench-results", metavar="DIR", help="directory for results.json, report.md, bench.png, logs"
    )
    p.add_argument("--report-only", action="store_true", help="re-render report.md and the chart from results.json")
    log_flags(p)


def _add_loadgen(sub: Subparsers) -> None:
    text = "submit a steady mixed stream of unique tasks (for dashboards)"
    p = sub.add_parser("loadgen", help=text, description=f"{text[0].upper()}{text[1:]}, until --duration or SIGTERM.")
    _common(p)
    p.add_argument("--rate", type=float, default=0.3,
                   help="tasks per second (the default stays under one --baseline worker's capacity)")  # fmt: skip
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS", help="how long; 0 = until SIGTERM")
    p.add_argument("--mix", help="shares, e.g. noop=80,sleep=10,fail=10 (default: noop=90,sleep=10, nothing failing)")
    p.add_argument("--seed", type=int, help="random seed (lines stay unique per run anyway)")
    p.add_argument("--ramp-to", type=float, metavar="RATE",
                   help="raise the rate linearly to RATE (finds each variant's capacity)")  # fmt: skip
    p.add_argument("--ramp-seconds", type=float, default=0.0, metavar="SECONDS",
                   help="over this long (default: --duration)")  # fmt: skip
    log_flags(p)


def cmd_exporter(args: argparse.Namespace) -> int:
    from distcomp_obs.config import parse_prefixes
    from distcomp_obs.exporter import Exporter

    # Settings validate the URL and the address and read DISTCOMP_* from the environment; --prefix
    # is a list here, so it is kept out of them. --metrics-addr always has a value (the exporter's
    # default is not the workers' port 0), so DISTCOMP_METRICS_ADDR never moves the exporter.
    settings = settings_from(argparse.Namespace(**{**vars(args), "prefix": None}))
    exporter = Exporter(settings.redis_url, parse_prefixes(args.prefix, settings.prefix), settings.metrics_addr)
    return exporter.run()


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from distcomp_obs.bench.report import write_report
    from distcomp_obs.bench.runner import WORKLOADS, Bench, BenchOptions, command_line, install_sigterm, write_results
    from distcomp_obs.bench.workers import DEFAULT_VARIANTS

    out = Path(args.out)
    if args.report_only:
        path = out / "results.json"
        try:
            results = json.loads(path.read_text())
        except FileNotFoundError:
            raise DistcompError(f"no such file: {path} (run the bench first, or name its --out DIR)") from None
        except OSError as exc:
            raise DistcompError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise DistcompError(f"{path} is not a bench results file ({exc})") from None
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
        cluster_workers=args.cluster_workers,
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
    return loadgen_main(q, args.rate, args.duration, args.mix, args.seed, args.ramp_to, args.ramp_seconds)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "exporter": cmd_exporter,
    "bench": cmd_bench,
    "loadgen": cmd_loadgen,
}
