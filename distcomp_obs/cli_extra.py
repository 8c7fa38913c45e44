"""The bigger subcommands (run, exporter, bench, loadgen), kept out of cli.py; each imports its
module only when called."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(
    sub: Any, common: Callable[[argparse.ArgumentParser], None], worker_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    del common, worker_flags  # `run` is built in cli.py; the others add their parsers here


def _run(args: argparse.Namespace) -> int:
    from distcomp_obs.localrun import run_main

    return run_main(args)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"run": _run}
