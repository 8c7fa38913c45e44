"""`distcomp task ID`: one task's whole record (its id is its submit seq, shown by `status`)."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import _common, open_queue, print_json
from distcomp_obs.errors import DistcompError

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers


class UnknownTask(DistcompError):
    """No known task has this id or line."""


def add_parsers(sub: Subparsers) -> None:
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
        raise UnknownTask(f"no task with id or line {args.ref!r} in queue {q.keys.prefix!r}")
    if args.json:
        print_json(view.as_json())
        return 0
    submitted = _when(view.submitted_s * 1000) if view.submitted_s else "?"
    print(f"task {view.id}: {view.line}")
    print(f"state {view.state}  priority {view.priority}  submitted {submitted}")
    if view.worker:
        print(f"held by {view.worker} ({'running' if view.started else 'buffered or starting'})")
    for n, attempt in enumerate(view.attempts, start=1):
        ended = attempt.get("at", 0) - attempt.get("ago_ms", 0) if isinstance(attempt.get("at"), int) else None
        print(f"attempt {n}: worker {attempt.get('worker', '?')}, ended {_when(ended)}, "
              f"{attempt.get('ms', '?')} ms, exit {attempt.get('exit', '-')}"
              + (f": {attempt['reason']}" if attempt.get("reason") else ""))  # fmt: skip
        for stream in ("stdout", "stderr"):
            if attempt.get(stream):
                print(f"  {stream} tail: {attempt[stream]}")
    if view.output and view.state == "finished":
        print("output:")
        print(view.output, end="" if view.output.endswith("\n") else "\n")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"task": cmd_task}
