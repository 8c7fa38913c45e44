"""Chores: the heartbeat thread's periodic work, declared as one table (SAQ's habit).

- heartbeat: renew the lease (covering buffered and running tasks) and publish the status;
- reap: return the tasks of dead workers (leaderless: each worker reaps about every
  W x reap_interval_s, so the deployment reaps about once per interval whatever its size);
- retention: forget done tasks' records past keep_done_s / keep_done (same cadence as reap;
  each call walks at most a few hundred batches, so it never blocks Redis for long);
- memory: read free memory for admission and claims; below the floor kill the newest task.

The thread never waits on a task. Redis errors only move the chore's next time.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from distcomp_obs import __version__, machine
from distcomp_obs.config import Settings
from distcomp_obs.worker.buffer import Held
from distcomp_obs.worker.parts import REDIS_DOWN, Parts, Tally

log = logging.getLogger(__name__)
TICK_S = 0.25


@dataclass(slots=True)
class Chore:
    name: str
    run: Callable[[], float]  # does the work; returns seconds until it is due again
    on_redis_down: float  # seconds until the next try when Redis is away
    due: float = 0.0  # time.monotonic()


class Chores:
    def __init__(
        self, settings: Settings, incarnation: str, parts: Parts, tally: Tally, request_stop: Callable[[], None]
    ) -> None:
        self.s = settings
        self.name = settings.name
        self.q = parts.q
        self.incarnation = incarnation
        self.pool = parts.pool
        self.buffer = parts.buffer
        self.results = parts.results
        self.memory = parts.memory
        self.redis = parts.redis
        self.lease = parts.lease
        self.liveness = parts.liveness
        self.stopping = parts.stopping
        self.reconcile_wanted = parts.reconcile_wanted
        self.wake = parts.wake
        self.server_id = ""  # run_id of the Redis serving the queue, as last seen
        self.tally = tally
        self.request_stop = request_stop
        self.give_back: Callable[[list[Held], str], None] = lambda held, reason: None  # the fetcher's
        self.metrics_url = ""
        self.started_ms = 0  # server time just before the first heartbeat: stop requests before it are not ours
        self.epoch: str | None = None
        self.registered: list[str] = []
        self.rng = random.Random()
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.table = [
            Chore("heartbeat", self._beat, min(1.0, settings.heartbeat_interval_s)),
            Chore("reap", self._reap, settings.heartbeat_interval_s),
            Chore("retention", self._retain, settings.heartbeat_interval_s),
            Chore("memory", self._watch_memory, TICK_S),
        ]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self.liveness.chores_beat = time.monotonic()  # for /livez
            for chore in self.table:
                now = time.monotonic()
                if now < chore.due:
                    continue
                try:
                    chore.due = now + chore.run()
                    self.redis.mark(True, chore.name)  # clears only what this chore marked down
                except REDIS_DOWN as exc:  # an idle worker learns of outages here; each chore on its own
                    self.redis.mark(False, chore.name, exc)
                    chore.due = now + chore.on_redis_down
                except redis.RedisError as exc:
                    log.error("worker %s: %s error: %s", self.name, chore.name, exc)
                    chore.due = now + self.s.heartbeat_interval_s
            self.stopped.wait(TICK_S)

    # --- heartbeat -----------------------------------------------------------------------------
    def _beat(self) -> float:
        self.heartbeat_once()
        return self.s.heartbeat_interval_s

    def status(self) -> dict[str, Any]:
        mem = self.memory.figures  # read by the memory chore at most 0.25 s ago
        s = self.s
        return {
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "cores": self.pool.cores,
            "mem_total_gb": round(mem.total_gb, 2),
            "mem_available_gb": round(mem.available_gb, 2),
            "concurrency": s.concurrency,
            "running": self.pool.busy(),
            "buffered": len(self.buffer),
            "holds": self._held(),  # by its own count ("held" in `distcomp workers` is Redis's)
            "finished": self.tally.finished,
            "failed": self.tally.failed,
            "variant": s.variant_name,
            "pipeline": s.pipeline,
            "prefetch": s.prefetch,
            "polling": s.polling,
            "poll_interval_s": s.poll_interval_s,
            "task_timeout_s": s.task_timeout_s,  # the exporter's stuck-task threshold (DistcompTaskStuck)
            "metrics_url": self.metrics_url,
            "incarnation": self.incarnation,
            "stopping": self.stopping.is_set(),
        }

    def _held(self) -> int:
        """Tasks this worker holds: buffered, running, or done and not yet recorded. Counted in
        the order tasks move (buffer -> slot -> result), so a task moving meanwhile is counted
        twice rather than missed: the audit flags Redis recording more than this as phantom."""
        return len(self.buffer) + self.pool.busy() + self.results.pending()

    def heartbeat_once(self) -> None:
        if not self.started_ms:
            # read before the beat that registers us: a stop request made once we show as
            # registered is stamped at or after it, however soon it follows
            self.started_ms = self.q.server_time_ms()
        sent_at = time.monotonic()
        beat = self.q.heartbeat(self.name, self.incarnation, int(self.s.lease_s * 1000), self.status())
        self.registered = beat.workers
        self.liveness.heartbeat_ok_at = time.monotonic()  # for /healthz
        if beat.lease == -1:
            self.lease.lost()
            log.error("worker %s: another live process holds this name; stopping", self.name)
            self.request_stop()
        else:
            if beat.lease == 0:
                self._after_lease_gap()
            self.lease.renewed(sent_at)
        if self.epoch and beat.epoch != self.epoch:
            log.critical(
                "worker %s: the queue's epoch changed (%s -> %s): Redis restarted WITHOUT its data. "
                "Tasks submitted before are gone; enable appendonly.",
                self.name,
                self.epoch,
                beat.epoch,
            )
            self.epoch = beat.epoch or self.q.ensure_epoch()
            self.give_back(self.buffer.take_all(), "lease_gap")  # tasks Redis no longer knows: never run
        run_id = self.q.server_id()
        if self.server_id and run_id != self.server_id:
            log.warning("worker %s: Redis restarted or failed over (its run_id changed): checking what it "
                        "records this worker holding", self.name)  # fmt: skip
            self.reconcile_wanted.set()
            self.wake.poke()  # an idle fetch loop may be waiting for a wake-up
        self.server_id = run_id
        stop = beat.stop_requested
        if stop and float(stop) >= self.started_ms and not self.stopping.is_set():
            log.info("worker %s: stop requested by `distcomp stop-workers`: draining", self.name)
            self.request_stop()

    def _after_lease_gap(self) -> None:
        """Our lease had expired (frozen, cut off): the reaper may have handed our buffered tasks to
        others, so none of them starts here; those Redis still records as ours (same token) go back
        to the queue, the rest are someone else's now. Running tasks finish; their reports are
        fenced. Slots wait meanwhile: the lease is not trusted until renewed below."""
        dropped = self.buffer.take_all()
        log.warning("worker %s: lease had expired (frozen or cut off?); re-taken. Dropped %d buffered task(s) "
                    "(returned if still ours); reports of tasks returned meanwhile will be rejected",
                    self.name, len(dropped))  # fmt: skip
        self.give_back(dropped, "lease_gap")

    # --- reaper --------------------------------------------------------------------------------
    def _reap(self) -> float:
        returned, failed = self.q.reap(
            max_reaps=self.s.max_reaps, names=self.registered, forget_after_s=self.s.forget_dead_after_s
        )
        if returned > 0 or failed > 0:
            log.warning("reaper: returned %d task(s) of dead workers, failed %d poison task(s)", returned, failed)
        # Leaderless but not noisy: with W workers each reaps every W intervals (jittered).
        return self.s.reap_interval_s * max(1, len(self.registered)) * self.rng.uniform(0.5, 1.5)

    # --- retention ---------------------------------------------------------------------------
    def _retain(self) -> float:
        every = self.s.reap_interval_s * max(1, len(self.registered)) * self.rng.uniform(0.5, 1.5)
        if not self.s.keep_done_s and not self.s.keep_done:
            return every
        forgotten = self.q.retain(self.s.keep_done_s, self.s.keep_done)
        if forgotten:
            log.info("retention: forgot %d done task(s) past keep_done_s/keep_done", forgotten)
            return 0.0 if forgotten >= 1000 else every  # more may be due: go on soon
        return every

    # --- memory --------------------------------------------------------------------------------
    def _watch_memory(self) -> float:
        self.memory.figures = figures = machine.memory()
        available = figures.available_gb
        floor = self.s.min_free_dram_gb
        if not floor or available >= floor:
            return TICK_S
        newest = self.pool.newest()
        if newest is not None and not newest[1].kill_reason:
            held, running = newest
            log.warning("worker %s: free memory %.2f GB below the floor %.2f GB: killing and returning the newest "
                        "task %r", self.name, available, floor, held.line)  # fmt: skip
            running.kill("memory_pressure")
        return TICK_S
