"""`distcomp`: thin subcommands: parse flags -> Settings -> library call -> exit status."""

# The package's modules, none of which imports this one (nor does anything outside the CLI):
#   common.py          connection and worker flags, flags -> Settings, open_queue
#   run.py             `run` (the library side is distcomp_obs.localrun)
#   queue_commands.py  submit, worker, status, workers, the manager commands, config check
#   bench.py           exporter, bench, loadgen
# Heavy modules (worker, exporter, bench, localrun) are imported inside the handlers.

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial

from distcomp_obs import __version__
from distcomp_obs.cli import bench, queue_commands, run
from distcomp_obs.errors import run_command

__all__ = ["HANDLERS", "build_parser", "main"]

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    **run.HANDLERS,
    **queue_commands.HANDLERS,
    **bench.HANDLERS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distcomp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"distcomp-obs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parsers(sub)
    queue_commands.add_parsers(sub)
    bench.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("DISTCOMP_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    return run_command(args.command, partial(HANDLERS[args.command], args))
