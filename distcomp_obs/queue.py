"""The only module that issues queue commands to Redis.

Multi-key steps are Lua scripts in `lua/*.lua` (each prefixed with `lua/lib.lua`), called
directly rather than inside a pipeline: redis-py adds a SCRIPT EXISTS round trip for scripts
queued in a pipeline. With `pipeline=False` the worker uses DistComp's protocol instead: one
command per round trip, ordered so that a crash between any two at worst runs a task twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis

from distcomp_obs.keys import Keys
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.redis_io import RoundTrips
from distcomp_obs.task import MAX_PRIORITY, parse_line

SUBMIT_BATCH = 1000
EVENTS_MAXLEN = 100_000
#: How far down the priority index a claim looks for tasks this worker may run.
CLAIM_WINDOW = 200
DELETE_BATCH = 500


def _load_script(name: str) -> str:
    lua = resources.files("distcomp_obs") / "lua"
    return (lua / "lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(slots=True)
class Claimed:
    task: str
    token: str
    meta: dict[str, Any]


@dataclass(slots=True)
class ClaimResult:
    lease_ok: bool
    remaining: int
    tasks: list[Claimed] = field(default_factory=list)
    report_codes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    task: str
    token: str
    outcome: str  # "finished" | "failed"
    payload: str  # stdout on success, the reason on failure


@dataclass(slots=True)
class Snapshot:
    """Queue-level state read at once (the exporter's scrape)."""

    counts: dict[str, int]  # todo, in_progress (buffered + running), finished, failed (for good)
    stats: dict[str, int]  # the Redis-kept counters: submitted, claimed, finished, failed, ...
    oldest_age_s: dict[str, float | None]  # todo, in_progress; None when empty
    workers: dict[str, dict[str, Any]]  # registered workers: last status + "live" (lease alive)
    server_time_s: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    lease: int  # 1 renewed, 0 expired and re-taken, -1 held by another process
    epoch: str | None
    stop_requested: str | None
    workers: list[str]  # registered workers: the reaper's cadence scales with their number


#: report codes, as returned by report_one in lib.lua
FINISHED, FAILED_FINAL, RETRIED, DUPLICATE, STALE = 1, 2, 3, 0, -1


@dataclass(frozen=True, slots=True)
class ClaimLimits:
    free_dram_gb: float
    cpus: float
    window: int = CLAIM_WINDOW


class Queue:
    def __init__(self, client: redis.Redis, prefix: str = Keys.prefix, roundtrips: RoundTrips | None = None) -> None:
        self.r = client
        self.keys = Keys(prefix)
        self._keys_cache: dict[str, list[str]] = {}
        self.rt = roundtrips or RoundTrips(WorkerMetrics(None))
        self._scripts = {
            name: client.register_script(_load_script(name))
            for name in ("claim", "settle", "requeue", "heartbeat", "reap", "submit", "leave")
        }

    # --- key layout for scripts ------------------------------------------------------------
    def _script_keys(self, worker: str = "-") -> list[str]:
        cached = self._keys_cache.get(worker)
        if cached is None:  # built once per worker name: the claim/report hot path reuses it
            cached = self._keys_cache[worker] = self._build_script_keys(worker)
        return cached

    def _build_script_keys(self, worker: str) -> list[str]:
        k = self.keys
        return [
            k.todo_index,
            k.todo_tasks,
            k.todo_age,
            k.in_progress_tasks,
            k.in_progress_age,
            k.claims,
            k.settled,
            k.finished_tasks,
            k.failed_tasks,
            k.task_fail_reason,
            k.failed_final,
            k.attempts,
            k.reap_count,
            k.terminal_count,
            k.events,
            k.stats,
            k.task_meta,
            k.seq,
            k.epoch,
            k.workers,
            k.worker_status,
            k.wake_channel,
            k.reap_lock,
            k.stop_requested,
            k.owned(worker),
            k.lease(worker),
        ]

    def _run(self, op: str, script: str, worker: str, args: Sequence[Any], extra_keys: Sequence[str] = ()) -> Any:
        keys = self._script_keys(worker) + list(extra_keys) if extra_keys else self._script_keys(worker)
        return self.rt.call(op, 1, self._scripts[script], keys=keys, args=list(args))

    # --- submit ------------------------------------------------------------------------------
    def submit(self, lines: Iterable[str], trace: str = "") -> int:
        """Add normalised task lines; returns how many were new. One round trip per 1000 lines."""
        added = 0
        batch: list[str] = []
        epoch = uuid.uuid4().hex
        for line in lines:
            batch.append(line)
            if len(batch) >= SUBMIT_BATCH:
                added += int(self._run("submit", "submit", "-", [epoch, trace, *batch]))
                batch = []
        if batch:
            added += int(self._run("submit", "submit", "-", [epoch, trace, *batch]))
        return added

    # --- worker registration ------------------------------------------------------------------
    def acquire_lease(self, worker: str, incarnation: str, lease_ms: int) -> bool:
        ok = self.rt.call("heartbeat", 1, self.r.set, self.keys.lease(worker), incarnation, nx=True, px=lease_ms)
        return bool(ok)

    def lease_holder(self, worker: str) -> tuple[str | None, int]:
        """(incarnation, remaining ms) of the lease on a worker name."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.lease(worker))
        pipe.pttl(self.keys.lease(worker))
        holder, ttl = self.rt.call("heartbeat", 2, pipe.execute)
        return holder, int(ttl)

    def ensure_epoch(self) -> str:
        self.rt.call("heartbeat", 1, self.r.set, self.keys.epoch, uuid.uuid4().hex, nx=True)
        return str(self.rt.call("heartbeat", 1, self.r.get, self.keys.epoch))

    def heartbeat(self, worker: str, incarnation: str, lease_ms: int, status: dict[str, Any]) -> Heartbeat:
        args = [worker, incarnation, lease_ms, json.dumps(status)]
        state, epoch, stop, workers = self._run("heartbeat", "heartbeat", worker, args)
        return Heartbeat(int(state), epoch, stop, sorted(workers))

    def leave(self, worker: str, incarnation: str) -> int:
        return int(self._run("heartbeat", "leave", worker, [worker, incarnation]))

    def owned(self, worker: str) -> set[str]:
        return set(self.rt.call("reconcile", 1, self.r.smembers, self.keys.owned(worker)))

    # --- claim and report: pipelined (one atomic round trip each) --------------------------------
    def claim(self, worker: str, incarnation: str, n: int, limits: ClaimLimits) -> ClaimResult:
        raw = self._run(
            "claim", "claim", worker, [worker, incarnation, n, limits.free_dram_gb, limits.cpus, limits.window]
        )
        return ClaimResult(raw[0] == 1, int(raw[1]), _claimed(raw[2:]))

    def settle(
        self,
        worker: str,
        incarnation: str,
        reports: Sequence[Report],
        claim_n: int,
        limits: ClaimLimits,
        max_retry: int,
    ) -> ClaimResult:
        """Record reports and claim up to claim_n more, atomically, in one round trip."""
        args: list[Any] = [
            worker,
            incarnation,
            claim_n,
            limits.free_dram_gb,
            limits.cpus,
            limits.window,
            max_retry,
            len(reports),
        ]
        for rep in reports:
            args += [rep.task, rep.token, rep.outcome, rep.payload]
        op = "claim" if claim_n and not reports else "report"
        raw = self._run(op, "settle", worker, args)
        return ClaimResult(raw[0] == 1, int(raw[1]), _claimed(raw[3:]), [int(c) for c in raw[2]])

    def requeue(self, worker: str, held: Sequence[tuple[str, str]], op: str = "return", max_reaps: int = 0) -> int:
        """Return held (task, token) pairs to todo in one round trip; token '' = any token of ours.
        max_reaps > 0: the holder died (a restart under its name): count it as the reaper would."""
        if not held:
            return 0
        args: list[str | int] = [worker, max_reaps]
        for task, token in held:
            args += [task, token]
        return int(self._run(op, "requeue", worker, args))

    def reap(self, max_tasks: int = 500, max_reaps: int = 3, lock_ms: int = 5000,
             names: list[str] | None = None, forget_after_s: float = 3600.0) -> tuple[int, int]:  # fmt: skip
        """Return the tasks of workers whose lease expired (any worker may call this; a lock keeps one
        at a time). `names`: the registered workers if the caller knows them (saves a round trip)."""
        if names is None:
            names = sorted(self.rt.call("reap", 1, self.r.smembers, self.keys.workers))
        if not names:
            return 0, 0
        extra: list[str] = []
        for name in names:
            extra += [self.keys.lease(name), self.keys.owned(name)]
        returned, failed = self._run(
            "reap",
            "reap",
            "-",
            [uuid.uuid4().hex, lock_ms, max_tasks, max_reaps, int(forget_after_s * 1000), *names],
            extra,
        )
        return int(returned), int(failed)

    # --- claim and report: DistComp's protocol, one command per round trip ---------------------
    def _one(self, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.rt.call(op, 1, fn, *args, **kwargs)

    def claim_unpipelined(self, worker: str, incarnation: str, limits: ClaimLimits) -> ClaimResult:
        """Claim one task with separate commands. The owned set is written first, so a crash
        at any point leaves the task either in todo or owned by this worker (the reaper's)."""
        k, r = self.keys, self.r
        if self._one("claim", r.get, k.lease(worker)) != incarnation:
            return ClaimResult(False, 0)
        candidates: list[str] = self._one("claim", r.zrange, k.todo_index, 0, limits.window - 1)
        for task in candidates:
            t = parse_line(task)
            if t.min_dram_gb > limits.free_dram_gb or t.min_cpu > limits.cpus:
                continue
            failed_on = self._one("claim", r.hget, k.failed_tasks, task) or ","
            if f",{worker}," in failed_on:
                continue
            self._one("claim", r.sadd, k.owned(worker), task)
            if not self._one("claim", r.zrem, k.todo_index, task):  # another worker won it
                self._one("claim", r.srem, k.owned(worker), task)
                continue
            now_ms = int(time.time() * 1000)
            self._one("claim", r.hdel, k.todo_tasks, task)
            self._one("claim", r.zrem, k.todo_age, task)
            self._one("claim", r.hset, k.in_progress_tasks, task, worker)
            self._one("claim", r.zadd, k.in_progress_age, {task: now_ms})
            token = f"{incarnation}:{self._one('claim', r.hincrby, k.stats, 'claimed', 1)}"
            self._one("claim", r.hset, k.claims, task, token)
            meta = json.loads(self._one("claim", r.hget, k.task_meta, task) or "{}")
            remaining = int(self._one("claim", r.zcard, k.todo_index))
            return ClaimResult(True, remaining, [Claimed(task, token, meta)])
        return ClaimResult(True, len(candidates))

    def report_unpipelined(self, worker: str, rep: Report, max_retry: int) -> int:
        """Record one result with separate commands; returns a report code (FINISHED, ...).
        The claim is consumed (HDEL) before anything is recorded and the owned entry removed
        last, so a crash in between leaves a task the reaper returns: it may run twice, but is
        never lost, and terminal_count (the commit point) is written once."""
        k, r, task = self.keys, self.r, rep.task
        if self._one("report", r.hget, k.claims, task) != rep.token or not self._one("report", r.hdel, k.claims, task):
            if self._one("report", r.hget, k.in_progress_tasks, task) != worker:  # as disown() in lib.lua
                self._one("report", r.srem, k.owned(worker), task)
            if self._one("report", r.hget, k.settled, task) == rep.token:
                return DUPLICATE
            self._one("report", r.hincrby, k.stats, "stale_reports", 1)
            return STALE
        if rep.outcome == "finished":
            self._one("report", r.hset, k.finished_tasks, task, rep.payload)
            code = FINISHED
        else:
            failed_on = self._one("report", r.hget, k.failed_tasks, task) or ","
            self._one("report", r.hset, k.failed_tasks, task, f"{failed_on}{worker},")
            self._one("report", r.hset, k.task_fail_reason, task, rep.payload)
            attempts = self._one("report", r.hincrby, k.attempts, task, 1)
            if attempts > max_retry or not self._retry_possible(f"{failed_on}{worker},"):
                self._one("report", r.hset, k.failed_final, task, rep.payload)
                code = FAILED_FINAL
            else:
                # Release our in-progress record *before* the task becomes claimable again:
                # afterwards another worker may claim it, and our HDEL would erase its record.
                # Until the ZADD it is still in our owned set, so a crash here leaves it to the reaper.
                self._one("report", r.hdel, k.in_progress_tasks, task)
                self._one("report", r.zrem, k.in_progress_age, task)
                meta = json.loads(self._one("report", r.hget, k.task_meta, task) or "{}")
                score = (MAX_PRIORITY - parse_line(task).priority) * 2**32 + int(meta.get("seq", 0))
                now_ms = int(time.time() * 1000)
                # The ZADD to the index makes it claimable, so it comes last: a claim racing in
                # between deleted todo_tasks before we wrote it (test_clock_skew, --no-pipeline).
                self._one("report", r.hset, k.todo_tasks, task, now_ms)
                self._one("report", r.zadd, k.todo_age, {task: now_ms})
                self._one("report", r.zadd, k.todo_index, {task: score})
                self._one("report", r.hincrby, k.stats, "retried", 1)
                self._one("report", r.srem, k.owned(worker), task)
                self._one("report", r.publish, k.wake_channel, "submit 0")
                return RETRIED
        self._one("report", r.hincrby, k.terminal_count, task, 1)  # the commit point
        self._one("report", r.hset, k.settled, task, rep.token)
        self._one("report", r.hincrby, k.stats, "finished" if code == FINISHED else "failed", 1)
        state = "finished" if code == FINISHED else "failed"
        self._one("report", r.xadd, k.events, {"task": task, "state": state}, maxlen=EVENTS_MAXLEN, approximate=True)
        self._one("report", r.hdel, k.in_progress_tasks, task)
        self._one("report", r.zrem, k.in_progress_age, task)
        self._one("report", r.srem, k.owned(worker), task)
        return code

    def _retry_possible(self, failed_on: str) -> bool:
        """Whether a live worker that has not failed this task exists (as lib.lua decides).
        Liveness is judged by the Redis server's clock, as seen_ms was written: with this
        worker's clock 10 minutes fast, every worker looked dead and failures were not retried
        (test_clock_skew_on_one_worker)."""
        sec, usec = self._one("report", self.r.time)
        now_ms = sec * 1000 + usec / 1000
        statuses = self._one("report", self.r.hgetall, self.keys.worker_status)
        for name, raw in statuses.items():
            st = json.loads(raw)
            if f",{name}," not in failed_on and st.get("seen_ms", 0) + st.get("lease_ms", 0) >= now_ms:
                return True
        return False

    # --- reads for status, workers, the exporter and the audit --------------------------------
    def counts(self) -> dict[str, int]:
        """Tasks per state, O(1) each."""
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        for key in (k.todo_index, k.in_progress_tasks, k.finished_tasks, k.failed_final, k.task_meta):
            if key == k.todo_index:
                pipe.zcard(key)
            else:
                pipe.hlen(key)
        todo, running, finished, failed, known = pipe.execute()
        return {"todo": todo, "in_progress": running, "finished": finished, "failed": failed, "known": known}

    def stats(self) -> dict[str, int]:
        return {name: int(v) for name, v in self.r.hgetall(self.keys.stats).items()}

    def oldest_ages_s(self) -> dict[str, float | None]:
        """Age in seconds of the oldest waiting and the oldest running task (server time)."""
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(k.todo_age, 0, 0, withscores=True)
        pipe.zrange(k.in_progress_age, 0, 0, withscores=True)
        (sec, usec), todo, running = pipe.execute()
        now_ms = sec * 1000 + usec / 1000
        return {
            "todo": (now_ms - todo[0][1]) / 1000 if todo else None,
            "in_progress": (now_ms - running[0][1]) / 1000 if running else None,
        }

    def snapshot(self) -> Snapshot:
        """What the exporter serves, in two pipelined round trips of O(1) + O(workers) commands:
        lengths (ZCARD/HLEN), the Redis-kept counters, the head of each age index and the
        registry. Nothing here walks the tasks, so a 1,000,000-task queue costs the same."""
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(k.todo_index)
        pipe.hlen(k.in_progress_tasks)
        pipe.hlen(k.finished_tasks)
        pipe.hlen(k.failed_final)
        pipe.hgetall(k.stats)
        pipe.time()
        pipe.zrange(k.todo_age, 0, 0, withscores=True)
        pipe.zrange(k.in_progress_age, 0, 0, withscores=True)
        pipe.smembers(k.workers)
        todo, running, finished, failed, stats, (sec, usec), oldest_todo, oldest_running, names = pipe.execute()
        now_s = sec + usec / 1e6
        workers: dict[str, dict[str, Any]] = {}
        names = sorted(names)
        if names:
            pipe = self.r.pipeline(transaction=False)
            pipe.hmget(k.worker_status, names)
            for name in names:
                pipe.pttl(k.lease(name))
            statuses, *ttls = pipe.execute()
            for name, raw, ttl in zip(names, statuses, ttls, strict=True):
                info = json.loads(raw) if raw else {}
                info["live"] = ttl > 0
                workers[name] = info
        return Snapshot(
            counts={"todo": todo, "in_progress": running, "finished": finished, "failed": failed},
            stats={name: int(v) for name, v in stats.items()},
            oldest_age_s={
                "todo": max(0.0, now_s - oldest_todo[0][1] / 1000) if oldest_todo else None,
                "in_progress": max(0.0, now_s - oldest_running[0][1] / 1000) if oldest_running else None,
            },
            workers=workers,
            server_time_s=now_s,
        )

    def list_state(self, state: str) -> dict[str, str]:
        """task -> detail for one state (todo: submit ms, in_progress: worker, finished: stdout, failed: reason)."""
        key = {
            "todo": self.keys.todo_tasks,
            "in_progress": self.keys.in_progress_tasks,
            "finished": self.keys.finished_tasks,
            "failed": self.keys.failed_final,
        }[state]
        return dict(self.r.hscan_iter(key, count=1000))

    def todo_in_order(self, limit: int | None = None) -> list[str]:
        return list(self.r.zrange(self.keys.todo_index, 0, -1 if limit is None else limit - 1))

    def workers(self) -> dict[str, dict[str, Any]]:
        """Registered workers with their last heartbeat and whether their lease is alive."""
        names = sorted(self.r.smembers(self.keys.workers))
        if not names:
            return {}
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.worker_status, names)
        for name in names:
            pipe.pttl(self.keys.lease(name))
            pipe.scard(self.keys.owned(name))
        statuses, *rest = pipe.execute()
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(names):
            info = json.loads(statuses[i]) if statuses[i] else {}
            info["live"] = rest[2 * i] > 0
            info["held"] = rest[2 * i + 1]
            out[name] = info
        return out

    def epoch(self) -> str | None:
        return self.r.get(self.keys.epoch)

    def fail_reasons(self, tasks: Sequence[str]) -> list[str | None]:
        return list(self.r.hmget(self.keys.task_fail_reason, list(tasks))) if tasks else []

    def last_event_id(self) -> str:
        """ID of the newest terminal-transition event ('0-0' if none): a starting point for wait_event."""
        last = self.r.xrevrange(self.keys.events, count=1)
        return str(last[0][0]) if last else "0-0"

    def wait_event(self, after_id: str, timeout_ms: int) -> tuple[str, dict[str, str]] | None:
        """Block until a task reaches a terminal state after `after_id` (the bench's pickup probe)."""
        got = self.r.xread({self.keys.events: after_id}, count=1, block=timeout_ms)
        if not got:
            return None
        event_id, fields = got[0][1][0]
        return str(event_id), dict(fields)

    # --- manager operations -------------------------------------------------------------------
    def _forget(
        self, tasks: list[str], hashes: Sequence[str], after_each: Callable[[list[str]], object] | None = None
    ) -> None:
        """Delete these tasks' fields from `hashes`, one transaction per batch, then call
        `after_each(batch)` (retry-failed resubmits each batch right after forgetting it)."""
        for start in range(0, len(tasks), DELETE_BATCH):
            chunk = tasks[start : start + DELETE_BATCH]
            pipe = self.r.pipeline(transaction=True)
            for key in hashes:
                pipe.hdel(key, *chunk)
            pipe.execute()
            if after_each is not None:
                after_each(chunk)

    def retry_failed(self) -> int:
        """Put every failed-for-good task back in todo with a clean failure history. The stats
        counters are never decremented (the exporter serves them as Prometheus counters, and a
        decrease reads as a reset): a retry counts as a new submission."""
        tasks = list(self.list_state("failed"))
        k = self.keys
        hashes = (k.failed_final, k.failed_tasks, k.attempts, k.reap_count, k.terminal_count, k.settled, k.task_meta)
        self._forget(tasks, hashes, after_each=self.submit)
        return len(tasks)

    def purge_finished(self) -> int:
        """Forget finished tasks (so the same lines can be submitted again)."""
        tasks = list(self.list_state("finished"))
        k = self.keys
        hashes = (k.finished_tasks, k.task_meta, k.terminal_count, k.settled, k.attempts, k.failed_tasks,
                  k.task_fail_reason, k.reap_count)  # fmt: skip
        self._forget(tasks, hashes)
        return len(tasks)

    def requeue_dead(self, older_than_s: float) -> tuple[list[str], int]:
        """Treat workers silent for older_than_s as dead: drop their lease, return their tasks."""
        now = time.time()
        dead = [n for n, info in self.workers().items() if now - float(info.get("time", 0)) >= older_than_s]
        for name in dead:
            self.r.delete(self.keys.lease(name))
        returned = 0
        while dead:
            got, _ = self.reap(max_tasks=1000)
            if got <= 0:
                break
            returned += got
        return dead, returned

    def forget_worker(self, worker: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(self.keys.workers, worker)
        pipe.hdel(self.keys.worker_status, worker)
        pipe.execute()

    def request_stop(self) -> None:
        self.r.set(self.keys.stop_requested, str(time.time()))
        self.r.publish(self.keys.wake_channel, "stop")

    def clear_stop(self) -> None:
        self.r.delete(self.keys.stop_requested)

    def reset(self) -> int:
        """Delete this queue's keys only (never FLUSHALL/FLUSHDB/KEYS), in batches."""
        names = list(self.r.smembers(self.keys.workers))
        doomed = self.keys.queue_keys() + [self.keys.owned(n) for n in names] + [self.keys.lease(n) for n in names]
        deleted = 0
        for start in range(0, len(doomed), DELETE_BATCH):
            deleted += int(self.r.unlink(*doomed[start : start + DELETE_BATCH]))
        return deleted

    # --- wake-ups -----------------------------------------------------------------------------
    def subscribe_wake(self) -> redis.client.PubSub:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.wake_channel)
        return pubsub


def _claimed(flat: Sequence[str]) -> list[Claimed]:
    return [Claimed(flat[i], flat[i + 1], json.loads(flat[i + 2])) for i in range(0, len(flat), 3)]
