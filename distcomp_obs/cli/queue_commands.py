"""The queue's own subcommands: submit, worker, status, workers, the manager commands, config check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distcomp_obs.audit import audit
from distcomp_obs.cli.common import _common, _worker_flags, open_queue, settings_from
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.task import read_task_file

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers

STATES = ("todo", "in-progress", "finished", "failed")


def add_parsers(sub: Subparsers) -> None:
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
    for state in STATES:
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
    lists = {s: _filter(q.list_state(s.replace("-", "_")), args) for s in STATES if getattr(args, s.replace("-", "_"))}
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
        print(f"requeued {manager.retry_failed(q)} failed task(s)")
    elif args.command == "purge-finished":
        print(f"purged {manager.purge_finished(q)} finished task(s)")
    elif args.command == "stop-workers":
        manager.request_stop(q)
        print("asked every running worker to stop after its running tasks (workers started later run normally)")
    elif args.command == "requeue-dead":
        dead, returned = manager.requeue_dead(q, args.older_than)
        print(f"workers treated as dead: {', '.join(dead) or 'none'}; returned {returned} task(s)")
    elif args.command == "reset":
        if not args.yes:
            print(f"this deletes every key of queue {q.keys.prefix!r}; run again with --yes", file=sys.stderr)
            return 2
        print(f"deleted {manager.reset(q)} key(s) of queue {q.keys.prefix!r}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_from(args, config_file=args.file)
    print(json.dumps(settings.redacted(), indent=2))
    print(f"OK: variant {settings.variant_name}", file=sys.stderr)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
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
}
