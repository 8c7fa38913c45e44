"""Worker: register, start the thread roles, run the fetch loop, drain, deregister.

Thread roles (Dramatiq's split, one class each):
- Fetcher (the thread calling `run`): claims into the buffer and reports results;
- SlotPool: `concurrency` threads take from the buffer and run tasks;
- Chores (the "heartbeat" thread): lease, status, reaper, memory watch; never waits on a task;
- WakeListener: blocks on the wake-up channel (submissions wake it only with adaptive polling).
They share the pieces in parts.Parts, each of which guards its own state.
Constructing a Worker touches no Redis: `run` connects, waiting (with backoff) while Redis is away,
and binds the metrics port before it registers, so a busy port leaves no registration behind.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import ssl
import threading
import time
import uuid
from types import FrameType

import redis
from prometheus_client import CollectorRegistry, ProcessCollector

from distcomp_obs import __version__, machine, tracing
from distcomp_obs.config import Settings
from distcomp_obs.errors import RedisUnavailable, WorkerNameTaken
from distcomp_obs.httpd import MetricsServer
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import Client, RoundTrips, connect, outage_cause, redact_url
from distcomp_obs.worker.buffer import PrefetchBuffer
from distcomp_obs.worker.chores import Chores
from distcomp_obs.worker.fetcher import Fetcher
from distcomp_obs.worker.guard import TaskGuard
from distcomp_obs.worker.health import Lease, Liveness, RedisHealth
from distcomp_obs.worker.listener import WakeListener
from distcomp_obs.worker.parts import REDIS_DOWN, Parts
from distcomp_obs.worker.results import Results
from distcomp_obs.worker.slots import Memory, SlotPool
from distcomp_obs.worker.wake import WakeSignal

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.s = settings
        self.name = settings.name
        self.incarnation = f"{self.name}.{uuid.uuid4().hex[:12]}"
        self.registry: CollectorRegistry | None = None
        if settings.metrics:
            self.registry = registry or CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=self.registry)
        self.m = WorkerMetrics(self.registry)
        self.stopping = threading.Event()  # no more claims; drain
        self.hard_stop = threading.Event()  # second signal: return everything now
        self.buffer = PrefetchBuffer()
        self.results = Results()
        self.wake = WakeSignal()
        self.redis = RedisHealth(self.name)
        self.lease = Lease(self.name, settings.lease_s)
        self.liveness = Liveness()
        self.memory = Memory(machine.memory())
        self.pool = SlotPool(settings, self.buffer, self.results, self.wake, self.m, self.memory,
                             machine.cores(), self.stopping, self.lease)  # fmt: skip
        self.metrics_server: MetricsServer | None = None
        self.registered = False  # set once the name is taken: until then a signal has nothing to drain

    # --- lifecycle -----------------------------------------------------------------------------
    def run(self, install_signals: bool = True, drain_signals: tuple[signal.Signals, ...] = ()) -> int:
        """Register, work until stopped, drain, deregister. Returns the exit status. SIGTERM and
        SIGINT drain it, and so do `drain_signals` (a Slurm job's workers take SIGURG: see cli/slurm.py)."""
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, *drain_signals):
                signal.signal(signum, self._on_signal)
        client = wait_for_redis(self.s.redis_url, self.stopping, self.name)
        if client is None:
            log.info("worker %s: stopped while waiting for Redis", self.name)
            return 0
        rt = RoundTrips(self.m)
        q = Queue(client, self.s.prefix, rt)
        # None when tracing is off: the hot paths then pay one `is None` test per task.
        tracer = tracing.WorkerTracer(self.s.prefix) if tracing.enabled() else None
        if tracer is not None:
            rt.exemplar = tracer.exemplar
        parts = Parts(q, self.buffer, self.pool, self.results, self.wake, self.redis, self.lease, self.liveness,
                      self.memory, self.m, tracer, self.stopping, self.hard_stop)  # fmt: skip
        fetcher = Fetcher(self.s, self.incarnation, parts)
        chores = Chores(self.s, self.incarnation, parts, fetcher.tally, self.request_stop)
        chores.give_back = fetcher.give_back
        listener = WakeListener(q, self.wake, self.request_stop, self.name, self.s.polling == "adaptive")
        # Bind /metrics before registering: a busy port must not leave a registration listed DEAD.
        chores.metrics_url = self._start_metrics()
        try:
            registered = self._register_when_redis_serves(q, chores, fetcher)
        except BaseException:
            self._stop_metrics()
            raise
        if not registered:
            self._stop_metrics()
            log.info("worker %s: stopped while waiting for Redis", self.name)
            return 0
        self.registered = True
        guard: TaskGuard | None = None
        try:  # registered: whatever fails from here on, _shutdown gives the name up
            guard = TaskGuard()  # before any task starts: tasks must not outlive a killed worker
            self._log_start(chores.metrics_url)
            self.pool.start(guard, fetcher.give_back, tracer)
            chores.start()
            listener.start()
            fetcher.run()
        finally:
            self._shutdown(q, fetcher, chores, listener)
            if guard is not None:
                guard.close()
        return 0

    def _register_when_redis_serves(self, q: Queue, chores: Chores, fetcher: Fetcher) -> bool:
        """Register; while Redis is away or refuses (full, read-only, loading...) wait and say so
        once per cause. False if stopped while waiting."""
        delay, logged = WAIT_FIRST_S, ""
        while True:
            try:
                self._register(q, chores, fetcher)
                return True
            except REDIS_DOWN as exc:
                cause = outage_cause(exc)
                if cause != logged:
                    log.warning("worker %s: Redis is %s; waiting to register (%s)", self.name, cause, exc)
                    logged = cause
            if self.stopping.wait(random.uniform(delay / 2, delay)):
                return False
            delay = min(WAIT_MAX_S, delay * 2)

    def request_stop(self) -> None:
        self.stopping.set()
        self.wake.poke()
        self.buffer.wake_all()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.registered:
            log.info("worker %s: %s: stopping before it started", self.name, name)
        elif self.stopping.is_set():
            log.warning("worker %s: second %s: returning every task and exiting now", self.name, name)
            self.hard_stop.set()
        else:
            log.info("worker %s: %s: no more claims; returning buffered tasks, draining running ones (grace %gs)",
                     self.name, name, self.s.grace_period_s)  # fmt: skip
        self.request_stop()

    def health(self) -> tuple[bool, str]:
        return self.liveness.check(self.redis, self.s.heartbeat_interval_s, self.s.idle_max_wait_s)

    def alive(self) -> tuple[bool, str]:
        return self.liveness.alive(self.s.idle_max_wait_s, self.stopping.is_set())

    def _register(self, q: Queue, chores: Chores, fetcher: Fetcher) -> None:
        if not q.acquire_lease(self.name, self.incarnation, int(self.s.lease_s * 1000)):
            holder, ttl = q.lease_holder(self.name)
            raise WorkerNameTaken(
                f"worker name {self.name!r} is held by a live worker ({holder}); its lease expires in "
                f"{max(ttl, 0) / 1000:.1f}s if it is dead. Use another --name, or stop that worker first."
            )
        try:
            q.check_layout()
            chores.epoch = q.ensure_epoch()
            chores.heartbeat_once()
            # A previous incarnation under this name may have died holding tasks: give them back.
            previous = q.held_by(self.name)
            if previous:
                n = q.requeue(self.name, [(t, "") for t in previous], op="return", max_reaps=self.s.max_reaps)
                self.m.tasks_returned.labels("restart").inc(n)
                log.warning("worker %s: returned %d task(s) held by its previous run", self.name, n)
            _check_redis_config(q)
        except BaseException:
            self._leave(q)  # no registration outlives a start that failed half way
            raise

    def _start_metrics(self) -> str:
        """Set the static gauges; serve /metrics and /healthz. Returns the metrics URL ("" if off)."""
        s = self.s
        labels = (self.name, __version__, s.variant_name, str(s.pipeline).lower(), str(s.prefetch), s.polling)
        self.m.worker_info.labels(*labels).set(1)
        self.m.slots_total.set(s.concurrency)
        self.m.buffer_capacity_tasks.set(s.prefetch)
        if self.registry is None:
            return ""
        self.metrics_server = MetricsServer(s.metrics_addr, self.registry, self.health, live=self.alive).start()
        host = self.metrics_server.url_host
        if host in ("0.0.0.0", "[::]", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.metrics_server.port}/metrics"

    def _stop_metrics(self) -> None:
        if self.metrics_server:
            self.metrics_server.stop()
            self.metrics_server = None

    def _leave(self, q: Queue) -> None:
        try:
            q.leave(self.name, self.incarnation)
        except REDIS_DOWN:
            log.error("worker %s: Redis unreachable at exit; the reaper will return anything still held", self.name)

    def _log_start(self, metrics_url: str) -> None:
        s = self.s
        log.info(
            "worker %s started: variant=%s pipeline=%s prefetch=%d polling=%s poll_interval=%gs concurrency=%d "
            "redis=%s prefix=%s metrics=%s",
            self.name, s.variant_name, s.pipeline, s.prefetch, s.polling, s.poll_interval_s, s.concurrency,
            redact_url(s.redis_url), s.prefix, metrics_url or "off",
        )  # fmt: skip

    def _shutdown(self, q: Queue, fetcher: Fetcher, chores: Chores, listener: WakeListener) -> None:
        """Order matters: stop claiming (done), return the unstarted buffer in one round trip so other
        workers can start it now, drain running tasks within the grace period (the heartbeat keeps
        our lease alive meanwhile), kill and return what is left, flush reports, then give up the name."""
        unstarted = self.buffer.take_all()
        self.buffer.close()
        fetcher.give_back(unstarted, "sigterm")
        self.m.buffer_tasks.set(0)
        deadline = time.monotonic() + self.s.grace_period_s
        while time.monotonic() < deadline and not self.hard_stop.is_set() and self.pool.busy():
            fetcher.flush_reports()
            self.wake.wait(0.05)
            self.wake.begin_pass()
        self.pool.kill_all("shutdown")
        self.pool.join(timeout_s=5)
        fetcher.flush_reports(final=True)
        chores.stop()
        listener.stop()
        self._leave(q)
        self._stop_metrics()
        t = fetcher.tally
        log.info("worker %s stopped: %d finished, %d failed", self.name, t.finished, t.failed)


#: waiting for Redis at start: first and longest pause between attempts (full jitter)
WAIT_FIRST_S, WAIT_MAX_S = 0.1, 5.0


def wait_for_redis(url: str, stopping: threading.Event, name: str) -> Client | None:
    """A client once Redis answers PING; None if `stopping` is set first (SIGTERM/SIGINT while
    waiting). An unreachable Redis is waited for with capped, jittered backoff and logged once;
    refused credentials or an ACL error raise RedisUnavailable at once (waiting will not heal them)."""
    client = connect(url, check=False)
    delay, logged = WAIT_FIRST_S, False
    while not stopping.is_set():
        try:
            client.ping()
            if logged:
                log.info("worker %s: Redis at %s answers", name, redact_url(url))
            return client
        except redis.AuthenticationError as exc:  # a ConnectionError subclass: test it first
            client.close()
            raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
        except redis.ResponseError as exc:  # NOPERM and the like
            client.close()
            raise RedisUnavailable(f"Redis at {redact_url(url)} answered with an error: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if isinstance(exc.__context__, ssl.SSLError):  # an untrusted certificate, TLS to a plain port...
                client.close()
                raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None
            if not logged:
                log.warning("worker %s: waiting for Redis at %s (%s)", name, redact_url(url), exc)
                logged = True
        stopping.wait(random.uniform(delay / 2, delay))
        delay = min(WAIT_MAX_S, delay * 2)
    client.close()
    return None


def _check_redis_config(q: Queue) -> None:
    try:
        cfg = q.r.config_get("appendonly") | q.r.config_get("maxmemory-policy")
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
