"""`distcomp console`: the web console of one queue (library side: distcomp_obs.console)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from distcomp_obs.cli.common import _common, log_flags, open_queue

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers

#: the console's default listening address (console.server.DEFAULT_ADDR)
CONSOLE_ADDR = "127.0.0.1:9712"


def add_parsers(sub: Subparsers) -> None:
    text = "a web console: live counts, throughput, workers, problems, task search, retry and delete"
    p = sub.add_parser("console", help=text, description=f"Serve {text} (docs/CONSOLE.md).")
    _common(p)
    p.add_argument("--addr", default=CONSOLE_ADDR, metavar="HOST:PORT", help="where the console listens")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="first line: the token actions need (env DISTCOMP_CONSOLE_TOKEN); without one the console is read-only",
    )
    p.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="the path prefix a reverse proxy serves the console under, e.g. /console "
        "(a proxy may send X-Forwarded-Prefix instead)",
    )
    log_flags(p)


def cmd_console(args: argparse.Namespace) -> int:
    from distcomp_obs.console.auth import load_token
    from distcomp_obs.console.server import serve

    token = load_token(args.token_file)
    q, settings = open_queue(args)
    q.counts()  # an unreachable Redis is one line now, not a page error later
    serve(q, args.addr, token, args.root_path, settings.log_level)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"console": cmd_console}
