"""The queue's own subcommands: submit, worker, status, workers, the manager commands, config check.

The queue, the audit and Redis are imported inside the handlers, so `distcomp --help` loads none of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distcomp_obs.cli.common import (
    REDIS_URL_HELP,
    _common,
    _worker_flags,
    open_queue,
    password_file_flag,
    print_json,
    setting_flag,
    settings_from,
)
from distcomp_obs.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers
    from distcomp_obs.queue import Queue

STATES = ("todo", "in-progress", "finished", "failed")
#: characters of a finished task's output or a failure's reason shown per task in text mode
BRIEF_CHARS = 200
JSON_HELP = "print one JSON object instead of text"


def brief(text: str, limit: int = BRIEF_CHARS) -> str:
    """A task's output or failure reason on one line: its non-blank lines joined by " | ", cut at `limit`."""
    joined = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[:limit] + "…"


def add_parsers(sub: Subparsers) -> None:
    _add_submit_worker(sub)
    _add_status_workers(sub)
    _add_manager(sub)
    p = sub.add_parser("config", help="configuration tools", description="Configuration tools.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser(
        "check",
        help="validate a settings file and print the effective settings",
        description="Validate a settings file and print the effective settings (file < DISTCOMP_* < flags) "
        "as JSON, the password redacted. Exit 2 with the field named if a value is invalid.",
    )
    c.add_argument("file", metavar="FILE", help="YAML settings file (DistComp's conf.json accepted)")
    setting_flag(c, "--redis-url", field="redis_url", metavar="URL", help=REDIS_URL_HELP)
    password_file_flag(c)
    setting_flag(c, "--prefix", field="prefix", help="key prefix of the queue")
    _worker_flags(c)
    setting_flag(c, "--name", field="name", help="worker name")


def _add_submit_worker(sub: Subparsers) -> None:
    text = "load a task file into the queue"
    p = sub.add_parser(
        "submit",
        help=text,
        description=f"{text[0].upper()}{text[1:]}: one task per line, "
        "type:priority:min_dram_gb:min_cpu:params. A line already in the queue is not added again.",
    )
    _common(p)
    p.add_argument("file", metavar="FILE", help="task file, one task line per line; - reads standard input")
    p.add_argument("--skip-invalid", action="store_true", help="exit 0 even if some lines are malformed")
    p.add_argument("--job", metavar="NAME", help="the job (sweep) these tasks belong to (default: the file's name)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    text = "claim and run tasks until stopped (SIGTERM or Ctrl-C drains, a second signal returns everything)"
    p = sub.add_parser("worker", help="claim and run tasks", description=f"{text[0].upper()}{text[1:]}.")
    _common(p)
    _worker_flags(p)
    setting_flag(p, "--name", field="name", help="worker name, unique among live workers")


def _add_status_workers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "status",
        help="tasks per state; lists; --check audits the records",
        description="Tasks per state. --todo/--in-progress/--finished/--failed list them (a finished "
        "task with the start of its output, a failed one with its reason); --check audits.",
    )
    _common(p)
    for state in STATES:
        detail = {"in-progress": " and their worker", "finished": " and their output", "failed": " and the reasons"}
        p.add_argument(f"--{state}", action="store_true", help=f"list {state} tasks{detail.get(state, '')}")
    p.add_argument("--include", metavar="TEXT", help="only list tasks containing this text")
    p.add_argument("--exclude", metavar="TEXT", help="do not list tasks containing this text")
    p.add_argument("--json", action="store_true", help=f"{JSON_HELP} (lists with full output and reasons)")
    p.add_argument("--check", action="store_true", help="audit: nothing stranded or lost, one record per task")
    p.add_argument("--drained", action="store_true", help="with --check: also require nothing waiting or running")

    text = "registered workers: heartbeat age, resources, counts, flags"
    p = sub.add_parser("workers", help=text, description=f"Registered workers, live and dead: {text.split(': ')[1]}.")
    _common(p)
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _add_manager(sub: Subparsers) -> None:
    for name, text in [
        ("retry-failed", "put failed-for-good tasks back in the queue, with a clean failure history"),
        ("purge-finished", "forget finished tasks (their lines can be submitted again)"),
        ("stop-workers", "ask every running worker to finish what it runs and exit"),
    ]:
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        _common(p)
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        if name != "stop-workers":
            p.add_argument("--include", default="", metavar="TEXT",
                           help="only tasks whose line or output/reason holds TEXT")  # fmt: skip
        if name == "retry-failed":
            p.add_argument("--job", metavar="NAME", help="only this job's failed tasks (resubmitted to it)")
        if name == "stop-workers":
            p.add_argument("--name", action="append", default=[], metavar="WORKER", dest="names",
                           help="only this worker (repeat for several; `distcomp workers` lists them)")  # fmt: skip

    text = "return the tasks of workers silent for --older-than seconds"
    p = sub.add_parser(
        "requeue-dead",
        help=text,
        description=f"{text[0].upper()}{text[1:]} now (the reaper does it anyway once a worker's lease expires).",
    )
    _common(p)
    p.add_argument("--older-than", type=float, default=60.0, metavar="SECONDS", help="silence that counts as dead")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    text = "delete this queue's keys (never FLUSHALL)"
    p = sub.add_parser(
        "reset",
        help=text,
        description="Delete every key of this queue (its prefix) and nothing "
        "else. On a terminal it asks you to type the prefix; otherwise it needs --yes.",
    )
    _common(p)
    p.add_argument("--yes", action="store_true", help="delete without asking")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def job_name(given: str | None, file: str) -> str:
    """The job of a submit: --job, or the task file's name ("stdin" for -); no spaces, at most 100."""
    import os

    name = given if given is not None else ("stdin" if file == "-" else os.path.basename(file))
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise ConfigError("job", name, "a name of 1 to 100 characters without spaces")
    return name


def cmd_submit(args: argparse.Namespace) -> int:
    from distcomp_obs import tracing
    from distcomp_obs.queue import Queue
    from distcomp_obs.redis_io import connect
    from distcomp_obs.task import load_task_file

    settings = settings_from(args)
    loaded = load_task_file(args.file)  # a directory, binary or unreadable file: one line, exit 2
    for line in loaded.error_lines():
        print(line, file=sys.stderr)
    q = Queue(connect(settings.redis_url), settings.prefix)
    tracing.setup("distcomp-submit")
    lines = [t.line for t in loaded.tasks]
    with tracing.send_span(q.keys.prefix, len(lines)) as context:
        added = q.submit(lines, trace=context, job=job_name(args.job, args.file))
    name = "<stdin>" if args.file == "-" else args.file
    counts = {
        "read": len(lines) + loaded.duplicates + loaded.error_count,
        "added": added,
        "already_known": len(lines) - added,
        "duplicates": loaded.duplicates,
        "invalid": loaded.error_count,
    }
    if args.json:
        print_json({"file": name, **counts, "errors": loaded.error_lines()})
    else:
        print(
            f"{name}: read {counts['read']}, added {added}, skipped {counts['already_known']} (already known), "
            f"duplicates {loaded.duplicates} (repeated lines), invalid {loaded.error_count}"
        )
    return 1 if loaded.error_count and not args.skip_invalid else 0


def cmd_worker(args: argparse.Namespace) -> int:
    from distcomp_obs import tracing
    from distcomp_obs.worker import Worker

    settings = settings_from(args)
    tracing.setup("distcomp-worker")
    return Worker(settings).run()


def _filter(tasks: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    return {
        t: v
        for t, v in tasks.items()
        if (not args.include or args.include in t) and (not args.exclude or args.exclude not in t)
    }


def cmd_status(args: argparse.Namespace) -> int:
    from distcomp_obs.audit import audit
    from distcomp_obs.records import unrunnable

    q, _ = open_queue(args)
    counts = q.counts()
    out: dict[str, Any] = {
        "counts": {k: counts[k] for k in ("todo", "in_progress", "finished", "failed", "cancelled")},
        "stats": q.stats(),
        "oldest_age_s": q.oldest_ages_s(),
    }
    lists = {s: _filter(q.list_state(s.replace("-", "_")), args) for s in STATES if getattr(args, s.replace("-", "_"))}
    ids = q.ids([task for tasks in lists.values() for task in tasks])
    report = audit(q, expect_done=args.drained) if args.check else None
    cannot = unrunnable(q.waiting_classes(), q.workers()) if counts["todo"] else {}
    if args.json:
        out["lists"] = lists
        out["ids"] = ids  # task -> its id (`distcomp task ID`)
        out["unrunnable"] = {cls: {"tasks": n, "why": why} for cls, (n, why) in cannot.items()}
        if report:
            out["audit"] = {"ok": report.ok, "problems": report.problems}
        print_json(out)
    else:
        _print_status(out["counts"], lists, cannot, ids)
        if report:
            print(report.summary())
    return 0 if report is None or report.ok else 1


def _print_status(c: dict[str, int], lists: dict[str, dict[str, str]], cannot: dict[str, tuple[int, str]],
                  ids: dict[str, str]) -> None:  # fmt: skip
    from distcomp_obs.records import resource_class

    print(f"todo {c['todo']}  in progress {c['in_progress']}  finished {c['finished']}  failed {c['failed']}"
          + (f"  cancelled {c['cancelled']}" if c["cancelled"] else ""))  # fmt: skip
    if cannot:
        n = sum(count for count, _ in cannot.values())
        print(f"{n} waiting task(s) no live worker can take (listed with their reason by --todo)")
    for state, tasks in lists.items():
        print(f"\n{state} ({len(tasks)}):")
        for task, detail in sorted(tasks.items()):
            tag = f"{ids.get(task, '?'):>6}  "  # the id `distcomp task ID` takes
            if state == "todo":
                why = cannot.get(resource_class(task))
                print(f"  {tag}{task}" + (f"\tcannot run on any live worker: {why[1]}" if why else ""))
            else:
                print(f"  {tag}{task}\t{brief(detail)}")


def cmd_workers(args: argparse.Namespace) -> int:
    q, _ = open_queue(args)
    workers = q.workers()
    if args.json:
        print_json(workers)
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


def _manage(args: argparse.Namespace, q: Queue) -> tuple[dict[str, Any], str]:
    """Run one manager command: (its JSON object, its text line)."""
    from distcomp_obs.queue import manager

    if args.command == "retry-failed":
        n = manager.retry_failed(q, args.include, args.job)
        return {"requeued": n}, f"requeued {n} failed task(s)"
    if args.command == "purge-finished":
        n = manager.purge_finished(q, args.include)
        return {"purged": n}, f"purged {n} finished task(s)"
    if args.command == "stop-workers":
        unknown = manager.request_stop(q, args.names)
        if unknown:
            raise NotFound(f"no registered worker named {', '.join(unknown)} (see `distcomp workers`); nothing asked")
        if args.names:
            names = ", ".join(args.names)
            return {"stop_requested": args.names}, f"asked {names} to stop after its running tasks"
        text = "asked every running worker to stop after its running tasks (workers started later run normally)"
        return {"stop_requested": True}, text
    dead, returned = manager.requeue_dead(q, args.older_than)
    return {"dead": dead, "returned": returned}, f"workers treated as dead: {', '.join(dead) or 'none'}; " + (
        f"returned {returned} task(s)"
    )


def cmd_manage(args: argparse.Namespace) -> int:
    if args.command == "requeue-dead" and not args.older_than >= 0:
        raise ConfigError("older-than", args.older_than, "seconds >= 0")
    q, _ = open_queue(args)
    data, text = _manage(args, q)
    if args.json:
        print_json(data)
    else:
        print(text)
    return 0


def _confirmed(prefix: str) -> bool:
    """Ask on the terminal for the prefix to be typed (the question goes to stderr: stdout stays JSON)."""
    print(
        f"this deletes every key of queue {prefix!r}; type the prefix to confirm: ", end="", file=sys.stderr, flush=True
    )
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    return answer.strip() == prefix


def cmd_reset(args: argparse.Namespace) -> int:
    from distcomp_obs.queue import manager

    q, _ = open_queue(args)
    prefix = q.keys.prefix
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"distcomp reset: this deletes every key of queue {prefix!r}; run again with --yes", file=sys.stderr)
            return 2
        if not _confirmed(prefix):
            print(f"distcomp reset: not confirmed; nothing deleted from queue {prefix!r}", file=sys.stderr)
            return 1
    deleted = manager.reset(q)
    if args.json:
        print_json({"prefix": prefix, "deleted": deleted})
    else:
        print(f"deleted {deleted} key(s) of queue {prefix!r}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_from(args, config_file=args.file)
    print_json(settings.redacted())
    print(f"OK: variant {settings.variant_name}", file=sys.stderr)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "worker": cmd_worker,
    "status": cmd_status,
    "workers": cmd_workers,
    "retry-failed": cmd_manage,
    "purge-finished": cmd_manage,
    "stop-workers": cmd_manage,
    "requeue-dead": cmd_manage,
    "reset": cmd_reset,
    "config": cmd_config_check,
}
