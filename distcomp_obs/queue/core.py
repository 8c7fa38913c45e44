"""`Queue`: the claim protocol's Lua scripts and the read models, typed at this boundary.

Multi-key steps are Lua scripts (queue/scripts.py), called directly rather than inside a
pipeline: redis-py adds a SCRIPT EXISTS round trip for scripts queued in a pipeline. Replies are
parsed into records.py types inside the timed round trip, so hooks on it (the tracer's exemplar)
and everything past this module see typed records, never raw Lua replies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import redis
from redis.client import PubSub

from distcomp_obs.errors import QueueLayoutError, SubmitIncomplete
from distcomp_obs.keys import Keys
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.queue import scripts
from distcomp_obs.records import (
    LAYOUT,
    NO_JOB,
    Claimed,
    ClaimLimits,
    ClaimResult,
    DoneRecord,
    Heartbeat,
    Holding,
    Report,
    ReportCode,
    Snapshot,
    parse_meta,
    todo_line,
)
from distcomp_obs.redis_io import Client, RedisRefused, RoundTrips, outage_cause, server_run_id, server_time

T = TypeVar("T")
SUBMIT_BATCH = 1000
STATES = ("todo", "in_progress", "finished", "failed")
#: Keys of layouts up to 2 (`<prefix>:<record>`, no hash tag) that only a queue with tasks has.
LEGACY_RECORDS = ("task_meta", "layout", "todo_index", "finished_tasks")


class Queue:
    def __init__(self, client: Client, prefix: str = Keys.prefix, roundtrips: RoundTrips | None = None) -> None:
        self.r = client
        self.keys = Keys(prefix)
        self._keys_cache: dict[str, list[str]] = {}
        self.rt = roundtrips or RoundTrips(WorkerMetrics(None))
        self._scripts = {name: client.register_script(scripts.source(name)) for name in scripts.SCRIPT_NAMES}
        self._layout_ok = False

    def _members(self, key: str) -> set[bytes | str]:
        return self.r.smembers(key)

    def _script_keys(self, worker: str) -> list[str]:
        cached = self._keys_cache.get(worker)
        if cached is None:  # built once per worker name: the claim/report hot path reuses it
            cached = self._keys_cache[worker] = self.keys.script_keys(worker)
        return cached

    def _run(
        self,
        op: str,
        script: str,
        worker: str,
        args: Sequence[Any],
        parse: Callable[[Any], T],
        extra_keys: Sequence[str] = (),
    ) -> T:
        keys = self._script_keys(worker) + list(extra_keys) if extra_keys else self._script_keys(worker)
        run = self._scripts[script]
        return self.rt.call(op, 1, lambda: parse(run(keys=keys, args=list(args))))

    # --- layout --------------------------------------------------------------------------------
    def check_layout(self) -> None:
        """Refuse a queue whose records were written by an older layout (claims would never see
        its waiting tasks: misread, never lost). Layouts up to 2 named keys `<prefix>:<record>`,
        without the hash tag, so those are looked for too."""
        if self._layout_ok:
            return
        untagged = self.keys.prefix
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.layout)
        pipe.hlen(self.keys.tasks)
        layout, known = pipe.execute()
        if layout is None and int(known) == 0:
            try:
                if not any(self.r.exists(untagged + name) for name in LEGACY_RECORDS):
                    return  # empty: the first submit records the layout
                layout = self.r.get(untagged + "layout")
            except redis.exceptions.NoPermissionError:
                return  # an ACL user limited to `{prefix}:*` keys cannot have written the old ones
        if layout is None or _text(layout) != str(LAYOUT):
            found = "an older distcomp-obs" if layout is None else f"record layout {_text(layout)}"
            raise QueueLayoutError(
                f"queue {self.keys.prefix!r} was written by {found} (this version uses record layout {LAYOUT}): "
                "drain it with the version that wrote it, or delete it with `distcomp reset --yes`"
            )
        self._layout_ok = True

    # --- submit ------------------------------------------------------------------------------
    def submit(self, lines: Sequence[str], trace: str = "", job: str = NO_JOB) -> int:
        """Add normalised task lines to `job`; returns how many were new. One round trip (one atomic
        script) per 1000 lines; if Redis stops one part way, SubmitIncomplete says how many were added."""
        self.check_layout()
        added = 0
        epoch = uuid.uuid4().hex
        for start in range(0, len(lines), SUBMIT_BATCH):
            batch = lines[start : start + SUBMIT_BATCH]
            try:
                added += self._run("submit", "submit", "-", [epoch, trace, job or NO_JOB, *batch], int)
            except redis.RedisError as exc:
                why = str(exc) if isinstance(exc, RedisRefused) else f"Redis is {outage_cause(exc)} ({exc})"
                raise SubmitIncomplete(added, len(lines), why) from None
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

    def server_time_ms(self) -> int:
        """Now, by the clock of the Redis serving this queue: liveness is never judged by ours."""
        sec, usec = self.rt.call("heartbeat", 1, server_time, self.r, self.keys.tasks)
        return int(sec) * 1000 + int(usec) // 1000

    def server_id(self) -> str:
        """The run_id of the Redis serving this queue (see redis_io.server_run_id)."""
        return self.rt.call("heartbeat", 1, server_run_id, self.r, self.keys.tasks)

    def ensure_epoch(self) -> str:
        self.rt.call("heartbeat", 1, self.r.set, self.keys.epoch, uuid.uuid4().hex, nx=True)
        return str(self.rt.call("heartbeat", 1, self.r.get, self.keys.epoch))

    def heartbeat(self, worker: str, incarnation: str, lease_ms: int, status: dict[str, Any]) -> Heartbeat:
        args = [worker, incarnation, lease_ms, json.dumps(status)]
        return self._run("heartbeat", "heartbeat", worker, args, _heartbeat)

    def leave(self, worker: str, incarnation: str) -> int:
        return self._run("heartbeat", "leave", worker, [worker, incarnation], int)

    def held_by(self, worker: str) -> set[str]:
        """Tasks Redis records as held by this worker name (a walk of in_progress_tasks: restart
        and reconciliation only)."""
        return self.rt.call("reconcile", 1, lambda: set(self.holdings(worker)))

    def holdings(self, worker: str | None = None) -> dict[str, Holding]:
        """task -> who holds it, for every claimed task (or one worker's)."""
        out = {}
        for task, value in self.r.hscan_iter(self.keys.in_progress_tasks, count=1000):
            held = Holding.parse(_text(value))
            if worker is None or held.worker == worker:
                out[_text(task)] = held
        return out

    # --- claim and report: one atomic round trip each -----------------------------------------
    def claim(self, worker: str, incarnation: str, n: int, limits: ClaimLimits) -> ClaimResult:
        args = [worker, incarnation, n, limits.free_dram_gb, limits.cpus, limits.window]
        return self._run("claim", "claim", worker, args, _claim_result)

    def settle(
        self,
        worker: str,
        incarnation: str,
        reports: Sequence[Report],
        claim_n: int,
        limits: ClaimLimits,
        max_retry: int,
        started: Sequence[tuple[str, str]] = (),
    ) -> ClaimResult:
        """Record reports, mark `started` (task, token) pairs as running (a death of this worker
        then counts toward their poison limit) and claim up to claim_n more, atomically, in one
        round trip."""
        args: list[Any] = [worker, incarnation, claim_n, limits.free_dram_gb, limits.cpus, limits.window]
        args += [max_retry, len(reports)]
        reported = set()
        for rep in reports:
            args += [rep.task, rep.token, rep.outcome, rep.payload, rep.detail]
            reported.add(rep.task)
        # A task reported here needs no start mark: its report releases it anyway.
        marks = [(task, token) for task, token in started if task not in reported]
        args.append(len(marks))
        for task, token in marks:
            args += [task, token]
        op = "claim" if claim_n and not reports else "report"
        return self._run(op, "settle", worker, args, _settle_result)

    def requeue(self, worker: str, held: Sequence[tuple[str, str]], op: str = "return", max_reaps: int = 0) -> int:
        """Return held (task, token) pairs to todo in one round trip; token '' = any token of ours.
        max_reaps > 0: the holder died (a restart under its name): count it as the reaper would."""
        if not held:
            return 0
        args: list[str | int] = [worker, max_reaps]
        for task, token in held:
            args += [task, token]
        return self._run(op, "requeue", worker, args, int)

    def reap(self, max_tasks: int = 500, max_reaps: int = 3, lock_ms: int = 5000,
             names: list[str] | None = None, forget_after_s: float = 3600.0) -> tuple[int, int]:  # fmt: skip
        """Return the tasks of workers whose lease expired (any worker may call this; a lock keeps one
        at a time). `names`: the registered workers if the caller knows them (saves a round trip).
        Returns (returned, failed for good); (-1, 0) when another reaper holds the lock."""
        if names is None:
            names = sorted(_texts(self.rt.call("reap", 1, self._members, self.keys.workers)))
        if not names:
            return 0, 0
        extra: list[str] = []
        for name in names:
            extra.append(self.keys.lease(name))
        args = [uuid.uuid4().hex, lock_ms, max_tasks, max_reaps, int(forget_after_s * 1000), *names]
        return self._run("reap", "reap", "-", args, _int_pair, extra)

    # --- retention --------------------------------------------------------------------------
    def retain(self, keep_s: float, keep_count: int, max_events: int = 200) -> int:
        """Forget the oldest done tasks beyond `keep_s` seconds or `keep_count` tasks (0: no
        limit); returns how many (expire.lua). Counters are kept forever."""
        args = ["retain", int(keep_s * 1000), keep_count, max_events]
        return self._run("reap", "expire", "-", args, int)  # housekeeping, as the reaper

    def cancel(self, tasks: Sequence[str], who: str, reason: str = "cancelled") -> list[str]:
        """Cancel these tasks (cancel.lua): one word per task, "cancelled" for those that were waiting."""
        return self._run("return", "cancel", "-", [who, reason, *tasks], list) if tasks else []

    def forget(self, state: str, tasks: Sequence[str]) -> int:
        """Forget these tasks if they are in `state` ("finished" | "failed"): records and dedup
        entry go, so the same lines may be submitted again."""
        return self._run("reap", "expire", "-", [state, *tasks], int) if tasks else 0

    # --- reads for status, workers, the exporter and the audit --------------------------------
    def counts(self) -> dict[str, int]:
        """Tasks per state, O(1) each."""
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(k.todo_tasks)
        for key in (k.in_progress_tasks, k.finished_tasks, k.failed_final, k.cancelled_tasks, k.tasks):
            pipe.hlen(key)
        todo, running, finished, failed, cancelled, known = (int(n) for n in pipe.execute())
        return {"todo": todo, "in_progress": running, "finished": finished, "failed": failed, "cancelled": cancelled,
                "known": known}  # fmt: skip

    def stats(self) -> dict[str, int]:
        return {_text(name): int(v) for name, v in self.r.hgetall(self.keys.stats).items()}

    def oldest_ages_s(self) -> dict[str, float | None]:
        """Age in seconds of the oldest waiting and the oldest running task (server time)."""
        todo, running = self._run("poll", "ages", "-", [], _int_pair)
        return {
            "todo": todo / 1000 if todo >= 0 else None,
            "in_progress": running / 1000 if running >= 0 else None,
        }

    def snapshot(self) -> Snapshot:
        """What the exporter serves, in three round trips: lengths (ZCARD/HLEN), the Redis-kept
        counters, the registry and the oldest ages (ages.lua: a step per resource class and
        priority in use, and a walk of the claimed tasks only). Waiting and done tasks are never
        walked, so a 1,000,000-task queue costs the same."""
        k = self.keys
        ages = self.oldest_ages_s()
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(k.todo_tasks)
        pipe.hlen(k.in_progress_tasks)
        pipe.hlen(k.finished_tasks)
        pipe.hlen(k.failed_final)
        pipe.hlen(k.cancelled_tasks)
        pipe.hgetall(k.stats)
        pipe.time()
        pipe.smembers(k.workers)
        pipe.smembers(k.todo_classes)
        todo, running, finished, failed, cancelled, stats, (sec, usec), names, classes = pipe.execute()
        now_s = sec + usec / 1e6
        counts = {"todo": todo, "in_progress": running, "finished": finished, "failed": failed, "cancelled": cancelled}
        return Snapshot(
            counts={state: int(n) for state, n in counts.items()},
            stats={name: int(v) for name, v in stats.items()},
            oldest_age_s=ages,
            workers=self._statuses(sorted(names), held=False),
            server_time_s=now_s,
            classes=self._class_counts(_texts(classes)),
        )

    def _statuses(self, names: list[str], held: bool) -> dict[str, dict[str, Any]]:
        """Last heartbeat of each worker, "live" (lease alive) and, with `held`, tasks it holds."""
        if not names:
            return {}
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.worker_status, names)
        for name in names:
            pipe.pttl(self.keys.lease(name))
        statuses, *ttls = pipe.execute()
        counts: dict[str, int] = {}
        if held:
            for holding in self.holdings().values():
                counts[holding.worker] = counts.get(holding.worker, 0) + 1
        out: dict[str, dict[str, Any]] = {}
        for name, raw, ttl in zip(names, statuses, ttls, strict=True):
            info: dict[str, Any] = json.loads(raw) if raw else {}
            info["live"] = int(ttl) > 0
            if held:
                info["held"] = counts.get(name, 0)
            out[name] = info
        return out

    def list_state(self, state: str) -> dict[str, str]:
        """task -> detail for one state (todo: "", in_progress: worker, finished: stdout, failed: reason)."""
        k = self.keys
        if state == "todo":
            return {todo_line(_text(m)): "" for m, _ in self.r.zscan_iter(k.todo_tasks, count=1000)}
        if state == "in_progress":
            return {task: held.worker for task, held in self.holdings().items()}
        return {task: record.body for task, record in self.records(state).items()}

    def scan_state(self, state: str, cursor: int, match: str | None, count: int) -> tuple[int, list[tuple[str, str]]]:
        """One SCAN step over a state's tasks (those whose line matches the glob `match`): the next
        cursor (0: done) and (task, value) pairs: todo "", in_progress its holding, done states
        their record. A page of the console follows this rather than reading a whole state."""
        k = self.keys
        if state == "todo":
            cursor, members = self.r.zscan(k.todo_tasks, cursor, match=match, count=count)
            return cursor, [(todo_line(_text(m)), "") for m, _ in cast(list[tuple[str, float]], members)]
        cursor, fields = self.r.hscan(k.state_hash(state), cursor, match=match, count=count)
        return cursor, [(_text(t), _text(v)) for t, v in cast(dict[str, str], fields).items()]

    def records(self, state: str) -> dict[str, DoneRecord]:
        """task -> its done record, for the "finished", "failed" or "cancelled" tasks."""
        scan = self.r.hscan_iter(self.keys.state_hash(state), count=1000)
        return {_text(task): DoneRecord.parse(_text(v)) for task, v in scan}

    def metas(self, lines: Sequence[str]) -> dict[str, str]:
        """line -> its `tasks` value ("seq submitted_us job[ trace]") for the known ones, one HMGET per 1,000."""
        return self._hmget(self.keys.tasks, lines)

    def ids(self, lines: Sequence[str]) -> dict[str, str]:
        """line -> id (its submit seq) of these known tasks."""
        return {line: str(parse_meta(meta)[0]) for line, meta in self.metas(lines).items()}

    def task_lines(self, task_ids: Sequence[str]) -> dict[str, str]:
        """id -> the task line it names, for the ids of known tasks, one HMGET per 1,000."""
        return self._hmget(self.keys.task_ids, task_ids)

    def task_line(self, task_id: str) -> str | None:
        """The task whose id (its submit seq) this is, None if unknown or forgotten."""
        line = self.r.hget(self.keys.task_ids, task_id)
        return _text(line) if line is not None else None

    def _hmget(self, key: str, fields: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(fields), SUBMIT_BATCH):
            chunk = list(fields[start : start + SUBMIT_BATCH])
            for name, value in zip(chunk, self.r.hmget(key, chunk), strict=True):
                if value is not None:
                    out[name] = _text(value)
        return out

    def meta(self, task: str) -> tuple[int, int, str] | None:
        """(seq, submitted µs, trace) of a known task, None if unknown."""
        raw = self.r.hget(self.keys.tasks, task)
        return parse_meta(_text(raw)) if raw is not None else None

    def waiting_classes(self) -> dict[str, int]:
        """Waiting tasks per resource class ("min_dram_gb:min_cpu"), classes with none left out."""
        return self._class_counts(_texts(self.r.smembers(self.keys.todo_classes)))

    def _class_counts(self, classes: list[str]) -> dict[str, int]:
        if not classes:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for cls in classes:
            pipe.zlexcount(self.keys.todo_tasks, f"[{cls}|", f"({cls}|~")
        counts = {cls: int(n) for cls, n in zip(classes, pipe.execute(), strict=True)}
        return {cls: n for cls, n in counts.items() if n > 0}

    def todo_in_order(self, limit: int | None = None) -> list[str]:
        """Waiting tasks in claim order (across resource classes: by claim score)."""
        members = [_text(m) for m, _ in self.r.zscan_iter(self.keys.todo_tasks, count=1000)]
        ordered = [task for _, task in sorted(m.split("|", 1)[1].split("|", 1) for m in members)]
        return ordered if limit is None else ordered[:limit]

    def workers(self) -> dict[str, dict[str, Any]]:
        """Registered workers with their last heartbeat, whether their lease is alive, tasks held."""
        return self._statuses(sorted(_texts(self.r.smembers(self.keys.workers))), held=True)

    def last_event_id(self) -> str:
        """ID of the newest terminal-transition event ('0-0' if none): a starting point for wait_event."""
        last: Any = self.r.xrevrange(self.keys.events, count=1)
        return str(last[0][0]) if last else "0-0"

    def wait_event(self, after_id: str, timeout_ms: int) -> tuple[str, dict[str, str]] | None:
        """Block until a task reaches a terminal state after `after_id` (the bench's pickup probe)."""
        got: Any = self.r.xread({self.keys.events: after_id}, count=1, block=timeout_ms)
        if not got:
            return None
        event_id, fields = got[0][1][0]
        return str(event_id), dict(fields)

    # --- wake-ups -----------------------------------------------------------------------------
    def subscribe_wake(self) -> PubSub:
        pubsub: PubSub = self.r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self.keys.wake_channel)
        return pubsub


# --- reply parsers: raw replies become records here and nowhere else ---------------------------
def _text(value: bytes | str) -> str:
    """Replies are decoded (decode_responses=True); redis-py's types still allow bytes."""
    return value.decode() if isinstance(value, bytes) else value


def _texts(values: Iterable[bytes | str]) -> list[str]:
    return [_text(v) for v in values]


def _claimed(flat: Sequence[str]) -> list[Claimed]:
    """token, task1, meta1, task2, meta2, ... (one claim token for the batch) or nothing."""
    if not flat:
        return []
    token = flat[0]
    return [Claimed.from_reply(flat[i], token, flat[i + 1]) for i in range(1, len(flat), 2)]


def _claim_result(raw: list[Any]) -> ClaimResult:
    """claim.lua: {status (1 ok, -1 lease lost), remaining, token, task, meta, ...}."""
    return ClaimResult(raw[0] == 1, int(raw[1]), _claimed(raw[2:]))


def _settle_result(raw: list[Any]) -> ClaimResult:
    """settle.lua: {status, remaining, {code per report}, {tasks to stop}, token, task, meta, ...}."""
    codes = [ReportCode(int(c)) for c in raw[2]]
    return ClaimResult(raw[0] == 1, int(raw[1]), _claimed(raw[4:]), codes, _texts(raw[3]))


def _heartbeat(raw: list[Any]) -> Heartbeat:
    state, epoch, stop, workers = raw
    return Heartbeat(int(state), epoch or None, stop or None, sorted(workers))


def _int_pair(raw: list[Any]) -> tuple[int, int]:
    return int(raw[0]), int(raw[1])
