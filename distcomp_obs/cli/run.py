"""`distcomp run FILE`: flags -> Settings + RunOptions -> `distcomp_obs.localrun.run_local`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import _common, _worker_flags, settings_from

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="the main job on one machine: embedded Redis, submit, N workers, summary")
    _common(p)
    _worker_flags(p)
    p.add_argument("file")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--data-dir", default=".distcomp", help="embedded Redis data (AOF) directory")
    p.add_argument("--fresh", action="store_true", help="forget this queue's previous tasks first")
    p.add_argument("--skip-invalid", action="store_true")


def cmd_run(args: argparse.Namespace) -> int:
    from distcomp_obs.localrun import WORKER_METRICS_ADDR, RunOptions, run_local

    settings = settings_from(args)
    opts = RunOptions(
        file=args.file,
        workers=args.workers,
        data_dir=args.data_dir,
        fresh=args.fresh,
        skip_invalid=args.skip_invalid,
        # Only --redis-url or DISTCOMP_REDIS_URL name an existing Redis: a redis_url in --config
        # does not, and the run brings its own embedded one.
        redis_url=args.redis_url or os.environ.get("DISTCOMP_REDIS_URL") or None,
        # The workers get a free port each unless --metrics-addr says otherwise (a metrics_addr
        # from the config file or the environment is not used for them).
        worker_metrics_addr=args.metrics_addr or WORKER_METRICS_ADDR,
    )
    return run_local(settings, opts)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"run": cmd_run}
