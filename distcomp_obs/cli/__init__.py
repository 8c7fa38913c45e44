"""The `distcomp` command: builds the parser from the command modules and dispatches to their handlers.

The package's modules, none of which imports this one (nor does anything outside the CLI):
  common.py          the parser class, connection/worker/log flags, flags -> Settings, open_queue
  run.py             `run` (the library side is distcomp_obs.localrun)
  queue_commands.py  submit, worker, status, workers, the manager commands, config check
  bench.py           exporter, bench, loadgen
  console.py         console (the library side is distcomp_obs.console)
Building the parser imports nothing heavy (redis, yaml, prometheus_client, opentelemetry, psutil,
the queue, worker, exporter, bench): the handlers import them, so `distcomp --help` stays fast
(tests/test_cli.py checks which modules it loads).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial

from distcomp_obs import __version__
from distcomp_obs.cli import bench, console, queue_commands, run, slurm, task_commands
from distcomp_obs.cli.common import DistcompParser, early_log_settings
from distcomp_obs.errors import run_command

__all__ = ["HANDLERS", "build_parser", "main"]

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    **run.HANDLERS,
    **queue_commands.HANDLERS,
    **bench.HANDLERS,
    **task_commands.HANDLERS,
    **console.HANDLERS,
    **slurm.HANDLERS,
}

DESCRIPTION = """\
Run shell, python and builtin tasks from task files on any number of machines through one Redis,
measured with Prometheus metrics and OpenTelemetry traces. A task is one line:
type:priority:min_dram_gb:min_cpu:params (e.g. shell:1:0:0:echo hello).

Start here:  distcomp run tasks.txt    (embedded Redis, two local workers, progress, summary)"""

EPILOG = """\
Run 'distcomp COMMAND --help' for a command's flags and their defaults. Settings come from
--config FILE, then DISTCOMP_* environment variables, then flags (later wins). Documentation:
README.md and docs/ in the project's repository."""


def build_parser() -> argparse.ArgumentParser:
    parser = DistcompParser(
        prog="distcomp",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the commands' parsers: cli.common.HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distcomp-obs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    run.add_parsers(sub)
    queue_commands.add_parsers(sub)
    bench.add_parsers(sub)
    task_commands.add_parsers(sub)
    console.add_parsers(sub)
    slurm.add_parsers(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    from distcomp_obs.config import warn_unknown_env
    from distcomp_obs.logs import setup_logging

    # Before Settings exist (the config file may change them again: cli.common.settings_from).
    setup_logging(*early_log_settings(args))
    warn_unknown_env()  # every command, also those that load no Settings (bench); once per name
    return HANDLERS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "config_command", None)]))  # "config check"
    if extra:  # named by the command they were given to, not by `distcomp`
        parser.exit(
            2, f"distcomp {command}: unrecognized arguments: {' '.join(extra)} (see 'distcomp {command} --help')\n"
        )
    return run_command(command, partial(_dispatch, args))
