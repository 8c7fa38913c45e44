"""SlotPool: `concurrency` threads that take tasks from the buffer and run them.

The pool owns the table of running tasks, behind its lock; other threads ask it (how many run,
how many cores they use, which started last, which lines it holds) or tell it to kill.
A finished task goes to Results; a task the worker killed (memory pressure, shutdown) is
handed back to the queue through `give_back`, not reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable

from distcomp_obs import tracing
from distcomp_obs.config import Settings
from distcomp_obs.machine import MemoryFigures
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.task import Task
from distcomp_obs.worker import policy
from distcomp_obs.worker.buffer import Held, PrefetchBuffer
from distcomp_obs.worker.execute import Outcome, Running, run_task, task_environment
from distcomp_obs.worker.guard import TaskGuard
from distcomp_obs.worker.health import Lease
from distcomp_obs.worker.results import Result, Results
from distcomp_obs.worker.wake import WakeSignal

log = logging.getLogger(__name__)
GiveBack = Callable[[list[Held], str], None]


#: how often a slot looks again while the lease is in doubt
LEASE_WAIT_S = 0.1
#: exit codes of a task ended by the signal that stops its worker too (scancel, systemd stop): killed
#: by it, or a shell whose command was (a shell reports that as 128 + the signal's number)
STOP_SIGNAL_CODES = frozenset({-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT})
#: how long a slot waits for the worker's own handler to see that signal (they land together)
STOP_SIGNAL_RACE_S = 1.0


class Memory:
    """Memory as last read (`machine.memory`, by the chores thread every 0.25 s: not per task or
    per heartbeat)."""

    def __init__(self, figures: MemoryFigures) -> None:
        self.figures = figures  # one writer, the chores thread, replaces it whole: one reading at a time

    @property
    def available_gb(self) -> float:
        return self.figures.available_gb


class SlotPool:
    def __init__(
        self,
        settings: Settings,
        buffer: PrefetchBuffer,
        results: Results,
        wake: WakeSignal,
        metrics: WorkerMetrics,
        memory: Memory,
        cores: int,
        stopping: threading.Event,
        lease: Lease | None = None,
    ) -> None:
        self.s = settings
        self.lease = lease or Lease(settings.name or "-", math.inf)  # without one (tests): always trusted
        # built once: the allowlist of this process's environment plus task_env_passthrough, no secret
        self.task_env = task_environment(passthrough=settings.task_env_passthrough)
        self.buffer = buffer
        self.results = results
        self.wake = wake
        self.m = metrics
        self.memory = memory
        self.cores = cores
        self.stopping = stopping  # the worker's: no more tasks start once set
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], tuple[Held, Running]] = {}  # (line, token) -> task in a slot
        self._unreported: list[tuple[str, str]] = []  # (task, token) started since the last settle
        self._unreported_since = 0.0  # time.monotonic() of the oldest of them
        self._threads: list[threading.Thread] = []
        self.tracer: tracing.WorkerTracer | None = None
        self.guard: TaskGuard | None = None
        self.give_back: GiveBack = lambda held, reason: None

    # --- what other threads may ask ----------------------------------------------------------
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def starts_to_report(self) -> list[tuple[str, str]]:
        """Tasks started since the last settle: the fetch loop sends them with its next settle, so
        a death of this worker counts only toward tasks that may have been running (poison
        detection), at no extra round trip."""
        with self._lock:
            return list(self._unreported)

    def starts_pending(self) -> tuple[int, float]:
        """How many starts wait to be reported, and how long the oldest has waited (no copy)."""
        with self._lock:
            if not self._unreported:
                return 0, 0.0
            return len(self._unreported), time.monotonic() - self._unreported_since

    def starts_reported(self, n: int) -> None:
        with self._lock:
            del self._unreported[:n]
            self._unreported_since = time.monotonic()

    def cores_used(self) -> float:
        with self._lock:
            return sum(h.task.min_cpu for h, _ in self._running.values())

    def lines(self) -> set[str]:
        with self._lock:
            return {h.line for h, _ in self._running.values()}

    def newest(self) -> tuple[Held, Running] | None:
        """The task that started last (the one memory pressure kills)."""
        with self._lock:
            if not self._running:
                return None
            return max(self._running.values(), key=lambda pair: pair[0].started_at)

    def cancel(self, lines: set[str]) -> int:
        """Stop these running tasks (their whole process groups): each ends as a cancelled result."""
        with self._lock:
            running = [r for h, r in self._running.values() if h.line in lines]
        for r in running:
            r.kill("cancelled")
        return len(running)

    def kill_all(self, reason: str) -> None:
        with self._lock:
            running = [r for _, r in self._running.values()]
        for r in running:
            r.kill(reason)

    # --- the slot threads ----------------------------------------------------------------------
    def start(self, guard: TaskGuard | None, give_back: GiveBack, tracer: tracing.WorkerTracer | None) -> None:
        self.guard, self.give_back, self.tracer = guard, give_back, tracer
        for i in range(self.s.concurrency):
            thread = threading.Thread(target=self._slot_loop, name=f"slot-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout_s)

    def _fits(self, task: Task) -> bool:
        cores_used = self.cores_used() if task.min_cpu > 0 else 0.0
        return policy.fits(task, self.memory.available_gb, self.s.min_free_dram_gb, cores_used, self.cores)

    def _slot_loop(self) -> None:
        while not self.stopping.is_set():
            if not self.lease.trusted():  # frozen, cut off or fenced: these tasks may be someone else's now
                self.stopping.wait(LEASE_WAIT_S)
                continue
            held, fill = self.buffer.take(self._fits, timeout=1.0)
            if held is None:
                continue
            if not self.lease.trusted():  # lost while we waited: the heartbeat decides what is still ours
                self.buffer.put_many([held])
                continue
            self.m.buffer_occupancy_tasks.labels("take").observe(fill - 1)
            left = len(self.buffer)
            self.m.buffer_tasks.set(left)
            if policy.below_low_water(left, self.s.prefetch):
                self.wake.poke()  # refill
            self._run_one(held)

    def _started(self, held: Held, running: Running) -> None:
        held.started_at = time.time()
        with self._lock:
            self._running[(held.line, held.token)] = (held, running)
            first = not self._unreported
            if first:
                self._unreported_since = time.monotonic()
            self._unreported.append((held.line, held.token))
            self.m.slots_busy.set(len(self._running))
        if first and self.s.pipeline:
            self.wake.poke()  # the fetch loop sends the start marks within the coalescing window
        self.m.tasks_started.labels(held.task.type.value).inc()
        self.m.task_buffer_wait_seconds.observe(held.started_at - held.claimed_at)
        submitted = held.claim.submitted_s
        if submitted:
            self.m.task_pickup_delay_seconds.observe(max(0.0, held.started_at - submitted))

    def _run_one(self, held: Held) -> None:
        running = Running()
        self._started(held, running)
        tracer = self.tracer
        tt = None if tracer is None else tracer.start_process(held)  # spans start with the task
        start = time.perf_counter()
        try:
            outcome = run_task(held.task, running, self.s.task_timeout_s, self.s.output_limit_bytes, self.guard,
                               self.task_env)  # fmt: skip
        except Exception as exc:  # a bug in running must fail the task, not kill the slot
            log.exception("worker %s: error running %r", self.s.name, held.line)
            outcome = Outcome(False, f"worker error: {exc!r}")
        duration = time.perf_counter() - start
        if outcome.exit_code in STOP_SIGNAL_CODES and self.stopping.wait(STOP_SIGNAL_RACE_S):
            # Signalled with the whole process tree (scancel, systemd): stopped with us, not failed.
            outcome = dataclasses.replace(outcome, killed_for="shutdown")
        if tt is not None and tracer is not None:
            tracer.ran(tt, outcome.ok, outcome.output)
        with self._lock:
            self._running.pop((held.line, held.token), None)
            self.m.slots_busy.set(len(self._running))
        if outcome.killed_for and outcome.killed_for != "cancelled":  # cancelled: reported, recorded cancelled
            self.give_back([held], outcome.killed_for)
            if tt is not None and tracer is not None:
                tracer.returned(tt, outcome.killed_for)
            self.wake.poke()
        elif self.results.put(Result(held, outcome, duration, time.monotonic(), tt)) or self.stopping.is_set():
            self.wake.poke()
