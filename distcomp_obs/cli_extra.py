"""The bigger subcommands (run, exporter, bench, loadgen), kept out of cli.py; each imports its
module only when called."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(
    sub: Any, common: Callable[[argparse.ArgumentParser], None], worker_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    del worker_flags  # `run` is built in cli.py; the others add their parsers here
    p = sub.add_parser(
        "exporter", help="queue metrics from Redis at scrape time, and HTTP service discovery of the workers"
    )
    p.add_argument(
        "--redis-url", help="redis://[user:pass@]host:port/db, rediss://..., unix:///path (env DISTCOMP_REDIS_URL)"
    )
    p.add_argument(
        "--prefix",
        action="append",
        help="key prefix of a queue to watch; repeat or comma-separate for several (default distcomp:)",
    )
    p.add_argument("--config", help="YAML settings file (DistComp's conf.json accepted)")
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics, /sd and /healthz (default 127.0.0.1:9711)")
    p.add_argument("--log-level")
    from distcomp_obs.bench import cli as bench_cli

    bench_cli.add_commands(sub, common)


def _run(args: argparse.Namespace) -> int:
    from distcomp_obs.localrun import run_main

    return run_main(args)


def _exporter(args: argparse.Namespace) -> int:
    import logging

    from distcomp_obs.cli import settings_from
    from distcomp_obs.exporter import DEFAULT_ADDR, Exporter, parse_prefixes

    # Settings validate the URL and read DISTCOMP_* from the environment; --prefix is a list here,
    # so it is kept out of them. The worker's metrics_addr default (port 0) is not the exporter's.
    prefixes, addr = args.prefix, args.metrics_addr
    settings = settings_from(argparse.Namespace(**{**vars(args), "prefix": None, "metrics_addr": None}))
    if args.log_level:
        logging.getLogger().setLevel(settings.log_level)
    exporter = Exporter(settings.redis_url, parse_prefixes(prefixes, settings.prefix), addr or DEFAULT_ADDR)
    return exporter.run()


def _bench(args: argparse.Namespace) -> int:
    from distcomp_obs.bench.cli import bench

    return bench(args)


def _loadgen(args: argparse.Namespace) -> int:
    from distcomp_obs.bench.cli import loadgen

    return loadgen(args)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "exporter": _exporter,
    "bench": _bench,
    "loadgen": _loadgen,
}
