"""`distcomp`: thin subcommands: parse flags -> Settings -> library call -> exit status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from distcomp_obs import __version__
from distcomp_obs.audit import audit
from distcomp_obs.config import FIELDS, Settings, load_settings
from distcomp_obs.errors import DistcompError
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
from distcomp_obs.task import read_task_file

log = logging.getLogger("distcomp")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url", help="redis://[user:pass@]host:port/db, rediss://..., unix:///path (env DISTCOMP_REDIS_URL)"
    )
    p.add_argument("--prefix", help="key prefix of the queue (default distcomp:)")
    p.add_argument("--config", help="YAML settings file (DistComp's conf.json accepted)")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distcomp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"distcomp-obs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the main job on one machine: embedded Redis, submit, N workers, summary")
    _common(p)
    _worker_flags(p)
    p.add_argument("file")
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--data-dir", default=".distcomp", help="embedded Redis data (AOF) directory")
    p.add_argument("--fresh", action="store_true", help="forget this queue's previous tasks first")
    p.add_argument("--skip-invalid", action="store_true")

    p = sub.add_parser("submit", help="load a task file into the queue")
    _common(p)
    p.add_argument("file")
    p.add_argument("--skip-invalid", action="store_true", help="exit 0 even if some lines are malformed")

    p = sub.add_parser("worker", help="claim and run tasks")
    _common(p)
    _worker_flags(p)
    p.add_argument("--name", help="worker name, unique among live workers (default: host name)")

    p = sub.add_parser("status", help="tasks per state; lists; --check audits the records")
    _common(p)
    for state in ("todo", "in-progress", "finished", "failed"):
        p.add_argument(f"--{state}", action="store_true", help=f"list {state} tasks")
    p.add_argument("--include", help="only list tasks containing this text")
    p.add_argument("--exclude", help="do not list tasks containing this text")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="audit: nothing stranded or lost, one record per task")
    p.add_argument("--drained", action="store_true", help="with --check: also require nothing waiting or running")

    p = sub.add_parser("workers", help="registered workers: heartbeat age, resources, counts, flags")
    _common(p)
    p.add_argument("--json", action="store_true")

    for name, text in [
        ("retry-failed", "put failed-for-good tasks back in the queue"),
        ("purge-finished", "forget finished tasks"),
        ("stop-workers", "ask every worker to finish what it runs and exit"),
    ]:
        _common(sub.add_parser(name, help=text))

    p = sub.add_parser("requeue-dead", help="return the tasks of workers silent for --older-than seconds")
    _common(p)
    p.add_argument("--older-than", type=float, default=60.0)

    p = sub.add_parser("reset", help="delete this queue's keys (never FLUSHALL)")
    _common(p)
    p.add_argument("--yes", action="store_true", help="really delete")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser("check", help="validate a settings file and print the effective settings")
    c.add_argument("file")
    _worker_flags(c)

    from distcomp_obs import cli_extra

    cli_extra.add_commands(sub, _common, _worker_flags)
    return parser


def settings_from(args: argparse.Namespace, config_file: str | None = None) -> Settings:
    flags = {name: getattr(args, name) for name in FIELDS if name in vars(args)}
    if getattr(args, "name", None):
        flags["name"] = args.name
    return load_settings(
        config_file or getattr(args, "config", None), flags=flags, baseline=getattr(args, "baseline", False)
    )


def open_queue(args: argparse.Namespace) -> tuple[Queue, Settings]:
    settings = settings_from(args)
    return Queue(connect(settings.redis_url), settings.prefix), settings


def cmd_submit(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    tasks, errors = read_task_file(args.file)
    for err in errors:
        print(err, file=sys.stderr)
    q = Queue(connect(settings.redis_url), settings.prefix)
    from distcomp_obs import tracing

    tracing.setup("distcomp-submit")
    lines = [t.line for t in tasks]
    with tracing.send_span(q.keys.prefix, len(lines)) as context:
        added = q.submit(lines, trace=context)
    print(
        f"{args.file}: read {len(tasks) + len(errors)}, added {added}, skipped {len(tasks) - added} "
        f"(already known), invalid {len(errors)}"
    )
    return 1 if errors and not args.skip_invalid else 0


def cmd_worker(args: argparse.Namespace) -> int:
    from distcomp_obs import tracing
    from distcomp_obs.worker import Worker

    settings = settings_from(args)
    logging.getLogger().setLevel(settings.log_level)
    tracing.setup("distcomp-worker")
    return Worker(settings).run()


def _filter(tasks: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    return {
        t: v
        for t, v in tasks.items()
        if (not args.include or args.include in t) and (not args.exclude or args.exclude not in t)
    }


def cmd_status(args: argparse.Namespace) -> int:
    q, _ = open_queue(args)
    counts = q.counts()
    out: dict[str, Any] = {
        "counts": {k: counts[k] for k in ("todo", "in_progress", "finished", "failed")},
        "stats": q.stats(),
        "oldest_age_s": q.oldest_ages_s(),
    }
    lists = {
        s: _filter(q.list_state(s.replace("-", "_")), args)
        for s in ("todo", "in-progress", "finished", "failed")
        if getattr(args, s.replace("-", "_"))
    }
    report = audit(q, expect_done=args.drained) if args.check else None
    if args.json:
        out["lists"] = lists
        if report:
            out["audit"] = {"ok": report.ok, "problems": report.problems}
        print(json.dumps(out, indent=2))
    else:
        c = out["counts"]
        print(f"todo {c['todo']}  in progress {c['in_progress']}  finished {c['finished']}  failed {c['failed']}")
        for state, tasks in lists.items():
            print(f"\n{state} ({len(tasks)}):")
            for task, detail in sorted(tasks.items()):
                print(f"  {task}" + (f"\t{detail[:200]}" if state in ("failed", "in-progress") else ""))
        if report:
            print(report.summary())
    return 0 if report is None or report.ok else 1


def cmd_workers(args: argparse.Namespace) -> int:
    q, _ = open_queue(args)
    workers = q.workers()
    if args.json:
        print(json.dumps(workers, indent=2))
        return 0
    if not workers:
        print("no registered workers")
        return 0
    now = time.time()
    print(
        f"{'worker':20} {'state':6} {'hb age':>7} {'cores':>5} {'mem GB':>11} {'run':>4} {'buf':>4} {'done':>6} "
        f"{'failed':>6}  variant / metrics"
    )
    for name, w in workers.items():
        age = now - float(w.get("time", 0))
        mem = f"{w.get('mem_available_gb', '?')}/{w.get('mem_total_gb', '?')}"
        state = "live" if w["live"] else "DEAD"
        print(
            f"{name:20} {state:6} {age:6.1f}s {w.get('cores', '?'):>5} {mem:>11} {w.get('running', 0):>4} "
            f"{w.get('buffered', 0):>4} {w.get('finished', 0):>6} {w.get('failed', 0):>6}  "
            f"{w.get('variant', '?')} {w.get('metrics_url', '')}"
        )
    return 0


def cmd_simple(args: argparse.Namespace) -> int:
    q, _ = open_queue(args)
    if args.command == "retry-failed":
        print(f"requeued {q.retry_failed()} failed task(s)")
    elif args.command == "purge-finished":
        print(f"purged {q.purge_finished()} finished task(s)")
    elif args.command == "stop-workers":
        q.request_stop()
        print("asked every running worker to stop after its running tasks (workers started later run normally)")
    elif args.command == "requeue-dead":
        dead, returned = q.requeue_dead(args.older_than)
        print(f"workers treated as dead: {', '.join(dead) or 'none'}; returned {returned} task(s)")
    elif args.command == "reset":
        if not args.yes:
            print(f"this deletes every key of queue {q.keys.prefix!r}; run again with --yes", file=sys.stderr)
            return 2
        print(f"deleted {q.reset()} key(s) of queue {q.keys.prefix!r}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_from(args, config_file=args.file)
    print(json.dumps(settings.redacted(), indent=2))
    print(f"OK: variant {settings.variant_name}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("DISTCOMP_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    from distcomp_obs import cli_extra

    handlers = {
        "submit": cmd_submit,
        "worker": cmd_worker,
        "status": cmd_status,
        "workers": cmd_workers,
        "retry-failed": cmd_simple,
        "purge-finished": cmd_simple,
        "stop-workers": cmd_simple,
        "requeue-dead": cmd_simple,
        "reset": cmd_simple,
        "config": cmd_config_check,
        **cli_extra.HANDLERS,
    }
    try:
        return handlers[args.command](args)
    except DistcompError as exc:
        print(f"distcomp {args.command}: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"distcomp {args.command}: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
