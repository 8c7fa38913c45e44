"""`distcomp run FILE`: the main job on one machine.

Starts an embedded redis-server (data kept with AOF in --data-dir, so an interrupted run
resumes) unless --redis-url is given, submits the file, starts N local worker processes,
shows progress, and ends with a summary and the audit. Ctrl-C: workers return what they hold
and the queue keeps the rest for the next run.

A library module: `distcomp_obs.cli.run` parses the flags and calls `run_local` with validated
Settings; nothing here imports the CLI. Each worker child is `python -m distcomp_obs.worker`
and receives its Settings as JSON in the environment (config.WORKER_SETTINGS_ENV), not as flags.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distcomp_obs.audit import audit
from distcomp_obs.config import WORKER_SETTINGS_ENV, Settings
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import RedisServer, connect, die_with_parent
from distcomp_obs.task import read_task_file

#: a local worker's /metrics address unless --metrics-addr is given: a free port each
WORKER_METRICS_ADDR = "127.0.0.1:0"


@dataclass(frozen=True)
class RunOptions:
    """What `distcomp run` needs beyond the Settings."""

    #: the task file
    file: str
    #: local worker processes
    workers: int = 2
    #: embedded Redis data (AOF) directory
    data_dir: str = ".distcomp"
    #: forget this queue's previous tasks first
    fresh: bool = False
    #: malformed lines do not make the exit status 1
    skip_invalid: bool = False
    #: an existing Redis to use; None: start an embedded redis-server in data_dir
    redis_url: str | None = None
    #: the workers' HOST:PORT for /metrics and /healthz
    worker_metrics_addr: str = WORKER_METRICS_ADDR


def worker_settings(settings: Settings, opts: RunOptions, url: str, index: int) -> Settings:
    """The Settings of local worker `index` (from 1): the run's own, with this Redis, the name
    `local-N`, the workers' metrics address, and the log level of the workers' environment
    (DISTCOMP_LOG_LEVEL, else WARNING: the workers are quiet unless asked)."""
    return dataclasses.replace(
        settings,
        redis_url=url,
        name=f"local-{index}",
        metrics_addr=opts.worker_metrics_addr,
        log_level=_worker_log_level(),
    )


def _worker_log_level() -> str:
    return os.environ.get("DISTCOMP_LOG_LEVEL", "WARNING").upper()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "distcomp_obs.worker"]


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """One `python -m distcomp_obs.worker` child with `settings`; it dies with this process."""
    env = dict(os.environ, DISTCOMP_LOG_LEVEL=_worker_log_level())
    env[WORKER_SETTINGS_ENV] = settings.to_json()
    return subprocess.Popen(worker_command(), env=env, preexec_fn=die_with_parent)


def _progress(done: int, total: int, failed: int, rate: float, tty: bool) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done, {failed} failed, {rate:.1f} tasks/s"
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_redis(data_dir: str) -> RedisServer:
    directory = Path(data_dir).resolve() / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(appendonly=True, directory=str(directory)).start()


def run_local(settings: Settings, opts: RunOptions) -> int:
    """Run `opts.file` to the end on this machine; the exit status of `distcomp run`."""
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated run stops like Ctrl-C: cleanly
    tasks, errors = read_task_file(opts.file)
    for err in errors:
        print(err, file=sys.stderr)
    invalid = bool(errors) and not opts.skip_invalid
    if invalid:
        print(f"{len(errors)} malformed line(s); fix them or pass --skip-invalid", file=sys.stderr)
    server = None if opts.redis_url else _start_redis(opts.data_dir)
    url = server.url if server is not None else str(opts.redis_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        q = Queue(connect(url), settings.prefix)
        if opts.fresh:
            manager.reset(q)
        if server is not None:
            # Our private Redis: any worker registered in it belongs to an earlier run that was
            # killed. Return its tasks now rather than waiting for its lease to expire.
            manager.requeue_dead(q, 0)
        lines = [t.line for t in tasks]
        added = q.submit(lines)
        print(
            f"{opts.file}: {len(lines)} task(s), {added} added, {len(lines) - added} already known; "
            f"starting {opts.workers} worker(s)",
            file=sys.stderr,
        )
        for i in range(opts.workers):
            workers.append(start_worker(worker_settings(settings, opts, url, i + 1)))
        return _supervise(q, workers, lines, invalid)
    finally:
        _stop(workers)
        if server is not None:
            server.stop()


def _supervise(q: Queue, workers: list[subprocess.Popen[bytes]], lines: list[str], invalid: bool) -> int:
    """Progress until done, then stop the workers, print the summary and the audit; the exit status."""
    start = time.monotonic()
    tty = sys.stderr.isatty()
    base = q.counts()
    base_done = base["finished"] + base["failed"]
    interrupted = _watch(q, workers, len(lines), base_done, start, tty)
    elapsed = time.monotonic() - start
    _stop(workers)
    c = q.counts()
    done = c["finished"] + c["failed"]
    if tty:
        print(file=sys.stderr)
    report = audit(q, submitted=lines, expect_done=not interrupted)
    failed = q.list_state("failed")
    print(
        f"\nsummary: {c['finished']} finished, {c['failed']} failed, {c['todo']} waiting, "
        f"{(done - base_done) / max(elapsed, 1e-9):.1f} tasks/s over {elapsed:.1f}s"
    )
    for task, reason in sorted(failed.items()):
        print(f"  FAILED {task}\n         {reason.strip()[:300]}")
    print(report.summary())
    if interrupted:
        return 130
    return 1 if failed or not report.ok or invalid else 0


def _watch(
    q: Queue, workers: list[subprocess.Popen[bytes]], total: int, base_done: int, start: float, tty: bool
) -> bool:
    """Show progress until the queue drains or every worker has exited; True if interrupted."""
    last_print = 0.0
    try:
        while True:
            c = q.counts()
            done = c["finished"] + c["failed"]
            elapsed = time.monotonic() - start
            drained = c["todo"] == 0 and c["in_progress"] == 0
            if drained or time.monotonic() - last_print >= (0.5 if tty else 5.0):
                _progress(done, total or done, c["failed"], (done - base_done) / max(elapsed, 1e-9), tty)
                last_print = time.monotonic()
            if drained:
                return False
            if all(w.poll() is not None for w in workers):
                print("\nall workers exited before the queue drained", file=sys.stderr)
                return False
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("\ninterrupted: workers are returning their tasks; run again to resume", file=sys.stderr)
        return True


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(60)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
