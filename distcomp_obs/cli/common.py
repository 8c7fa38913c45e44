"""What every subcommand shares: the parser class, the connection, worker and log flags, flags ->
Settings, opening the queue.

Imported by the other `distcomp_obs.cli` modules; it imports none of them (no import circle).
Building the parser imports nothing heavy: redis, yaml, the queue and the config module are
imported when a handler runs (or when a command's --help shows the Settings defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from distcomp_obs.errors import ConfigError

if TYPE_CHECKING:
    from distcomp_obs.config import Settings
    from distcomp_obs.queue import Queue


REDIS_URL_HELP = (
    "redis://[user:pass@]host:port/db, rediss://... (TLS), unix:///path.sock, redis+cluster://h:p[,h:p]/ or "
    "redis+sentinel://h:p[,h:p]/SERVICE[/db] (env DISTCOMP_REDIS_URL; "
    "percent-encode / ? # @ in a password, or use --redis-password-file)"
)
REDIS_PASSWORD_FILE_HELP = (
    "read the Redis password from the first line of this file when connecting, not from the URL "
    "(it replaces one the URL has): keeps it off argv and logs (env DISTCOMP_REDIS_PASSWORD_FILE)"
)
CONFIG_HELP = "YAML settings file (DistComp's conf.json accepted); DISTCOMP_* variables and flags override it"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

#: the attribute that marks a flag whose default is a Settings field's (shown by HelpFormatter)
_SETTING_ATTR = "distcomp_setting"
#: how a Settings default reads in --help where its raw value would mislead
_SHOWN_DEFAULTS = {
    "name": "this host's name",
    "concurrency": "one per usable core (CPU affinity, container CPU limit)",
    "variant": "derived from the flags",
    "pipeline": "on",
    "metrics": "metrics on",
    "redis_password_file": "none: the URL's password, if any",
}


def _settings_default(field: str) -> str:
    """The Settings default of `field` as --help shows it (imports the config module: help only)."""
    if field in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[field]
    from distcomp_obs.config import FIELDS

    value = FIELDS[field].default
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's default in its help: a Settings field's default for settings flags, else the
    argparse default when it means something (not None, False or a help text that names it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.help == argparse.SUPPRESS or "default" in text:
            return action.help
        field = getattr(action, _SETTING_ATTR, None)
        if field:
            return f"{text} (default: {_settings_default(field)})".replace("%", "%%")
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or action.nargs == 0:
            return action.help  # nothing to show, or a switch (its help says what it does)
        if not action.option_strings:
            return action.help
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown})".replace("%", "%%")


class DistcompParser(argparse.ArgumentParser):
    """`distcomp`'s parsers: defaults in every help text, and a usage error is one line on stderr
    (exit status 2), naming the command and pointing at its --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


if TYPE_CHECKING:
    #: what `DistcompParser.add_subparsers()` returns; each command module adds its parsers to it
    Subparsers = argparse._SubParsersAction[DistcompParser]


def setting_flag(p: argparse.ArgumentParser, *flags: str, field: str, **kwargs: Any) -> argparse.Action:
    """A flag for Settings field `field`: default None (not given = the config file, DISTCOMP_*
    variable or Settings default decides), and --help shows the Settings default."""
    kwargs.setdefault("dest", field)
    kwargs.setdefault("default", None)
    action = p.add_argument(*flags, **kwargs)
    setattr(action, _SETTING_ATTR, field)
    return action


def _common(p: argparse.ArgumentParser, embedded_redis: bool = False) -> None:
    """--redis-url, --prefix, --config. `embedded_redis`: the command starts its own Redis unless
    --redis-url (or DISTCOMP_REDIS_URL) names one, so the redis_url setting's default does not apply."""
    if embedded_redis:
        p.add_argument(
            "--redis-url",
            metavar="URL",
            help=f"use this Redis: {REDIS_URL_HELP} (default: an embedded "
            "redis-server; a config file's redis_url is not used)",
        )
    else:
        setting_flag(p, "--redis-url", field="redis_url", metavar="URL", help=REDIS_URL_HELP)
    password_file_flag(p)
    setting_flag(
        p,
        "--prefix",
        field="prefix",
        help="key prefix of the queue (a missing trailing : is added): several queues can share one Redis",
    )
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def password_file_flag(p: argparse.ArgumentParser) -> None:
    """--redis-password-file (the redis_password_file setting), beside every --redis-url."""
    setting_flag(p, "--redis-password-file", field="redis_password_file", metavar="FILE", help=REDIS_PASSWORD_FILE_HELP)


def log_flags(p: argparse.ArgumentParser) -> None:
    """--log-level and --log-format (the `log_level` and `log_format` settings) for a command that logs."""
    setting_flag(
        p, "--log-level", field="log_level", type=str.upper, choices=LOG_LEVELS, help="least severe level logged"
    )
    setting_flag(
        p,
        "--log-format",
        field="log_format",
        choices=LOG_FORMATS,
        help="log lines on stderr: text, or json (one object per line: time, level, logger, message)",
    )


def _worker_flags(p: argparse.ArgumentParser) -> None:
    setting_flag(p, "--concurrency", field="concurrency", type=int, metavar="N", help="tasks run at once")
    setting_flag(
        p,
        "--pipeline",
        field="pipeline",
        action=argparse.BooleanOptionalAction,
        help="claim and report in batches, one atomic round trip each (--no-pipeline: one command per round trip)",
    )
    setting_flag(
        p,
        "--prefetch",
        field="prefetch",
        type=int,
        metavar="N",
        help="claimed tasks buffered beyond the running ones (0: claim only for a free slot)",
    )
    setting_flag(
        p,
        "--polling",
        field="polling",
        choices=["adaptive", "fixed"],
        help="adaptive: no sleep while work flows, wait for a wake-up when idle; fixed: sleep --poll-interval",
    )
    setting_flag(
        p,
        "--poll-interval",
        field="poll_interval_s",
        type=float,
        metavar="SECONDS",
        help="fixed polling: seconds between fetches",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="DistComp's behaviour: --no-pipeline --prefetch 0 --polling fixed --poll-interval 2 "
        "(beats the config file and DISTCOMP_*; a flag given with it beats it)",
    )
    setting_flag(p, "--variant", field="variant", help="variant name for metrics and `distcomp workers`")
    setting_flag(
        p,
        "--max-retry-per-task",
        field="max_retry_per_task",
        type=int,
        metavar="N",
        help="failed attempts retried on other workers before a task fails for good",
    )
    setting_flag(
        p,
        "--min-free-dram-gb",
        field="min_free_dram_gb",
        type=float,
        metavar="GB",
        help="free memory kept for the system: tasks start only above it, below it the newest is killed",
    )
    setting_flag(
        p,
        "--task-timeout",
        field="task_timeout_s",
        type=float,
        metavar="SECONDS",
        help="kill a task running longer (0: no limit)",
    )
    setting_flag(
        p,
        "--grace-period",
        field="grace_period_s",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long running tasks may finish before they are killed and returned",
    )
    setting_flag(
        p,
        "--heartbeat-interval",
        field="heartbeat_interval_s",
        type=float,
        metavar="SECONDS",
        help="seconds between heartbeats (each renews the lease)",
    )
    setting_flag(
        p,
        "--lease",
        field="lease_s",
        type=float,
        metavar="SECONDS",
        help="a worker silent this long is dead and its tasks go back (at least 2 heartbeats)",
    )
    setting_flag(
        p,
        "--reap-interval",
        field="reap_interval_s",
        type=float,
        metavar="SECONDS",
        help="seconds between reaper runs in the whole deployment",
    )
    setting_flag(
        p,
        "--keep-done-for",
        field="keep_done_s",
        type=float,
        metavar="SECONDS",
        help="forget done tasks' records (output, attempts) this long after they ended (0: keep); counts stay",
    )
    setting_flag(
        p,
        "--keep-done",
        field="keep_done",
        type=int,
        metavar="N",
        help="keep at most N done tasks' records, forgetting the oldest first (0: no limit)",
    )
    setting_flag(
        p,
        "--metrics-addr",
        field="metrics_addr",
        metavar="HOST:PORT",
        help="where /metrics and /healthz listen; port 0 picks a free port",
    )
    setting_flag(
        p,
        "--no-metrics",
        field="metrics",
        action="store_const",
        const=False,
        help="serve no metrics (to measure the instrumentation's cost)",
    )
    log_flags(p)


def settings_from(args: argparse.Namespace, config_file: str | None = None) -> Settings:
    """Defaults < --baseline < config file < DISTCOMP_* environment < the flags given, validated.

    Logging is then set up again with the final `log_level` and `log_format` (main() set it up from
    the flags and the environment before the config file was read)."""
    from distcomp_obs.config import FIELDS, load_settings
    from distcomp_obs.logs import setup_logging

    flags = {name: getattr(args, name) for name in FIELDS if name in vars(args)}  # None: not given
    settings = load_settings(
        config_file or getattr(args, "config", None), flags=flags, baseline=getattr(args, "baseline", False)
    )
    setup_logging(settings.log_level, settings.log_format)
    return settings


def early_log_settings(args: argparse.Namespace) -> tuple[str, str]:
    """The log level and format before Settings exist: the flags, else DISTCOMP_LOG_LEVEL /
    DISTCOMP_LOG_FORMAT, else INFO / text. A bad variable is a ConfigError, as Settings would say."""
    level = getattr(args, "log_level", None) or os.environ.get("DISTCOMP_LOG_LEVEL", "INFO")
    fmt = getattr(args, "log_format", None) or os.environ.get("DISTCOMP_LOG_FORMAT", "text")
    if level.strip().upper() not in LOG_LEVELS:
        raise ConfigError("log_level", level, "DEBUG, INFO, WARNING or ERROR")
    if fmt.strip().lower() not in LOG_FORMATS:
        raise ConfigError("log_format", fmt, "'text' or 'json'")
    return level.strip().upper(), fmt.strip().lower()


def open_queue(args: argparse.Namespace) -> tuple[Queue, Settings]:
    from distcomp_obs.queue import Queue
    from distcomp_obs.redis_io import connect

    settings = settings_from(args)
    return Queue(connect(settings.redis_url), settings.prefix), settings


def print_json(data: object) -> None:
    """One JSON object on stdout (the --json output of every command)."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
