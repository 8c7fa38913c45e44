"""Worker: fetch loop -> prefetch buffer -> slots -> batched reports, plus heartbeat and reaper.

Threads and their roles (Dramatiq's split):
- the fetch loop (the thread calling `run`) claims into the buffer and reports results; with
  `pipeline` on, reporting a batch and claiming the next is one atomic round trip;
- `concurrency` slot threads take from the buffer and run tasks;
- a heartbeat thread renews the lease (covering buffered and running tasks), publishes status,
  runs the reaper and watches memory; it never waits on a task;
- with adaptive polling, a listener thread blocks on the wake-up channel.
"""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil
import redis
from prometheus_client import CollectorRegistry, ProcessCollector

from distcomp_obs import __version__, tracing
from distcomp_obs.config import Settings
from distcomp_obs.errors import RedisUnavailable, WorkerNameTaken
from distcomp_obs.httpd import MetricsServer
from distcomp_obs.metrics import OUTCOMES, TASK_TYPES, WorkerMetrics
from distcomp_obs.queue import DUPLICATE, FAILED_FINAL, FINISHED, RETRIED, STALE, ClaimLimits, Queue, Report
from distcomp_obs.redis_io import RoundTrips, connect, redact_url
from distcomp_obs.task import Task, parse_line
from distcomp_obs.worker.buffer import Held, PrefetchBuffer, make_held
from distcomp_obs.worker.guard import TaskGuard
from distcomp_obs.worker.polling import NO_WAIT, Wait, adaptive_wait, fixed_wait
from distcomp_obs.worker.slots import Outcome, Running, run_task

log = logging.getLogger(__name__)
GB = 1024**3
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
#: limits for a round trip that only reports
NO_CLAIM = ClaimLimits(0.0, 0.0)
#: most reports sent in one round trip (a long script blocks Redis for everyone)
MAX_REPORT_BATCH = 500
#: a lone result waits at most this long for others to share its report round trip (a report
#: round trip costs ~300 µs of worker CPU: for subprocess tasks at ~1,000/s this halves them)
REPORT_COALESCE_S = 0.01


@dataclass
class Result:
    held: Held
    outcome: Outcome
    duration_s: float
    done_at: float = 0.0  # time.monotonic() when the slot finished it
    trace: tracing.TaskTrace | None = None  # its spans, when tracing is on


class Worker:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.s = settings
        self.name = settings.name
        self.incarnation = f"{self.name}.{uuid.uuid4().hex[:12]}"
        self.variant = settings.variant_name
        if settings.metrics:
            self.registry = registry or CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=self.registry)
        else:
            self.registry = None
        self.m = WorkerMetrics(self.registry if settings.metrics else None)
        self.rt = RoundTrips(self.m)
        # labelled children bound once: labels() costs more than the observation on the hot path
        self._completed = {(t, o): self.m.tasks_completed.labels(t, o) for t in TASK_TYPES for o in OUTCOMES}
        self._duration = {(t, o): self.m.task_duration_seconds.labels(t, o) for t in TASK_TYPES for o in OUTCOMES}
        self.client = connect(settings.redis_url)
        self.q = Queue(self.client, settings.prefix, self.rt)
        # None when tracing is off: the hot paths then pay one `is None` test per task (DESIGN §5).
        self.tracer = tracing.WorkerTracer(settings.prefix) if tracing.enabled() else None
        if self.tracer is not None:
            self.rt.exemplar = self.tracer.exemplar
        self.buffer = PrefetchBuffer()
        self.results: stdqueue.SimpleQueue[Result] = stdqueue.SimpleQueue()
        self.unsent: list[Result] = []  # results whose report has not reached Redis yet
        self.running: dict[str, tuple[Held, Running]] = {}  # token -> task in a slot
        self.running_lock = threading.Lock()
        self.attention = threading.Event()  # a result arrived, a wake-up came, or stop
        self.submitted = threading.Event()  # the wake-up channel announced new work
        self.wake_priority = -1  # highest priority announced since the last claim
        self.stopping = threading.Event()  # no more claims; drain
        self.hard_stop = threading.Event()  # second signal: return everything now
        self.stopped = threading.Event()
        self.redis_ok = True
        self._down_sources: set[str] = set()  # threads that currently see Redis down
        self._down_lock = threading.Lock()
        self.lease_ok = True
        self.epoch: str | None = None
        self.finished = self.failed = 0
        self.cores = os.cpu_count() or 1
        self.available_gb = psutil.virtual_memory().available / GB
        self.registered_workers: list[str] = []
        self.rng = random.Random()
        self.metrics_server: MetricsServer | None = None
        self.guard: TaskGuard | None = None
        self.metrics_url = ""
        self._threads: list[threading.Thread] = []
        self._loop_beat = time.monotonic()
        self._beat_ok_at = time.monotonic()  # last heartbeat Redis answered
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle
    def run(self, install_signals: bool = True) -> int:
        """Register, work until stopped, drain, deregister. Returns the exit status."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._register()
        self.guard = TaskGuard()  # before any task starts: tasks must not outlive a killed worker
        self._start_metrics()
        self._log_start()
        self._start_threads()
        try:
            self._fetch_loop()
        finally:
            self._shutdown()
        return 0

    def request_stop(self) -> None:
        self.stopping.set()
        self.attention.set()
        self.buffer.wake_all()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping.is_set():
            log.warning(
                "worker %s: second %s: returning every task and exiting now", self.name, signal.Signals(signum).name
            )
            self.hard_stop.set()
        else:
            log.info(
                "worker %s: %s: no more claims; returning buffered tasks, draining running ones (grace %gs)",
                self.name,
                signal.Signals(signum).name,
                self.s.grace_period_s,
            )
        self.request_stop()

    def _register(self) -> None:
        lease_ms = int(self.s.lease_s * 1000)
        if not self.q.acquire_lease(self.name, self.incarnation, lease_ms):
            holder, ttl = self.q.lease_holder(self.name)
            raise WorkerNameTaken(
                f"worker name {self.name!r} is held by a live worker ({holder}); its lease expires in "
                f"{max(ttl, 0) / 1000:.1f}s if it is dead. Use another --name, or stop that worker first."
            )
        self.epoch = self.q.ensure_epoch()
        self._heartbeat_once()
        # A previous incarnation under this name may have died holding tasks: give them back.
        previous = self.q.owned(self.name)
        if previous:
            n = self.q.requeue(self.name, [(t, "") for t in previous], op="return", max_reaps=self.s.max_reaps)
            self.m.tasks_returned.labels("restart").inc(n)
            log.warning("worker %s: returned %d task(s) held by its previous run", self.name, n)
        self._check_redis_config()

    def _check_redis_config(self) -> None:
        try:
            cfg = self.client.config_get("appendonly") | self.client.config_get("maxmemory-policy")
        except redis.ResponseError:  # CONFIG may be denied by an ACL: nothing to check then
            return
        if cfg.get("appendonly") != "yes":
            log.warning(
                "Redis persistence (appendonly) is off: a Redis restart loses the queue. "
                "Set appendonly yes for real runs (see README)."
            )
        if cfg.get("maxmemory-policy", "noeviction") != "noeviction":
            log.warning(
                "Redis maxmemory-policy is %s: Redis may evict queue records. Use noeviction.", cfg["maxmemory-policy"]
            )

    def _start_metrics(self) -> None:
        labels = (
            self.name,
            __version__,
            self.variant,
            str(self.s.pipeline).lower(),
            str(self.s.prefetch),
            self.s.polling,
        )
        self.m.worker_info.labels(*labels).set(1)
        self.m.slots_total.set(self.s.concurrency)
        self.m.buffer_capacity_tasks.set(self.s.prefetch)
        if self.registry is None:
            return
        self.metrics_server = MetricsServer(self.s.metrics_addr, self.registry, self.health).start()
        host = self.metrics_server.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        self.metrics_url = f"http://{host}:{self.metrics_server.port}/metrics"

    def health(self) -> tuple[bool, str]:
        loop_age = time.monotonic() - self._loop_beat
        if not self.redis_ok:
            return False, "redis unreachable"
        # An idle fetch loop may not touch Redis for idle_max_wait_s; the heartbeat does every interval.
        beat_age = time.monotonic() - self._beat_ok_at
        if beat_age > max(2.0, 3 * self.s.heartbeat_interval_s):
            return False, f"redis unreachable: no heartbeat for {beat_age:.0f}s"
        if loop_age > max(60.0, 3 * self.s.idle_max_wait_s):
            return False, f"fetch loop silent for {loop_age:.0f}s"
        return True, "ok"

    def _log_start(self) -> None:
        log.info(
            "worker %s started: variant=%s pipeline=%s prefetch=%d polling=%s poll_interval=%gs concurrency=%d "
            "redis=%s prefix=%s metrics=%s",
            self.name,
            self.variant,
            self.s.pipeline,
            self.s.prefetch,
            self.s.polling,
            self.s.poll_interval_s,
            self.s.concurrency,
            redact_url(self.s.redis_url),
            self.s.prefix,
            self.metrics_url or "off",
        )

    def _start_threads(self) -> None:
        targets = [(self._slot_loop, f"slot-{i}") for i in range(self.s.concurrency)]
        targets.append((self._heartbeat_loop, "heartbeat"))
        if self.s.polling == "adaptive":
            targets.append((self._wake_listener, "wake-listener"))
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # ------------------------------------------------------------------ fetch loop
    def _capacity_wanted(self) -> int:
        """How many tasks to claim now (0: none)."""
        with self.running_lock:
            busy = len(self.running)
        free_slots = max(0, self.s.concurrency - busy)
        buffered = len(self.buffer)
        if self.s.prefetch == 0:
            return max(0, free_slots - buffered)
        want = max(0, self.s.prefetch + free_slots - buffered)
        if self.submitted.is_set() and want == 0:
            # Strict priority: work more urgent than anything buffered was just submitted. Claim
            # it now (the buffer may overflow a little) rather than start lower-priority tasks first.
            lowest = self.buffer.lowest_priority()
            if lowest is not None and self.wake_priority > lowest:
                return max(1, self.s.prefetch // 4)
        if buffered > self.s.prefetch // 2 and not self.submitted.is_set():
            return 0  # above the low-water mark
        return want

    def _limits(self) -> ClaimLimits:
        """Memory a claim may take: free memory above the floor (as the heartbeat thread last read
        it, every 0.25 s), less what buffered tasks will need. Below the floor nothing is claimed
        (-1 fits no task, not even one needing 0 GB)."""
        available = self.available_gb - self.s.min_free_dram_gb
        if available < 0:
            return ClaimLimits(free_dram_gb=-1.0, cpus=float(self.cores))
        reserved = sum(h.task.min_dram_gb for h in self._held_unstarted())
        return ClaimLimits(free_dram_gb=max(0.0, available - reserved), cpus=float(self.cores))

    def _held_unstarted(self) -> list[Held]:
        return list(self.buffer._heap)  # a snapshot; the GIL keeps list() of a list consistent

    def _fetch_loop(self) -> None:
        misses = 0
        last_fetch = 0.0
        while not self.stopping.is_set():
            self._loop_beat = time.monotonic()
            self.attention.clear()
            self._collect_results()
            want = self._capacity_wanted()
            fetch_due = self.s.polling == "adaptive" or time.monotonic() - last_fetch >= self.s.poll_interval_s
            if want and not fetch_due:
                want = 0
            if want or self._reports_due():
                try:
                    claimed, remaining = self._round_trip(want, self._limits() if want else NO_CLAIM)
                except (*REDIS_DOWN, RedisUnavailable) as exc:
                    self._redis_down(exc)
                    continue
                if want:
                    last_fetch = time.monotonic()
                    self.submitted.clear()
                    self.wake_priority = -1
                    misses = 0 if claimed else misses + 1
                    if claimed:
                        self.m.buffer_occupancy_tasks.labels("refill").observe(len(self.buffer))
                        if remaining > 0:
                            continue  # more queued: fetch again at once
                        # The queue is empty: fetching again now would cost a round trip that finds
                        # nothing while the slots start what we just got; a submit wakes us anyway.
            else:
                claimed, remaining = 0, -1
            self._wait(self._next_wait(want, claimed, remaining, misses, last_fetch))

    def _reports_due(self) -> bool:
        """Send results now, or let a few more join them in one round trip?"""
        if not self.unsent:
            return False
        if not self.s.pipeline or self.stopping.is_set() or len(self.unsent) >= max(16, self.s.concurrency):
            return True
        return time.monotonic() - self.unsent[0].done_at >= REPORT_COALESCE_S

    def _next_wait(self, want: int, claimed: int, remaining: int, misses: int, last_fetch: float) -> Wait:
        if not self.results.empty():
            return NO_WAIT
        if self.unsent:  # coalescing reports: come back when the oldest is due
            return Wait(REPORT_COALESCE_S, "")  # not a poll sleep: not recorded
        if want == 0:
            if self.s.polling == "fixed" and self._capacity_wanted():
                return fixed_wait(self.s.poll_interval_s, time.monotonic() - last_fetch)
            return Wait(1.0, "buffer_full")  # woken by a finishing task
        if self.s.polling == "fixed":
            return fixed_wait(self.s.poll_interval_s, time.monotonic() - last_fetch)
        return adaptive_wait(claimed, max(remaining, 0), misses, self.s.idle_max_wait_s, self.rng)

    def _wait(self, wait: Wait) -> None:
        if wait.seconds <= 0:
            return
        if wait.wake_on_submit and self.submitted.is_set():
            return
        start = time.perf_counter()
        self.attention.wait(wait.seconds)
        if wait.reason:
            self.m.poll_sleep_seconds.labels(wait.reason).observe(time.perf_counter() - start)

    def _round_trip(self, want: int, limits: ClaimLimits) -> tuple[int, int]:
        """Report what finished and claim `want` more. Returns (claimed, tasks still queued)."""
        batch = self.unsent[:MAX_REPORT_BATCH]
        if self.s.pipeline:
            reports = [self._report_of(r) for r in batch]
            settle = self.q.settle if self.tracer is None else self.tracer.wrap(self.q.settle, [r.trace for r in batch])
            result = settle(self.name, self.incarnation, reports, want, limits, self.s.max_retry_per_task)
            del self.unsent[: len(batch)]
            self._account(batch, result.report_codes)
            if not result.lease_ok:
                self._lease_lost()
                return 0, result.remaining
            self._accept(result.tasks)
            return len(result.tasks), result.remaining
        while self.unsent:  # DistComp: one report at a time, one command per round trip
            res = self.unsent[0]
            report = self.q.report_unpipelined
            if self.tracer is not None:
                report = self.tracer.wrap(report, [res.trace], pipelined=False)
            code = report(self.name, self._report_of(res), self.s.max_retry_per_task)
            self.unsent.pop(0)
            self._account([res], [code])
        claimed, remaining = 0, 0
        claim = self.q.claim_unpipelined
        if self.tracer is not None:
            claim = self.tracer.wrap(claim, [], pipelined=False)
        for _ in range(want):
            result = claim(self.name, self.incarnation, limits)
            remaining = result.remaining
            if not result.lease_ok:
                self._lease_lost()
                break
            if not result.tasks:
                break
            self._accept(result.tasks)
            claimed += len(result.tasks)
            if self.s.polling == "fixed":
                break  # DistComp fetches one task per poll
        return claimed, remaining

    def _report_of(self, res: Result) -> Report:
        if res.outcome.ok:
            return Report(res.held.line, res.held.token, "finished", res.outcome.output)
        return Report(res.held.line, res.held.token, "failed", res.outcome.output or "failed without a message")

    def _account(self, batch: list[Result], codes: list[int]) -> None:
        for res, code in zip(batch, codes, strict=True):
            kind = res.held.task.type.value
            if code == STALE:
                self.m.stale_reports.inc()
                log.warning("worker %s: report for %r rejected: its claim is no longer ours", self.name, res.held.line)
                continue
            if code == DUPLICATE:
                continue
            outcome = {FINISHED: "finished", FAILED_FINAL: "failed", RETRIED: "retried"}[code]
            self._completed[kind, outcome].inc()
            ex = None if res.trace is None else res.trace.exemplar  # links the bucket to the process span
            self._duration[kind, outcome].observe(res.duration_s, ex)
            if code == FINISHED:
                self.finished += 1
            else:
                self.failed += 1
                log.info(
                    "worker %s: task %r failed (%s): %s",
                    self.name,
                    res.held.line,
                    "for good" if code == FAILED_FINAL else "will retry elsewhere",
                    res.outcome.output[:200],
                )

    def _accept(self, claimed: list[Any]) -> None:
        if not claimed:
            return
        now = time.time()
        items = []
        for c in claimed:
            task = parse_line(c.task)
            items.append(make_held(c.task, task, c.token, c.meta))
            submitted = c.meta.get("submitted_ms")
            if submitted:
                c.meta["submitted_ms"] = submitted = float(submitted)  # a string since submit.lua keeps µs
                self.m.task_queue_wait_seconds.observe(max(0.0, now - submitted / 1000))
        self.m.tasks_claimed.inc(len(items))
        self.m.last_claim_timestamp.set(now)
        self.buffer.put_many(items)
        self.m.buffer_tasks.set(len(self.buffer))

    def _collect_results(self) -> None:
        while True:
            try:
                self.unsent.append(self.results.get_nowait())
            except stdqueue.Empty:
                return

    def _redis_state(self, ok: bool, source: str, exc: BaseException | None = None) -> None:
        """Track which threads see Redis down; log once per outage, not per attempt."""
        with self._down_lock:
            was_ok = not self._down_sources
            if ok:
                self._down_sources.discard(source)
            else:
                self._down_sources.add(source)
            self.redis_ok = not self._down_sources
        if was_ok and not self.redis_ok:
            log.error("worker %s: Redis unreachable (%s); tasks keep running, reports are held, retrying",
                      self.name, exc)  # fmt: skip
        elif not was_ok and self.redis_ok:
            log.warning("worker %s: Redis reachable again", self.name)

    def _redis_down(self, exc: BaseException) -> None:
        self._redis_state(False, "fetch", exc)
        delay = 0.1
        while not self.hard_stop.is_set():
            start = time.perf_counter()
            time.sleep(delay * self.rng.uniform(0.5, 1.0))
            self.m.poll_sleep_seconds.labels("redis_down").observe(time.perf_counter() - start)
            try:
                self.rt.call("poll", 1, self.client.ping)
                self._reconcile()
                break
            except REDIS_DOWN:
                delay = min(5.0, delay * 2)
            if self.stopping.is_set() and delay >= 5.0:
                break
        else:
            return
        if not self.hard_stop.is_set():
            self._redis_state(True, "fetch")

    def _reconcile(self) -> None:
        """After a connection error a claim may have happened without us seeing the reply:
        give back whatever Redis says we own that we do not hold."""
        owned = self.q.owned(self.name)
        # Snapshot in the order tasks flow (buffer -> running -> results), so a task moving on
        # meanwhile is still seen; results not yet collected are ours too (returning those made
        # finished tasks run twice: test_lost_reply_is_reconciled[report]).
        mine = {h.line for h in self._held_unstarted()}
        with self.running_lock:
            mine |= {h.line for h, _ in self.running.values()}
        self._collect_results()
        mine |= {r.held.line for r in self.unsent}
        unknown = owned - mine
        if unknown:
            n = self.q.requeue(self.name, [(t, "") for t in unknown], op="reconcile")
            self.m.tasks_returned.labels("reconcile").inc(n)
            log.warning("worker %s: returned %d task(s) claimed during a lost reply", self.name, n)

    def _lease_lost(self) -> None:
        if self.lease_ok:
            log.error(
                "worker %s: lease lost (another process took the name, or we were cut off too long); "
                "not claiming until it is back",
                self.name,
            )
        self.lease_ok = False

    # ------------------------------------------------------------------ slots
    def _fits(self, task: Task) -> bool:
        """DistComp's admission: memory above the floor (read by the heartbeat thread every
        0.25 s, not per task) and, when tasks declare cores, no more cores than the machine has."""
        if task.min_dram_gb > 0 or self.s.min_free_dram_gb > 0:
            if task.min_dram_gb > self.available_gb - self.s.min_free_dram_gb:
                return False
        if task.min_cpu > 0:
            with self.running_lock:
                used = sum(h.task.min_cpu for h, _ in self.running.values())
            if used + task.min_cpu > self.cores and used > 0:
                return False
        return True

    def _slot_loop(self) -> None:
        while not self.stopping.is_set():
            held, fill = self.buffer.take(self._fits, timeout=1.0)
            if held is None:
                continue
            self.m.buffer_occupancy_tasks.labels("take").observe(fill - 1)
            self.m.buffer_tasks.set(len(self.buffer))
            if len(self.buffer) <= self.s.prefetch // 2:
                self.attention.set()  # below the low-water mark: refill
            self._run_one(held)

    def _run_one(self, held: Held) -> None:
        running = Running()
        held.started_at = time.time()
        with self.running_lock:
            self.running[held.token] = (held, running)
            self.m.slots_busy.set(len(self.running))
        kind = held.task.type.value
        self.m.tasks_started.labels(kind).inc()
        self.m.task_buffer_wait_seconds.observe(held.started_at - held.claimed_at)
        submitted = held.meta.get("submitted_ms")
        if submitted:
            self.m.task_pickup_delay_seconds.observe(max(0.0, held.started_at - submitted / 1000))
        tt = None if self.tracer is None else self.tracer.start_process(held)  # spans start with the task
        start = time.perf_counter()
        try:
            outcome = run_task(held.task, running, self.s.task_timeout_s, self.s.output_limit_bytes, self.guard)
        except Exception as exc:  # a bug in running must fail the task, not kill the slot
            log.exception("worker %s: error running %r", self.name, held.line)
            outcome = Outcome(False, f"worker error: {exc!r}")
        duration = time.perf_counter() - start
        if tt is not None and self.tracer is not None:
            self.tracer.ran(tt, outcome.ok, outcome.output)
        with self.running_lock:
            self.running.pop(held.token, None)
            self.m.slots_busy.set(len(self.running))
        if outcome.killed_for:
            self._return([held], outcome.killed_for)
            if tt is not None and self.tracer is not None:
                self.tracer.returned(tt, outcome.killed_for)
            self.attention.set()
        else:
            # Wake the fetch loop only for the first result of a batch: it then waits for the
            # coalescing window itself, instead of being woken by every finishing task.
            first = self.results.empty() and not self.unsent
            self.results.put(Result(held, outcome, duration, time.monotonic(), tt))
            if first or self.stopping.is_set():
                self.attention.set()

    def _return(self, held: list[Held], reason: str) -> None:
        """Give tasks back to the queue in one round trip (retried until Redis answers or hard stop)."""
        if not held:
            return
        pairs = [(h.line, h.token) for h in held]
        for attempt in range(100):
            try:
                n = self.q.requeue(self.name, pairs)
                self.m.tasks_returned.labels(reason).inc(n)
                return
            except REDIS_DOWN:
                if self.hard_stop.is_set() and attempt > 2:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))
        log.error(
            "worker %s: could not return %d task(s); the reaper will once the lease expires", self.name, len(held)
        )

    # ------------------------------------------------------------------ heartbeat, reaper, memory
    def _status(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        with self.running_lock:
            running = len(self.running)
        return {
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "cores": self.cores,
            "mem_total_gb": round(vm.total / GB, 2),
            "mem_available_gb": round(vm.available / GB, 2),
            "concurrency": self.s.concurrency,
            "running": running,
            "buffered": len(self.buffer),
            "finished": self.finished,
            "failed": self.failed,
            "variant": self.variant,
            "pipeline": self.s.pipeline,
            "prefetch": self.s.prefetch,
            "polling": self.s.polling,
            "poll_interval_s": self.s.poll_interval_s,
            "metrics_url": self.metrics_url,
            "incarnation": self.incarnation,
            "stopping": self.stopping.is_set(),
        }

    def _heartbeat_once(self) -> None:
        beat = self.q.heartbeat(self.name, self.incarnation, int(self.s.lease_s * 1000), self._status())
        state, epoch, stop = beat.lease, beat.epoch, beat.stop_requested
        self.registered_workers = beat.workers
        self._beat_ok_at = time.monotonic()  # for /healthz
        if state == -1:
            self._lease_lost()
            log.error("worker %s: another live process holds this name; stopping", self.name)
            self.request_stop()
        elif state == 0:
            log.warning(
                "worker %s: lease had expired (frozen or cut off?); re-taken. Tasks the reaper returned "
                "meanwhile will be rejected when reported",
                self.name,
            )
            self.lease_ok = True
        else:
            self.lease_ok = True
        if self.epoch and epoch != self.epoch:
            log.critical(
                "worker %s: the queue's epoch changed (%s -> %s): Redis restarted WITHOUT its data. "
                "Tasks submitted before are gone; enable appendonly.",
                self.name,
                self.epoch,
                epoch,
            )
            self.epoch = epoch or self.q.ensure_epoch()
        if stop and float(stop) > self.started_at and not self.stopping.is_set():
            log.info("worker %s: stop requested by `distcomp stop-workers`: draining", self.name)
            self.request_stop()

    def _heartbeat_loop(self) -> None:
        next_beat = next_reap = time.monotonic()
        while not self.stopped.is_set():
            now = time.monotonic()
            try:
                if now >= next_beat:
                    self._heartbeat_once()
                    self._redis_state(True, "heartbeat")
                    next_beat = now + self.s.heartbeat_interval_s
                if now >= next_reap:
                    returned, failed = self.q.reap(
                        max_reaps=self.s.max_reaps,
                        names=self.registered_workers,
                        forget_after_s=self.s.forget_dead_after_s,
                    )
                    if returned > 0 or failed > 0:
                        log.warning(
                            "reaper: returned %d task(s) of dead workers, failed %d poison task(s)", returned, failed
                        )
                    # Leaderless but not noisy: with W workers each reaps every W intervals (jittered),
                    # so the deployment reaps about once per reap_interval_s whatever its size.
                    spread = max(1, len(self.registered_workers)) * self.rng.uniform(0.5, 1.5)
                    next_reap = now + self.s.reap_interval_s * spread
            except REDIS_DOWN as exc:
                self._redis_state(False, "heartbeat", exc)  # an idle worker learns of outages here
                next_beat = now + min(1.0, self.s.heartbeat_interval_s)
            except redis.RedisError as exc:
                log.error("worker %s: heartbeat error: %s", self.name, exc)
                next_beat = now + self.s.heartbeat_interval_s
            self._watch_memory()
            self.stopped.wait(0.25)

    def _watch_memory(self) -> None:
        self.available_gb = available = psutil.virtual_memory().available / GB
        if not self.s.min_free_dram_gb or available >= self.s.min_free_dram_gb:
            return
        with self.running_lock:
            if not self.running:
                return
            held, running = max(self.running.values(), key=lambda pair: pair[0].started_at)
        if not running.kill_reason:
            log.warning(
                "worker %s: free memory %.2f GB below the floor %.2f GB: killing and returning the newest task %r",
                self.name,
                available,
                self.s.min_free_dram_gb,
                held.line,
            )
            running.kill("memory_pressure")

    def _wake_listener(self) -> None:
        pubsub = None
        while not self.stopped.is_set():
            try:
                if pubsub is None:
                    pubsub = self.q.subscribe_wake()
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "message":
                    if message["data"] == "stop":
                        self.request_stop()
                    else:
                        _, _, priority = message["data"].partition(" ")
                        self.wake_priority = max(self.wake_priority, int(priority or 0))
                        self.submitted.set()
                    self.attention.set()
            except REDIS_DOWN:
                pubsub = None
                self.submitted.set()  # we may have missed a wake-up: poll once reconnected
                self.stopped.wait(0.5)
        if pubsub is not None:
            try:
                pubsub.close()
            except REDIS_DOWN:
                pass

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        """Order matters: stop claiming (done), return the unstarted buffer in one round trip so other
        workers can start it now, drain running tasks within the grace period (the heartbeat keeps
        our lease alive meanwhile), kill and return what is left, flush reports, then give up the name."""
        unstarted = self.buffer.take_all()
        self.buffer.close()
        self._return(unstarted, "sigterm")
        self.m.buffer_tasks.set(0)
        deadline = time.monotonic() + self.s.grace_period_s
        while time.monotonic() < deadline and not self.hard_stop.is_set():
            with self.running_lock:
                if not self.running:
                    break
            self._flush_reports()
            self.attention.wait(0.05)
            self.attention.clear()
        with self.running_lock:
            leftovers = list(self.running.values())
        for _, running in leftovers:
            running.kill("shutdown")
        for thread in self._threads:
            if thread.name.startswith("slot-"):
                thread.join(timeout=5)
        self._flush_reports(final=True)
        self.stopped.set()
        try:
            self.q.leave(self.name, self.incarnation)
        except REDIS_DOWN:
            log.error("worker %s: Redis unreachable at exit; the reaper will return anything still held", self.name)
        if self.metrics_server:
            self.metrics_server.stop()
        if self.guard is not None:
            self.guard.close()
        log.info("worker %s stopped: %d finished, %d failed", self.name, self.finished, self.failed)

    def _flush_reports(self, final: bool = False) -> None:
        self._collect_results()
        attempts = 0
        while self.unsent:
            try:
                self._round_trip(0, NO_CLAIM)
            except REDIS_DOWN:
                attempts += 1
                if not final or self.hard_stop.is_set() or attempts > 20:
                    return
                time.sleep(min(2.0, 0.05 * 2**attempts))
