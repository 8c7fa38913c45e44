"""The pieces a worker's threads share, made once by Worker.run and handed to each role.
Each piece guards its own state (see its module); Parts only gathers them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from distcomp_obs import tracing
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.queue import Queue
from distcomp_obs.worker.buffer import PrefetchBuffer
from distcomp_obs.worker.health import Lease, Liveness, RedisHealth
from distcomp_obs.worker.results import Results
from distcomp_obs.worker.slots import Memory, SlotPool
from distcomp_obs.worker.wake import WakeSignal

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


@dataclass(slots=True)
class Tally:
    """Tasks this worker recorded (written by the fetch loop only; the heartbeat reads them)."""

    finished: int = 0
    failed: int = 0


@dataclass(slots=True)
class Parts:
    """The shared pieces, built by Worker.run."""

    q: Queue
    buffer: PrefetchBuffer
    pool: SlotPool
    results: Results
    wake: WakeSignal
    redis: RedisHealth
    lease: Lease
    liveness: Liveness
    memory: Memory
    metrics: WorkerMetrics
    tracer: tracing.WorkerTracer | None
    stopping: threading.Event
    hard_stop: threading.Event
    # set by the heartbeat when Redis restarted or failed over (its run_id changed): it may have
    # lost writes, so the fetch loop compares what Redis records us holding with what we hold
    reconcile_wanted: threading.Event = field(default_factory=threading.Event)
