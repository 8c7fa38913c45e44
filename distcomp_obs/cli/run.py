"""`distcomp run FILE`: flags -> Settings + RunOptions -> `distcomp_obs.localrun.run_local`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import _common, _worker_flags, settings_from
from distcomp_obs.errors import DistcompError

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="the main job on one machine: embedded Redis, submit, N workers, summary")
    _common(p, embedded_redis=True)
    _worker_flags(p)
    p.add_argument("file", help="the task file (- reads standard input; then name its state with --queue)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="local worker processes")
    p.add_argument(
        "--data-dir",
        default=".distcomp",
        metavar="DIR",
        help="where each task file's state (embedded Redis data, lock) is kept",
    )
    p.add_argument(
        "--queue",
        metavar="NAME",
        help="keep the state under this name instead of the task file's (several files share one queue)",
    )
    p.add_argument("--fresh", action="store_true", help="forget this file's previous run (its Redis data) first")
    p.add_argument(
        "--skip-invalid", action="store_true", help="report malformed lines and run the rest (default: refuse)"
    )
    try:
        p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    except argparse.ArgumentError:
        pass  # the shared flags define it already


def run_options(args: argparse.Namespace) -> tuple[str | None, str]:
    """The Redis to use (None: embedded) and the workers' metrics address, checked."""
    if args.workers < 1:
        raise DistcompError(f"--workers must be an integer >= 1, got {args.workers}")
    # Only --redis-url or DISTCOMP_REDIS_URL name an existing Redis: a redis_url in --config
    # does not, and the run brings its own embedded one.
    redis_url: str | None = args.redis_url or os.environ.get("DISTCOMP_REDIS_URL") or None
    if redis_url and args.queue:
        raise DistcompError("--queue names the embedded Redis state; with --redis-url use --prefix")
    return redis_url, args.metrics_addr


def cmd_run(args: argparse.Namespace) -> int:
    from distcomp_obs.localrun import WORKER_METRICS_ADDR, RunOptions, run_local

    redis_url, metrics_addr = run_options(args)
    settings = settings_from(args)
    opts = RunOptions(
        file=args.file,
        workers=args.workers,
        data_dir=args.data_dir,
        fresh=args.fresh,
        skip_invalid=args.skip_invalid,
        # the validated URL: with the password_file option when --redis-password-file is given
        redis_url=settings.redis_url if redis_url else None,
        # The workers get a free port each unless --metrics-addr says otherwise (a metrics_addr
        # from the config file or the environment is not used for them).
        worker_metrics_addr=metrics_addr or WORKER_METRICS_ADDR,
        queue=args.queue,
        json=bool(getattr(args, "json", False)),
    )
    return run_local(settings, opts)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"run": cmd_run}
