"""`distcomp run FILE`: the main job on one machine.

Reads the file (malformed lines refuse the run unless --skip-invalid), sets aside the tasks this
machine can never run (more memory or cores than it has), starts the pinned embedded redis-server
in the file's own state directory (distcomp_obs.runstate: keyed by the file or --queue, locked,
AOF kept so an interrupted run resumes) unless --redis-url is given, submits the file, starts N
local worker processes, shows progress, and ends with a summary and the audit.

Signals: the workers run in their own session, so the terminal's Ctrl-C reaches only `run`, which
forwards exactly one SIGTERM to each worker per SIGINT/SIGTERM it receives: the first drains
(running tasks finish within the grace period, the buffer goes back), a second stops at once.
If the embedded redis-server dies, the workers are stopped and the run ends with one line, exit 1.

A library module: `distcomp_obs.cli.run` parses the flags and calls `run_local` with validated
Settings; nothing here imports the CLI. Each worker child is `python -m distcomp_obs.worker`
and receives its Settings as JSON in the environment (config.WORKER_SETTINGS_ENV), not as flags.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import redis

from distcomp_obs import machine
from distcomp_obs.audit import AuditReport, audit
from distcomp_obs.config import WORKER_SETTINGS_ENV, Settings, secret_env
from distcomp_obs.errors import DistcompError
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer, die_with_parent
from distcomp_obs.runprogress import FileCounter, Rate, Summary, show_progress
from distcomp_obs.runstate import RunLock, StateDir, legacy_state, open_state, pin_redis, record_redis, socket_path
from distcomp_obs.task import Task, TaskFile, load_task_file

#: a local worker's /metrics address unless --metrics-addr is given: a free port each
WORKER_METRICS_ADDR = "127.0.0.1:0"
#: how long stopped workers get beyond their grace period before they are killed
STOP_MARGIN_S = 30.0


@dataclass(frozen=True)
class RunOptions:
    """What `distcomp run` needs beyond the Settings."""

    #: the task file
    file: str
    #: local worker processes
    workers: int = 2
    #: where the state directories (one per task file or --queue) live
    data_dir: str = ".distcomp"
    #: forget this file's previous run first
    fresh: bool = False
    #: malformed lines are reported and skipped instead of refusing the run
    skip_invalid: bool = False
    #: an existing Redis to use; None: start an embedded redis-server in the state directory
    redis_url: str | None = None
    #: the workers' HOST:PORT for /metrics and /healthz
    worker_metrics_addr: str = WORKER_METRICS_ADDR
    #: the state's name instead of the file's (several files share one queue)
    queue: str | None = None
    #: the summary as one JSON object on stdout
    json: bool = False


def worker_settings(settings: Settings, opts: RunOptions, url: str, index: int) -> Settings:
    """The Settings of local worker `index` (from 1): the run's own, with this Redis, the name
    `local-N`, the workers' metrics address, and the log level of the workers' environment
    (DISTCOMP_LOG_LEVEL, else WARNING: the workers are quiet unless asked). The embedded Redis
    has no password: redis_password_file applies to a --redis-url only."""
    return dataclasses.replace(
        settings,
        redis_url=url,
        redis_password_file=settings.redis_password_file if opts.redis_url else "",
        name=f"local-{index}",
        metrics_addr=opts.worker_metrics_addr,
        log_level=_worker_log_level(),
    )


def _worker_log_level() -> str:
    return os.environ.get("DISTCOMP_LOG_LEVEL", "WARNING").upper()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "distcomp_obs.worker"]


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """One `python -m distcomp_obs.worker` child with `settings`, in its own session (the
    terminal's Ctrl-C does not reach it: `run` forwards signals); it dies with this process.

    Its argv holds no setting (so no password shows in the process list): the settings go as JSON
    in WORKER_SETTINGS_ENV, which the child removes before any task starts. The other secrets of
    this environment (DISTCOMP_REDIS_URL, ...: config.secret_env) are not passed on: the child
    reads nothing but the JSON."""
    env = {k: v for k, v in os.environ.items() if not secret_env(k)}
    env["DISTCOMP_LOG_LEVEL"] = _worker_log_level()
    env[WORKER_SETTINGS_ENV] = settings.to_json()
    return subprocess.Popen(worker_command(), env=env, start_new_session=True, preexec_fn=die_with_parent)


class Workers:
    """The local worker processes and the signals `run` forwards to them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.signalled: set[int] = set()  # pids that got at least one SIGTERM

    def start(self, settings: Settings) -> None:
        self.procs.append(start_worker(settings))

    def _term(self, p: subprocess.Popen[bytes]) -> None:
        if p.returncode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.signalled.add(p.pid)

    def forward(self) -> None:
        """One SIGTERM to every worker still running (safe in a signal handler: no waiting)."""
        for p in list(self.procs):
            self._term(p)

    def all_exited(self) -> bool:
        return all(p.poll() is not None for p in self.procs)

    def stop(self, timeout_s: float) -> None:
        """Drain: one SIGTERM to each worker not signalled yet, wait, then kill what is left."""
        for p in self.procs:
            if p.pid not in self.signalled:
                self._term(p)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Outcome(enum.Enum):
    DONE = "done"  # every runnable task of the file finished or failed
    INTERRUPTED = "interrupted"
    WORKERS_EXITED = "workers exited"
    REDIS_DIED = "redis died"


class Signals:
    """SIGINT/SIGTERM while `run` runs: count them and forward each to the workers once."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.received = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        self.workers.forward()

    @contextmanager
    def installed(self) -> Iterator[Signals]:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def machine_limits() -> tuple[float, int]:
    """This machine's total memory (GB) and cores, as a local worker sees them (container limits included)."""
    return machine.memory().total_gb, machine.cores()


def unrunnable_here(tasks: list[Task], min_free_dram_gb: float) -> dict[str, str]:
    """Tasks no local worker would ever claim (the claim in lua/lib.lua takes a task only if its
    min_dram_gb fits in the memory above min_free_dram_gb and its min_cpu in the cores), and why."""
    total_gb, cores = machine_limits()
    usable_gb = total_gb - min_free_dram_gb
    floor = f" ({usable_gb:.1f} GB above min_free_dram_gb {min_free_dram_gb:g})" if min_free_dram_gb else ""
    out: dict[str, str] = {}
    for t in tasks:
        reasons = []
        if t.min_dram_gb > usable_gb:
            reasons.append(f"needs {t.min_dram_gb:g} GB of memory, this machine has {total_gb:.1f} GB{floor}")
        if t.min_cpu > cores:
            reasons.append(f"needs {t.min_cpu:g} cores, this machine has {cores}")
        if reasons:
            out[t.line] = "; ".join(reasons)
    return out


def load(opts: RunOptions) -> TaskFile:
    """The task file; malformed lines are listed (capped) and refuse the run unless --skip-invalid."""
    tf = load_task_file(opts.file)
    for line in tf.error_lines():
        print(line, file=sys.stderr)
    if tf.error_count and not opts.skip_invalid:
        raise DistcompError(
            f"{opts.file}: {tf.error_count} malformed line(s); nothing submitted (fix them or pass --skip-invalid)"
        )
    return tf


def run_local(settings: Settings, opts: RunOptions) -> int:
    """Run `opts.file` to the end on this machine; the exit status of `distcomp run`."""
    if opts.file == "-" and not opts.queue and not opts.redis_url:
        raise DistcompError("run -: the tasks come from standard input; name their state with --queue NAME")
    tf = load(opts)  # before the handlers: a Ctrl-C while a big file loads ends the command at once
    workers = Workers()
    with Signals(workers).installed() as signals:
        try:
            if opts.redis_url:
                return Run(settings, opts, tf, workers, signals).execute(opts.redis_url)
            return _run_embedded(settings, opts, tf, workers, signals)
        finally:
            workers.stop(10.0)  # stopped already, unless an error ended the run early


def _run_embedded(settings: Settings, opts: RunOptions, tf: TaskFile, workers: Workers, signals: Signals) -> int:
    state = open_state(opts.data_dir, opts.file, opts.queue)
    legacy = legacy_state(opts.data_dir)
    if legacy:
        print(f"note: {legacy} holds the data of an older distcomp run (one state per directory); "
              "it is not used and can be deleted", file=sys.stderr)  # fmt: skip
    with RunLock(state, str(Path(opts.file).resolve()) if opts.file != "-" else "-"):
        pinned = pin_redis(state, opts.fresh)
        with socket_path(state) as sock:
            server = RedisServer(appendonly=True, directory=str(state.redis_dir), executable=pinned.executable,
                                 socket=str(sock))  # fmt: skip
            server.start()
            try:
                record_redis(state, pinned)
                return Run(settings, opts, tf, workers, signals, server, state).execute(server.url)
            finally:
                workers.stop(10.0)  # before Redis goes: a draining worker still returns its tasks
                server.stop()


class Run:
    """One run from submit to summary, on a Redis that is up."""

    def __init__(
        self, settings: Settings, opts: RunOptions, tf: TaskFile, workers: Workers, signals: Signals,
        server: RedisServer | None = None, state: StateDir | None = None,
    ) -> None:  # fmt: skip
        self.s, self.opts, self.workers, self.signals = settings, opts, workers, signals
        self.server, self.state = server, state
        self.unrunnable = unrunnable_here(tf.tasks, settings.min_free_dram_gb)
        self.lines = [t.line for t in tf.tasks if t.line not in self.unrunnable]
        self.duplicates = tf.duplicates
        self.notes: list[str] = []

    def execute(self, url: str) -> int:
        client = connect(url)
        try:
            return self._execute(Queue(client, self.s.prefix), url)
        except redis.RedisError as exc:
            if self._server_died():
                return self._redis_died()
            raise DistcompError(f"lost Redis: {exc}") from None
        finally:
            client.close()

    def _execute(self, q: Queue, url: str) -> int:
        if self.opts.fresh and self.server is None:
            manager.reset(q)
        if self.server is not None:
            # Our private Redis: any worker registered in it belongs to an earlier run that was
            # killed. Return its tasks now rather than waiting for its lease to expire.
            manager.requeue_dead(q, 0)
        added = q.submit(self.lines)
        known = q.counts()["known"]
        counter = FileCounter(q, self.lines, exact=self.server is not None and known == len(self.lines))
        if self.server is not None and known > len(self.lines):
            self.notes.append(f"note: {known - len(self.lines)} other task(s) are kept in {self.state_path()}")
        self._announce(added)
        if not self.signals.received:
            for i in range(self.opts.workers):
                self.workers.start(worker_settings(self.s, self.opts, url, i + 1))
        start = time.monotonic()
        rate = Rate(counter.read().done)
        outcome = self._watch(counter, rate)
        if outcome is Outcome.REDIS_DIED:
            return self._redis_died()
        if outcome is Outcome.INTERRUPTED:
            print(f"interrupted: running tasks finish (grace {self.s.grace_period_s:g}s), the rest go back; "
                  "Ctrl-C again stops now; run again to resume", file=sys.stderr)  # fmt: skip
        self.workers.stop(self.s.grace_period_s + STOP_MARGIN_S)
        if self._server_died():
            return self._redis_died()
        return self._summarize(q, counter, rate, outcome, time.monotonic() - start)

    def state_path(self) -> str:
        return str(self.state.path) if self.state else self.opts.file

    def _announce(self, added: int) -> None:
        n = len(self.lines)
        dup = f", {self.duplicates} duplicate line(s) ignored" if self.duplicates else ""
        cannot = f", {len(self.unrunnable)} cannot run on this machine" if self.unrunnable else ""
        where = f" (state {self.state.path})" if self.state else ""
        print(f"{self.opts.file}: {n} task(s), {added} added, {n - added} already known{dup}{cannot}; "
              f"starting {self.opts.workers} worker(s){where}", file=sys.stderr)  # fmt: skip
        for task, reason in self.unrunnable.items():
            print(f"cannot run here, not submitted: {task}: {reason}", file=sys.stderr)

    def _server_died(self) -> bool:
        return self.server is not None and self.server.process is not None and self.server.process.poll() is not None

    def _watch(self, counter: FileCounter, rate: Rate) -> Outcome:
        """Progress until this file's runnable tasks are all done, a signal, the embedded Redis
        dies or every worker has exited."""
        tty = sys.stderr.isatty()
        last_print = 0.0
        while True:
            if self._server_died():
                return Outcome.REDIS_DIED
            if self.signals.received:
                return self._end_progress(Outcome.INTERRUPTED, tty)
            try:
                c = counter.read()
            except redis.RedisError:
                if self._server_died():
                    return Outcome.REDIS_DIED
                time.sleep(0.5)  # an external Redis away for a moment: the workers wait too
                continue
            rate.update(c.done)
            done = c.done >= c.total
            if done or time.monotonic() - last_print >= (0.5 if tty else 5.0):
                show_progress(c, rate, tty)
                last_print = time.monotonic()
            if done:
                return self._end_progress(Outcome.DONE, tty)
            if self.workers.all_exited():
                print("\nall workers exited before the tasks were done", file=sys.stderr)
                return Outcome.WORKERS_EXITED
            time.sleep(0.1)

    @staticmethod
    def _end_progress(outcome: Outcome, tty: bool) -> Outcome:
        if tty:
            print(file=sys.stderr)
        return outcome

    def _redis_died(self) -> int:
        assert self.server is not None and self.server.process is not None
        code = self.server.process.returncode
        self.workers.forward()
        self.workers.forward()  # a second signal: return everything now (there is nowhere to return it)
        self.workers.stop(10.0)
        print(f"\ndistcomp run: the embedded redis-server exited (status {code}); workers stopped; "
              f"see {self.server.dir}/redis.log", file=sys.stderr)  # fmt: skip
        return 1

    def _summarize(self, q: Queue, counter: FileCounter, rate: Rate, outcome: Outcome, elapsed: float) -> int:
        interrupted = outcome is Outcome.INTERRUPTED
        try:
            c = counter.read(force=True)
            failures = counter.failures()
            report = audit(q, submitted=self.lines, expect_done=outcome is Outcome.DONE and counter.exact)
        except redis.RedisError as exc:
            print(f"distcomp run: cannot read the results from Redis: {exc}", file=sys.stderr)
            return 1
        summary = Summary(
            file=self.opts.file,
            counts=c,
            elapsed_s=elapsed,
            rate_per_s=rate.per_s() if rate.per_s() is not None else (c.done - rate.base_done) / max(elapsed, 1e-9),
            failures=failures,
            unrunnable=self.unrunnable,
            audit=report,
            interrupted=interrupted,
            state_dir=self.state.path if self.state else None,
            failed_file=self.state.failed_file if self.state else None,
            notes=self.notes,
        )
        status = exit_status(outcome, summary, report)
        summary.emit(self.opts.json, status)
        return status


def exit_status(outcome: Outcome, summary: Summary, report: AuditReport) -> int:
    if outcome is Outcome.INTERRUPTED:
        return 130
    bad = summary.failures or summary.unrunnable or summary.counts.waiting or not report.ok
    return 1 if bad or outcome is not Outcome.DONE else 0
