"""`distcomp task ID`: one task's whole record (its id is its submit seq, shown by `status`)."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import _common, open_queue, print_json
from distcomp_obs.errors import NotFound

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers


def add_job_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("jobs", help="every job's progress", description="Every job (sweep): its tasks per state.")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p = sub.add_parser("job", help="one job's progress and failures", description="One job: progress and failures.")
    _common(p)
    p.add_argument("name", metavar="NAME", help="the job's name (submit --job; default the task file's name)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _progress(name: str, c: dict[str, int]) -> str:
    done = c["finished"] + c["failed"] + c["cancelled"]
    pct = 100.0 * done / c["submitted"] if c["submitted"] else 100.0
    return (f"{name}: {done}/{c['submitted']} done ({pct:.0f} %): {c['finished']} finished, {c['failed']} failed, "
            f"{c['cancelled']} cancelled, {c['todo']} waiting, {c['in_progress']} claimed by workers")  # fmt: skip


def cmd_jobs(args: argparse.Namespace) -> int:
    from distcomp_obs.queue import views

    q, _ = open_queue(args)
    jobs = views.jobs(q)
    if args.json:
        print_json(jobs)
    for name, counts in sorted(jobs.items()) if not args.json else ():
        print(_progress(name, counts))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from distcomp_obs.queue import views
    from distcomp_obs.runprogress import format_duration

    q, _ = open_queue(args)
    counts = views.job(q, args.name)
    if counts is None:
        raise NotFound(f"no job {args.name!r} in queue {q.keys.prefix!r}")
    failed = q.list_state("failed") if counts["failed"] else {}
    jobs = views.jobs_of(q, list(failed))
    failures = {t: r for t, r in failed.items() if jobs.get(t) == args.name}
    eta = views.job_eta(q, args.name, counts)  # remaining, rate_per_s, eta_s (None: unknown)
    if args.json:
        print_json({"job": args.name, **counts, **(eta or {}), "failures": failures})
        return 0
    when = "unknown" if eta is None or eta["eta_s"] is None else format_duration(eta["eta_s"])
    print(_progress(args.name, counts) + f", ETA {when}")
    for task, reason in sorted(failures.items()):
        print(f"  FAILED {task}\n         {reason.splitlines()[0] if reason else ''}")
    return 0


RETRY_DELETE = {
    "retry": "run failed or cancelled tasks again (they are submitted anew, with a new id)",
    "delete": "forget done tasks: finished, failed or cancelled (their lines may be submitted again)",
}


def add_parsers(sub: Subparsers) -> None:
    add_task_parser(sub)
    add_cancel_parser(sub)
    add_job_parsers(sub)
    for name, text in RETRY_DELETE.items():
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        _common(p)
        p.add_argument("refs", nargs="+", metavar="ID", help="task ids (submit numbers) or lines")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def add_task_parser(sub: Subparsers) -> None:
    text = "one task's whole record: state, attempts, output"
    p = sub.add_parser("task", help=text, description=f"Show {text} (by its id or its line).")
    _common(p)
    p.add_argument("ref", metavar="ID", help="the task's id (its submit number) or its line")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _when(ms: object) -> str:
    if not isinstance(ms, int | float):
        return "?"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")


def cmd_task(args: argparse.Namespace) -> int:
    from distcomp_obs.queue.views import task_view

    q, _ = open_queue(args)
    view = task_view(q, args.ref)
    if view is None:
        raise NotFound(f"no task with id or line {args.ref!r} in queue {q.keys.prefix!r}")
    if args.json:
        print_json(view.as_json())
        return 0
    submitted = _when(view.submitted_s * 1000) if view.submitted_s else "?"
    print(f"task {view.id}: {view.line}")
    print(f"state {view.state}  priority {view.priority}  submitted {submitted}")
    if view.worker:
        print(f"held by {view.worker} ({'running' if view.started else 'buffered or starting'})")
    for n, attempt in enumerate(view.attempts, start=1):
        print(f"attempt {n}: worker {attempt.get('worker', '?')}, ended {_when(attempt.get('ended_ms'))}, "
              f"{attempt.get('ms', '?')} ms, exit {attempt.get('exit', '-')}"
              + (f": {attempt['reason']}" if attempt.get("reason") else ""))  # fmt: skip
        for stream in ("stdout", "stderr"):
            if attempt.get(stream):
                print(f"  {stream} tail: {attempt[stream]}")
    if view.state == "cancelled" and view.reason:
        print(f"cancelled: {view.reason}")
    if view.stdout and view.state == "finished":
        print("output:")
        print(view.stdout, end="" if view.stdout.endswith("\n") else "\n")
    return 0


def add_cancel_parser(sub: Subparsers) -> None:
    text = "cancel tasks by id or line: waiting ones leave the queue, running ones are stopped; both recorded cancelled"
    p = sub.add_parser("cancel", help=text, description=f"{text[0].upper()}{text[1:]}.")
    _common(p)
    p.add_argument("refs", nargs="*", metavar="ID", help="task ids (submit numbers) or lines")
    p.add_argument("--job", metavar="NAME", help="also every waiting or claimed task of this job")
    p.add_argument("--state", choices=("todo", "in_progress"), action="append", default=[],
                   help="also every task in this state (todo: waiting; in_progress: claimed by a worker)")  # fmt: skip
    p.add_argument("--include", default="", metavar="TEXT",
                   help="with --job/--state: only tasks whose line holds TEXT")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def cmd_cancel(args: argparse.Namespace) -> int:
    """Exit 0 when every task named was cancelled now or before; 1 when one could not be (done,
    running, unknown), each said on its own line."""
    from distcomp_obs.queue.views import LIVE_STATES, live_tasks, resolve

    q, _ = open_queue(args)
    if not args.refs and not args.job and not args.state:
        raise NotFound("name the tasks to cancel (ids or lines), or --job NAME, or --state STATE")
    lines = {ref: resolve(q, ref) for ref in args.refs}
    if args.job or args.state:
        lines.update({t: t for t in live_tasks(q, args.state or LIVE_STATES, args.job, args.include)})
    known = [line for line in lines.values() if line is not None]
    words = dict(zip(known, q.cancel(known, who="distcomp cancel"), strict=True))
    result = {ref: (words[line] if line is not None else "unknown") for ref, line in lines.items()}
    if args.json:
        print_json(result)
    else:
        for ref, word in result.items():
            print(f"{ref}: {CANCEL_WORDS.get(word, word)}")
    return 0 if all(w in ("cancelled", "already_cancelled", "stopping") for w in result.values()) else 1


CANCEL_WORDS = {
    "cancelled": "cancelled",
    "already_cancelled": "was already cancelled",
    "finished": "already finished: nothing changed",
    "failed": "already failed: nothing changed",
    "stopping": "claimed by a worker: it stops it and records it cancelled",
    "unknown": "no such task",
}


def cmd_retry_or_delete(args: argparse.Namespace) -> int:
    """Per task: what happened, or why nothing did. Exit 1 when one task could not be acted on."""
    from distcomp_obs.queue import manager
    from distcomp_obs.queue.views import task_view

    q, _ = open_queue(args)
    allowed = ("failed", "cancelled") if args.command == "retry" else ("finished", "failed", "cancelled")
    result: dict[str, str] = {}
    for ref in args.refs:
        view = task_view(q, ref)
        if view is None:
            result[ref] = "no such task"
        elif view.state not in allowed:
            result[ref] = f"{view.state.replace('_', ' ')}: nothing changed"
        elif args.command == "retry" and manager.retry(q, view.state, [view.line]):  # back into its job
            result[ref] = f"queued again as task {q.ids([view.line]).get(view.line, '?')}"
        elif args.command == "delete" and q.forget(view.state, [view.line]):
            result[ref] = "deleted"
        else:
            result[ref] = "changed meanwhile: nothing done"
    if args.json:
        print_json(result)
    else:
        for ref, what in result.items():
            print(f"{ref}: {what}")
    done = ("queued again", "deleted")
    return 0 if all(what.startswith(done) for what in result.values()) else 1


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "task": cmd_task,
    "cancel": cmd_cancel,
    "retry": cmd_retry_or_delete,
    "jobs": cmd_jobs,
    "job": cmd_job,
    "delete": cmd_retry_or_delete,
}
