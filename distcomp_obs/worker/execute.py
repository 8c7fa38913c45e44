"""Running one task (a slot calls run_task): shell and python tasks as subprocesses, builtins in-process.

A subprocess is started directly (no extra fork per task, no preexec_fn: Python's fast vfork
path) in its own session, and registered with the worker's TaskGuard, which kills its whole
process group if the worker dies: a killed worker's tasks must not keep running while the
reaper hands them to someone else. Output is spooled to temporary files and only a bounded
slice is kept, so a task printing gigabytes costs disk, not worker memory.

A task's environment is an allowlist of the worker's (`task_environment`, docs/SECURITY.md): it
never holds the Redis credential (DISTCOMP_REDIS_*) nor the worker's settings.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

from distcomp_obs.config import env_passthrough, secret_env
from distcomp_obs.errors import ConfigError
from distcomp_obs.task import Task, TaskType
from distcomp_obs.worker.guard import TaskGuard

#: variables every task gets from the worker's environment (when the worker has them)
TASK_ENV = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH",
    "VIRTUAL_ENV",
})  # fmt: skip
#: ... and every variable named with one of these prefixes: the locale, and distcomp's own settings
#: (DISTCOMP_LOG_LEVEL, ...: a task that runs `distcomp` sees the worker's queue) less the secrets
TASK_ENV_PREFIXES = ("LC_", "DISTCOMP_")
#: the environment variable of the task_env_passthrough setting (read when no env is handed to run_task)
PASSTHROUGH_ENV = "DISTCOMP_TASK_ENV_PASSTHROUGH"


def task_environment(environ: Mapping[str, str] | None = None, passthrough: str | None = None) -> dict[str, str]:
    """What a task's environment holds of `environ` (default: this process's): the allowlist
    (TASK_ENV, TASK_ENV_PREFIXES), plus what `passthrough` (a task_env_passthrough value: names,
    NAME*, *; default: DISTCOMP_TASK_ENV_PASSTHROUGH of `environ`) names, never a secret
    (`config.secret_env`: the Redis URL, password and password file, the worker's settings JSON)."""
    environ = os.environ if environ is None else environ
    if passthrough is None:
        try:  # validated with the worker's settings: changed since, it adds nothing
            entries = env_passthrough(environ.get(PASSTHROUGH_ENV, ""))
        except ConfigError:
            entries = ()
    else:
        entries = env_passthrough(passthrough)
    names = TASK_ENV | {e for e in entries if not e.endswith("*")}
    prefixes = TASK_ENV_PREFIXES + tuple(e[:-1] for e in entries if e.endswith("*"))
    return {k: v for k, v in environ.items() if (k in names or k.startswith(prefixes)) and not secret_env(k)}


@dataclass
class Outcome:
    ok: bool
    output: str  # stdout on success, the reason on failure
    killed_for: str = ""  # set when the worker killed it (memory_pressure, shutdown): return, not fail
    exit_code: int | None = None  # the process's (negative: killed by that signal); None: no process
    stdout_tail: str = ""  # a failed task's stdout (its reason holds the stderr tail)
    stderr_tail: str = ""  # a finished task's stderr


def bounded_text(data: bytes, limit: int, keep_tail: bool = False) -> str:
    """Decode as UTF-8 (bad bytes replaced), keeping at most `limit` bytes."""
    if len(data) > limit:
        data = data[-limit:] if keep_tail else data[:limit]
        marker = f"[... {len(data)} of more bytes kept]"
        text = data.decode("utf-8", "replace")
        return f"{marker} {text}" if keep_tail else f"{text} {marker}"
    return data.decode("utf-8", "replace")


class Running:
    """A task in a slot; the worker may kill it (memory pressure, timeout, shutdown)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.kill_reason = ""
        self.cancel = threading.Event()

    def kill(self, reason: str) -> None:
        self.kill_reason = reason
        self.cancel.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _read(f: IO[bytes], limit: int, tail: bool) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit - 1) if tail else 0)
    data = f.read(limit + 1)
    return bounded_text(data, limit, keep_tail=tail)


def run_task(task: Task, running: Running, timeout_s: float, output_limit: int, guard: TaskGuard | None = None,
             env: Mapping[str, str] | None = None) -> Outcome:  # fmt: skip
    """Run `task` to its end (or until the worker kills it). A subprocess gets `env` as its whole
    environment; None: `task_environment()`, the allowlist of this process's environment."""
    if task.type is TaskType.BUILTIN:
        return _run_builtin(task, running, timeout_s)
    if task.type is TaskType.SHELL:
        argv = ["/bin/sh", "-c", task.params]
    else:
        try:
            argv = [sys.executable, *shlex.split(task.params)]
        except ValueError as exc:
            return Outcome(False, f"cannot split python params: {exc}")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=task_environment() if env is None else env,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome(False, f"cannot start task: {exc}")
        if guard is not None:
            guard.watch(proc.pid)  # its own session: process group id == pid
        try:
            return _wait(proc, running, timeout_s, output_limit, out, err)
        finally:
            if guard is not None:
                guard.forget(proc.pid)


def _wait(proc: subprocess.Popen[bytes], running: Running, timeout_s: float, output_limit: int, out: IO[bytes],
          err: IO[bytes]) -> Outcome:  # fmt: skip
    """Wait for a started task (killing it on timeout) and turn its exit into an Outcome."""
    running.process = proc
    if running.cancel.is_set():  # killed before it started
        running.kill(running.kill_reason)
    try:
        code = proc.wait(timeout_s or None)
    except subprocess.TimeoutExpired:
        running.kill("timeout")
        code = proc.wait()
    if running.kill_reason and running.kill_reason != "timeout":
        return Outcome(False, f"killed by the worker ({running.kill_reason})", running.kill_reason)
    stderr = _read(err, output_limit, tail=True)
    if running.kill_reason == "timeout":
        reason = f"timed out after {timeout_s:g}s (task_timeout_s); stderr: {stderr}"
        return Outcome(False, reason, exit_code=code, stdout_tail=_read(out, output_limit, tail=True))
    if code == 0:
        return Outcome(True, _read(out, output_limit, tail=False), exit_code=0, stderr_tail=stderr)
    cause = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return Outcome(False, f"{cause}; stderr: {stderr}".strip(), exit_code=code,
                   stdout_tail=_read(out, output_limit, tail=True))  # fmt: skip


def _run_builtin(task: Task, running: Running, timeout_s: float) -> Outcome:
    words = task.params.split()
    if words[0] == "noop":
        return Outcome(True, "")
    if words[0] == "fail":
        return Outcome(False, "builtin fail: " + " ".join(words[1:]) if len(words) > 1 else "builtin fail")
    seconds = float(words[1])
    limit = seconds if not timeout_s else min(seconds, timeout_s)
    start = time.monotonic()
    if running.cancel.wait(limit):
        return Outcome(False, f"killed by the worker ({running.kill_reason})", running.kill_reason)
    if timeout_s and time.monotonic() - start >= timeout_s and seconds > timeout_s:
        return Outcome(False, f"timed out after {timeout_s:g}s (task_timeout_s)")
    return Outcome(True, "")
