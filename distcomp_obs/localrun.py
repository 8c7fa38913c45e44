"""`distcomp run FILE`: the main job on one machine.

Starts an embedded redis-server (data kept with AOF in --data-dir, so an interrupted run
resumes) unless --redis-url is given, submits the file, starts N local worker processes,
shows progress, and ends with a summary and the audit. Ctrl-C: workers return what they hold
and the queue keeps the rest for the next run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distcomp_obs.audit import audit
from distcomp_obs.cli import settings_from
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import RedisServer, connect, die_with_parent
from distcomp_obs.task import read_task_file


def _worker_argv(args: argparse.Namespace, url: str, name: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "distcomp_obs",
        "worker",
        "--redis-url",
        url,
        "--name",
        name,
        "--metrics-addr",
        args.metrics_addr or "127.0.0.1:0",
    ]
    passthrough = {
        "--prefix": args.prefix,
        "--config": args.config,
        "--concurrency": args.concurrency,
        "--prefetch": args.prefetch,
        "--polling": args.polling,
        "--poll-interval": args.poll_interval_s,
        "--variant": args.variant,
        "--max-retry-per-task": args.max_retry_per_task,
        "--task-timeout": args.task_timeout_s,
        "--min-free-dram-gb": args.min_free_dram_gb,
        "--heartbeat-interval": args.heartbeat_interval_s,
        "--lease": args.lease_s,
        "--reap-interval": args.reap_interval_s,
        "--grace-period": args.grace_period_s,
    }
    for flag, value in passthrough.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.baseline:
        argv.append("--baseline")
    if args.pipeline is not None:
        argv.append("--pipeline" if args.pipeline else "--no-pipeline")
    if args.metrics is False:
        argv.append("--no-metrics")
    return argv


def _progress(done: int, total: int, failed: int, rate: float, tty: bool) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done, {failed} failed, {rate:.1f} tasks/s"
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated run stops like Ctrl-C: cleanly
    settings = settings_from(args)
    tasks, errors = read_task_file(args.file)
    for err in errors:
        print(err, file=sys.stderr)
    if errors and not args.skip_invalid:
        print(f"{len(errors)} malformed line(s); fix them or pass --skip-invalid", file=sys.stderr)
    server = None
    url = args.redis_url or os.environ.get("DISTCOMP_REDIS_URL")
    if not url:
        data_dir = Path(args.data_dir).resolve() / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        server = RedisServer(appendonly=True, directory=str(data_dir)).start()
        url = server.url
    workers: list[subprocess.Popen[bytes]] = []
    try:
        q = Queue(connect(url), settings.prefix)
        if args.fresh:
            q.reset()
        if server is not None:
            # Our private Redis: any worker registered in it belongs to an earlier run that was
            # killed. Return its tasks now rather than waiting for its lease to expire.
            q.requeue_dead(0)
        lines = [t.line for t in tasks]
        added = q.submit(lines)
        print(
            f"{args.file}: {len(lines)} task(s), {added} added, {len(lines) - added} already known; "
            f"starting {args.workers} worker(s)",
            file=sys.stderr,
        )
        env = dict(os.environ, DISTCOMP_LOG_LEVEL=os.environ.get("DISTCOMP_LOG_LEVEL", "WARNING"))
        for i in range(args.workers):
            workers.append(
                subprocess.Popen(_worker_argv(args, url, f"local-{i + 1}"), env=env, preexec_fn=die_with_parent)
            )
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
        return 1 if failed or not report.ok or (errors and not args.skip_invalid) else 0
    finally:
        _stop(workers)
        if server is not None:
            server.stop()


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
