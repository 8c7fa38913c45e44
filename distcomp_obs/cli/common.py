"""What every subcommand shares: the connection and worker flags, flags -> Settings, opening the queue.

Imported by the other `distcomp_obs.cli` modules; it imports none of them (no import circle).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from distcomp_obs.config import FIELDS, Settings, load_settings
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect

if TYPE_CHECKING:
    #: what `ArgumentParser.add_subparsers()` returns; each command module adds its parsers to it
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

REDIS_URL_HELP = "redis://[user:pass@]host:port/db, rediss://..., unix:///path (env DISTCOMP_REDIS_URL)"
CONFIG_HELP = "YAML settings file (DistComp's conf.json accepted)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help=REDIS_URL_HELP)
    p.add_argument("--prefix", help="key prefix of the queue (default distcomp:)")
    p.add_argument("--config", help=CONFIG_HELP)


def _worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, help="tasks run at once (default: CPU cores)")
    p.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="claim and report in batches, one atomic round trip each (default on)",
    )
    p.add_argument("--prefetch", type=int, help="claimed tasks buffered beyond the running ones (default 32)")
    p.add_argument("--polling", choices=["adaptive", "fixed"], help="adaptive (default) or fixed sleeps")
    p.add_argument("--poll-interval", type=float, dest="poll_interval_s", help="fixed polling interval, seconds")
    p.add_argument("--baseline", action="store_true", help="DistComp's behaviour: all optimizations off, 2 s polling")
    p.add_argument("--variant", help="variant name for metrics and `distcomp workers`")
    p.add_argument("--max-retry-per-task", type=int, dest="max_retry_per_task")
    p.add_argument("--min-free-dram-gb", type=float, dest="min_free_dram_gb")
    p.add_argument("--task-timeout", type=float, dest="task_timeout_s", help="kill tasks running longer (seconds)")
    p.add_argument("--grace-period", type=float, dest="grace_period_s", help="SIGTERM drain time (seconds)")
    p.add_argument("--heartbeat-interval", type=float, dest="heartbeat_interval_s")
    p.add_argument("--lease", type=float, dest="lease_s", help="seconds of silence after which a worker is dead")
    p.add_argument("--reap-interval", type=float, dest="reap_interval_s")
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics and /healthz (default 127.0.0.1:0 = free port)")
    p.add_argument("--no-metrics", dest="metrics", action="store_const", const=False, default=None)
    p.add_argument("--log-level")


def settings_from(args: argparse.Namespace, config_file: str | None = None) -> Settings:
    """Defaults < --baseline < config file < DISTCOMP_* environment < the flags given, validated."""
    flags = {name: getattr(args, name) for name in FIELDS if name in vars(args)}
    if getattr(args, "name", None):
        flags["name"] = args.name
    return load_settings(
        config_file or getattr(args, "config", None), flags=flags, baseline=getattr(args, "baseline", False)
    )


def open_queue(args: argparse.Namespace) -> tuple[Queue, Settings]:
    settings = settings_from(args)
    return Queue(connect(settings.redis_url), settings.prefix), settings
