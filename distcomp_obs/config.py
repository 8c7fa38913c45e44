"""Settings: YAML file, then DISTCOMP_* environment variables, then --baseline, then the other flags
(later wins).

Every value is validated when Settings are built, and an invalid one names the field, the value
and what is expected, before anything touches Redis. DistComp's conf.json keys are accepted. A
DISTCOMP_* variable that names no setting is reported once on stderr with the closest known name.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from distcomp_obs.errors import ConfigError
from distcomp_obs.keys import DEFAULT_PREFIX
from distcomp_obs.redis_io import CLUSTER_SCHEMES, parse_cluster_url
from distcomp_obs.redis_sentinel import SENTINEL_SCHEMES, parse_sentinel_url
from distcomp_obs.redis_url import ENCODE_THE_PASSWORD, misplaced_at, redact_url, with_password_file

#: environment variable that carries a worker's Settings as JSON (`distcomp run` -> `python -m distcomp_obs.worker`)
WORKER_SETTINGS_ENV = "DISTCOMP_WORKER_SETTINGS"
#: secrets in the environment, never handed to a task (whatever task_env_passthrough says) nor to
#: the workers `distcomp run` starts: the Redis URL, password and password file (DISTCOMP_REDIS_*),
#: a worker's settings JSON, and any DISTCOMP_ name with one of SECRET_ENV_WORDS in it
SECRET_ENV_PREFIXES = ("DISTCOMP_REDIS_",)
SECRET_ENV_WORDS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL")


def secret_env(name: str) -> bool:
    """Whether the environment variable `name` may hold a secret (see SECRET_ENV_PREFIXES)."""
    if name == WORKER_SETTINGS_ENV or name.startswith(SECRET_ENV_PREFIXES):
        return True
    return name.startswith("DISTCOMP_") and any(word in name for word in SECRET_ENV_WORDS)


NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")


@dataclass(frozen=True)
class Settings:
    #: redis://[user:password@]host:port/db, rediss:// (TLS), unix:///path.sock, a Redis Cluster:
    #: redis+cluster://[user:password@]host:port[,host:port...]/ (rediss+cluster:// with TLS), or a Sentinel
    #: service: redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db]
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: a file whose first line is the Redis password, read when connecting (the URL then needs none;
    #: it replaces one the URL has): adds the option ?password_file=PATH to redis_url
    redis_password_file: str = ""
    #: key prefix: several queues can share one Redis (a missing trailing ':' is added: `jobs` = `jobs:`)
    prefix: str = DEFAULT_PREFIX
    #: worker name, unique among live workers (default: this host's name)
    name: str = ""
    #: tasks run at once by one worker
    concurrency: int = 0
    #: claim N and report N in one atomic round trip (off: one command per round trip, as DistComp)
    pipeline: bool = True
    #: claimed tasks kept in the local buffer beyond the running ones (0: claim when a slot is free)
    prefetch: int = 32
    #: adaptive: no sleep while work flows, block on a wake-up when idle; fixed: sleep poll_interval_s
    polling: str = "adaptive"
    #: fixed polling: seconds between fetches (DistComp: 2)
    poll_interval_s: float = 2.0
    #: adaptive polling: longest wait for a wake-up before polling anyway
    idle_max_wait_s: float = 30.0
    #: name shown in metrics and `distcomp workers` (default: derived from the flags)
    variant: str = ""
    #: failed attempts retried on other workers before a task fails for good
    max_retry_per_task: int = 2
    #: free memory (GB) kept for the system: tasks start only above it; below it the newest is killed
    min_free_dram_gb: float = 0.2
    #: seconds between heartbeats (the lease is renewed each time)
    heartbeat_interval_s: float = 5.0
    #: a worker silent this long is dead: its tasks go back to the queue
    lease_s: float = 15.0
    #: seconds between reaper runs in the whole deployment (workers take turns; a lock keeps one at a time)
    reap_interval_s: float = 15.0
    #: a dead worker stays listed (workers, /sd, alerts) this long after its last heartbeat
    forget_dead_after_s: float = 3600.0
    #: done tasks' records (output, attempts) are forgotten this long after they ended (0: kept; counts stay)
    keep_done_s: float = 7 * 86400.0
    #: at most this many done tasks' records are kept, the oldest forgotten first (0: no limit)
    keep_done: int = 1_000_000
    #: times a task may take its worker down with it before it fails for good
    max_reaps: int = 3
    #: kill a task running longer than this (0: no limit)
    task_timeout_s: float = 0.0
    #: stdout/stderr bytes kept per task
    output_limit_bytes: int = 64 * 1024
    #: environment variables tasks get beyond the allowlist (docs/SECURITY.md): comma-separated names,
    #: NAME* for every name starting with NAME, * for all; DISTCOMP_REDIS_* and the worker's settings never
    task_env_passthrough: str = ""
    #: seconds SIGTERM waits for running tasks before killing and returning them
    grace_period_s: float = 30.0
    #: serve Prometheus metrics (off: --no-metrics, for measuring instrumentation cost)
    metrics: bool = True
    #: HOST:PORT for /metrics and /healthz; port 0 picks a free port
    metrics_addr: str = "127.0.0.1:0"
    #: DEBUG, INFO, WARNING or ERROR
    log_level: str = "INFO"
    #: text (one line per record) or json (one JSON object per line: time, level, logger, message)
    log_format: str = "text"

    def __post_init__(self) -> None:
        # `jobs` and `jobs:` are one queue: keys are always `<prefix>:<record>`
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        validate(self)
        # the file is read when connecting (redis_url.client_url), wherever the URL is handed on
        object.__setattr__(self, "redis_url", with_password_file(self.redis_url, self.redis_password_file.strip()))

    @property
    def variant_name(self) -> str:
        return self.variant or variant_name(self.pipeline, self.prefetch, self.polling, self.poll_interval_s)

    def redacted(self) -> dict[str, Any]:
        data = asdict(self)
        data["redis_url"] = redact_url(self.redis_url)
        return data

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"

    def to_json(self) -> str:
        """Every field, unredacted (the password too: keep it off argv and logs); `settings_from_json` reads it."""
        return json.dumps(asdict(self), sort_keys=True)


def variant_name(pipeline: bool, prefetch: int, polling: str, poll_interval_s: float) -> str:
    parts = (["pipeline"] if pipeline else []) + ([f"prefetch{prefetch}"] if prefetch else [])
    parts.append("adaptive" if polling == "adaptive" else f"fixed{poll_interval_s:g}s")
    if parts == ["fixed2s"]:
        return "baseline"
    if parts == ["fixed0s"]:
        return "baseline-nosleep"
    return "+".join(parts)


#: what --baseline selects: DistComp's behaviour
BASELINE = {"pipeline": False, "prefetch": 0, "polling": "fixed", "poll_interval_s": 2.0}


def normalise_prefix(prefix: str) -> str:
    """A key prefix ends in ':' (`jobs` -> `jobs:`), so `jobs` and `jobs:` name the same queue; an
    empty prefix stays empty (and is rejected by validation)."""
    prefix = prefix.strip()
    return prefix if not prefix or prefix.endswith(":") else prefix + ":"


def parse_prefixes(values: Sequence[str] | None, default: str) -> list[str]:
    """--prefix a: --prefix b,c: -> [a:, b:, c:] (order kept, duplicates dropped; a prefix without a
    trailing ':' gets one, as in Settings, so `jobs` and `jobs:` are one queue)."""
    out: list[str] = []
    for value in values or [default]:
        for part in value.split(","):
            part = normalise_prefix(part)
            if part and part not in out:
                out.append(part)
    return out or [normalise_prefix(default)]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(name, value, "a number >= 0" if allow_zero else "a number > 0")


def _check_url(url: str) -> None:
    """The URL's form (nothing is connected to); the value shown in a ConfigError is redacted, and
    the reasons named hold no text of the URL that could be a piece of a password."""
    if misplaced_at(url):
        raise ConfigError("redis_url", redact_url(url), ENCODE_THE_PASSWORD)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES):
        expected = "a redis://, rediss://, unix://, redis[s]+cluster:// or redis[s]+sentinel:// URL"
        raise ConfigError("redis_url", redact_url(url), expected)
    try:  # a malformed host or port must fail here, not as a traceback when connecting
        if scheme in CLUSTER_SCHEMES:
            parse_cluster_url(url)
        elif scheme in SENTINEL_SCHEMES:
            parse_sentinel_url(url)
        else:
            urlsplit(url).port  # noqa: B018
    except ValueError as exc:
        raise ConfigError("redis_url", redact_url(url), f"a valid URL ({exc})") from None


def validate(s: Settings) -> None:
    """Raise ConfigError naming the first invalid value (the checks always run in this order)."""
    _check_url(s.redis_url)
    _check_identity_and_protocol(s)
    _check_limits(s)
    host, _, port = s.metrics_addr.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError("metrics_addr", s.metrics_addr, "HOST:PORT with a port from 0 to 65535")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log_level", s.log_level, "DEBUG, INFO, WARNING or ERROR")
    if s.log_format not in ("text", "json"):
        raise ConfigError("log_format", s.log_format, "'text' or 'json'")
    env_passthrough(s.task_env_passthrough)


#: one entry of task_env_passthrough: a variable name, NAME* (a prefix) or * (everything)
_PASSTHROUGH_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?|\*")


def env_passthrough(text: str) -> tuple[str, ...]:
    """The entries of a task_env_passthrough value (comma-separated, blanks ignored); ConfigError
    naming the field for an entry that is no variable name, NAME* or *."""
    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    for entry in entries:
        if not _PASSTHROUGH_ENTRY.fullmatch(entry):
            raise ConfigError("task_env_passthrough", text, "comma-separated variable names, NAME* (a prefix) or *")
    return entries


def _check_identity_and_protocol(s: Settings) -> None:
    if not s.prefix or any(c.isspace() for c in s.prefix):
        raise ConfigError("prefix", s.prefix, "a non-empty key prefix without spaces")
    if s.name and not s.name.strip():
        raise ConfigError("name", s.name, "a non-empty worker name (leave it out for this host's name)")
    if s.name and (not set(s.name) <= NAME_CHARS or len(s.name) > 128):
        raise ConfigError("name", s.name, "letters, digits and - _ . @ (at most 128)")
    if s.concurrency < 0 or s.concurrency > 4096:
        raise ConfigError("concurrency", s.concurrency, "an integer from 1 to 4096 (0: one per usable core)")
    if s.prefetch < 0 or s.prefetch > 10000:
        raise ConfigError("prefetch", s.prefetch, "an integer from 0 to 10000")
    if s.polling not in ("adaptive", "fixed"):
        raise ConfigError("polling", s.polling, "'adaptive' or 'fixed'")


def _check_limits(s: Settings) -> None:
    for name in ("poll_interval_s", "task_timeout_s", "grace_period_s", "min_free_dram_gb"):
        _positive(name, getattr(s, name), allow_zero=True)
    for name in ("idle_max_wait_s", "heartbeat_interval_s", "lease_s", "reap_interval_s", "forget_dead_after_s"):
        _positive(name, getattr(s, name))
    if s.lease_s < 2 * s.heartbeat_interval_s:
        raise ConfigError("lease_s", s.lease_s, f"at least twice heartbeat_interval_s ({2 * s.heartbeat_interval_s:g})")
    if s.max_retry_per_task < 0:
        raise ConfigError("max_retry_per_task", s.max_retry_per_task, "an integer >= 0")
    if s.max_reaps < 1:
        raise ConfigError("max_reaps", s.max_reaps, "an integer >= 1")
    _positive("keep_done_s", s.keep_done_s, allow_zero=True)
    if s.keep_done < 0:
        raise ConfigError("keep_done", s.keep_done, "an integer >= 0 (0: no limit)")
    if s.output_limit_bytes < 0:
        raise ConfigError("output_limit_bytes", s.output_limit_bytes, "an integer >= 0")


FIELDS = {f.name: f for f in fields(Settings)}
#: DistComp's conf.json keys -> ours
DISTCOMP_ALIASES = {
    "max_retry_per_task": "max_retry_per_task",
    "poll_interval": "poll_interval_s",
    "sleep_time": "poll_interval_s",
    "min_free_mem_gb": "min_free_dram_gb",
    "min_free_memory_gb": "min_free_dram_gb",
    "max_parallel_tasks": "concurrency",
    "num_slots": "concurrency",
    "worker_name": "name",
}
DISTCOMP_REDIS_KEYS = ("redis_host", "redis_port", "redis_password", "redis_db")


def _coerce(name: str, value: Any) -> Any:
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError
            return number
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(str(kind), "a string")
        raise ConfigError(name, value, expected) from None


def _from_distcomp(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if any(k in data for k in DISTCOMP_REDIS_KEYS):
        host = data.pop("redis_host", "127.0.0.1")
        port = data.pop("redis_port", 6379)
        password = data.pop("redis_password", None)
        db = data.pop("redis_db", 0)
        auth = f":{quote(str(password), safe='')}@" if password else ""
        out["redis_url"] = f"redis://{auth}{host}:{port}/{db}"
    for key in list(data):
        if key in DISTCOMP_ALIASES and key not in FIELDS:
            out[DISTCOMP_ALIASES[key]] = data.pop(key)
    out.update(data)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """YAML or DistComp's conf.json (JSON is YAML); unknown keys are errors, with the key named."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", str(path), f"a readable file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "a UTF-8 text file") from None
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError("config", str(path), f"valid YAML or JSON ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a mapping of setting: value")
    data = _from_distcomp({str(k): v for k, v in data.items()})
    for key in data:
        if key not in FIELDS:
            raise ConfigError(key, data[key], f"a known setting (one of: {', '.join(sorted(FIELDS))})")
    return data


#: the environment variable of each setting
ENV_NAMES = {f"DISTCOMP_{name.upper()}": name for name in FIELDS}
#: DISTCOMP_* variables that are not settings but are known (read elsewhere)
OTHER_ENV = frozenset({WORKER_SETTINGS_ENV, "DISTCOMP_CONSOLE_TOKEN"})
#: DISTCOMP_<PREFIX>* families read by tools outside the package (the soak test's knobs)
OTHER_ENV_PREFIXES = ("DISTCOMP_SOAK_",)
_warned_env: set[str] = set()


def unknown_env(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(unknown DISTCOMP_* name, closest known name or "") for each variable that names no setting."""
    known = sorted(ENV_NAMES) + sorted(OTHER_ENV)
    out = []
    for key in sorted(env):
        if not key.startswith("DISTCOMP_") or key in ENV_NAMES or key in OTHER_ENV:
            continue
        if key.startswith(OTHER_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        out.append((key, close[0] if close else ""))
    return out


def warn_unknown_env(env: Mapping[str, str] | None = None) -> None:
    """One line on stderr per misspelled DISTCOMP_* variable, once per process (every command
    reads its settings through `read_env`, so every command warns)."""
    for key, close in unknown_env(os.environ if env is None else env):
        if key in _warned_env:
            continue
        _warned_env.add(key)
        hint = f"did you mean {close}?" if close else "no setting has this name"
        print(f"distcomp: warning: ignoring unknown environment variable {key} ({hint})", file=sys.stderr)


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    warn_unknown_env(env)
    return {name: env[key] for key, name in ENV_NAMES.items() if key in env}


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    baseline: bool = False,
) -> Settings:
    """Merge defaults < file < environment < --baseline preset < the other flags, then validate.

    --baseline is a flag, so it beats the file and the environment for the fields it sets; a
    per-field flag given with it (`--baseline --prefetch 4`) still wins over the preset."""
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update(read_env(os.environ if env is None else env))
    if baseline:
        merged.update(BASELINE)
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    values = {name: _coerce(name, value) for name, value in merged.items()}
    if "name" in values and not values["name"].strip():
        raise ConfigError("name", values["name"], "a non-empty worker name (leave it out for this host's name)")
    values.setdefault("name", socket.gethostname().split(".")[0])
    if not values.get("concurrency"):
        from distcomp_obs import machine  # psutil: only when a worker is configured, not for --help

        values["concurrency"] = machine.cores()  # a container's or job's CPU limit, not the host's cores
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].upper()
    if isinstance(values.get("log_format"), str):
        values["log_format"] = values["log_format"].strip().lower()
    return Settings(**values)


_JSON_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


def _json_value(name: str, value: Any) -> Any:
    """`value` of field `name` as read from JSON, with no coercion beyond int -> float."""
    kind = str(FIELDS[name].type)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value),
        "str": isinstance(value, str),
    }.get(kind, False)
    if not ok:
        raise ConfigError(name, value, _JSON_EXPECTED.get(kind, "a string"))
    return float(value) if kind == "float" else value


def settings_from_json(text: str) -> Settings:
    """Settings from `Settings.to_json()`: every field present, no unknown ones, each of its type, then
    validated like any Settings. A bad field raises ConfigError naming it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("settings JSON", f"line {exc.lineno} column {exc.colno}", f"valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError("settings JSON", type(data).__name__, "an object of setting: value")
    for key in data:
        if key not in FIELDS:
            raise ConfigError(key, data[key], f"a known setting (one of: {', '.join(sorted(FIELDS))})")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise ConfigError(missing[0], None, "a value (a settings JSON carries every setting)")
    return Settings(**{name: _json_value(name, value) for name, value in data.items()})
