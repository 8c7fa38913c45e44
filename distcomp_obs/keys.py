"""Every Redis key of one queue, named in one place (nothing else formats key strings).

All keys sit under a prefix so several queues can share one Redis. DistComp's record names are
kept (todo_tasks, in_progress_tasks, failed_tasks, finished_tasks, task_fail_reason,
worker_status) so its users recognise them; the rest is what the safe claim protocol needs.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "distcomp:"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def _k(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # --- task records (DistComp's names) -------------------------------------------------
    @property
    def todo_tasks(self) -> str:  # HASH task -> submit time (ms); tasks waiting to be claimed
        return self._k("todo_tasks")

    @property
    def in_progress_tasks(self) -> str:  # HASH task -> worker name; claimed (buffered or running)
        return self._k("in_progress_tasks")

    @property
    def finished_tasks(self) -> str:  # HASH task -> stdout (bounded)
        return self._k("finished_tasks")

    @property
    def failed_tasks(self) -> str:  # HASH task -> ",w1,w2," workers where it failed (never retried there)
        return self._k("failed_tasks")

    @property
    def task_fail_reason(self) -> str:  # HASH task -> last failure reason (bounded stderr)
        return self._k("task_fail_reason")

    @property
    def worker_status(self) -> str:  # HASH worker -> JSON heartbeat (time, cores, memory, flags, counts)
        return self._k("worker_status")

    # --- protocol -----------------------------------------------------------------------
    @property
    def todo_index(self) -> str:  # ZSET task -> (MAX_PRIORITY-priority)*2^32+seq: claim order
        return self._k("todo_index")

    @property
    def todo_by_class(self) -> str:  # ZSET, all scores 0: "dram:cpu|<17-digit claim score>|task", read by
        # lexical range per resource class, so a claim looks only at classes that fit (no head-of-line block)
        return self._k("todo_by_class")

    @property
    def todo_classes(self) -> str:  # SET of resource classes "dram:cpu" that may have tasks waiting (a
        # superset: emptied classes are dropped lazily); ZLEXCOUNT on todo_by_class gives each count
        return self._k("todo_classes")

    @property
    def todo_age(self) -> str:  # ZSET task -> time it became claimable (ms): oldest-waiting age
        return self._k("todo_age")

    @property
    def in_progress_age(self) -> str:  # ZSET task -> claim time (ms): oldest-running age, stuck tasks
        return self._k("in_progress_age")

    @property
    def task_meta(self) -> str:  # HASH task -> JSON {seq, submitted_ms, trace}: known tasks (dedup)
        return self._k("task_meta")

    @property
    def claims(self) -> str:  # HASH task -> claim token "incarnation:n" of its current holder (fencing)
        return self._k("claims")

    @property
    def settled(self) -> str:  # HASH task -> token that recorded its terminal state (idempotent reports)
        return self._k("settled")

    @property
    def failed_final(self) -> str:  # HASH task -> reason; failed for good
        return self._k("failed_final")

    @property
    def attempts(self) -> str:  # HASH task -> failed attempts so far
        return self._k("attempts")

    @property
    def reap_count(self) -> str:  # HASH task -> times its worker died holding it (poison detection)
        return self._k("reap_count")

    @property
    def started(self) -> str:  # HASH task -> claim token, once its worker reported the task started
        return self._k("started")

    @property
    def terminal_count(self) -> str:  # HASH task -> terminal records written (audit: must be 1)
        return self._k("terminal_count")

    @property
    def events(self) -> str:  # STREAM (capped) of terminal transitions, for people reading history
        return self._k("events")

    @property
    def stats(self) -> str:  # HASH counter -> n: submitted, claimed, finished, failed, retried, ...
        return self._k("stats")

    @property
    def seq(self) -> str:  # STRING counter: FIFO order within a priority
        return self._k("seq")

    @property
    def epoch(self) -> str:  # STRING set at first submit; missing later = Redis lost its data
        return self._k("epoch")

    @property
    def layout(self) -> str:  # STRING: records.LAYOUT the queue was written with (set by its first submit)
        return self._k("layout")

    @property
    def workers(self) -> str:  # SET of registered worker names (so nothing ever needs KEYS/SCAN)
        return self._k("workers")

    @property
    def wake_channel(self) -> str:  # PUB/SUB channel: "submit <max priority>" / "stop"
        return self._k("wake")

    @property
    def stop_requested(self) -> str:  # STRING: time `distcomp stop-workers` asked workers to drain
        return self._k("stop_requested")

    @property
    def reap_lock(self) -> str:  # STRING NX PX: one reaper at a time (leaderless)
        return self._k("reap_lock")

    def owned(self, worker: str) -> str:  # SET tasks a worker holds (buffered + running)
        return self._k(f"owned:{worker}")

    def lease(self, worker: str) -> str:  # STRING incarnation, PX lease: liveness + name uniqueness
        return self._k(f"worker_lease:{worker}")

    def script_keys(self, worker: str) -> list[str]:
        """The KEYS every script receives, in SCRIPT_KEYS order, for one worker."""
        return [self.owned(worker) if n == "owned" else self.lease(worker) if n == "lease" else getattr(self, n)
                for n in SCRIPT_KEYS]  # fmt: skip

    def queue_keys(self) -> list[str]:
        """Every fixed key of this queue (per-worker keys come from the `workers` registry)."""
        return [getattr(self, n) for n in SCRIPT_KEYS if n not in ("wake_channel", "owned", "lease")]


#: The KEYS layout of every script, in order. The Lua preamble (queue/scripts.py) is generated
#: from it, naming KEYS[i] K.<name>, so this tuple is the only place the order is written; keys
#: past its end are script specific (reap.lua's lease/owned pairs start at FIRST_EXTRA_KEY).
SCRIPT_KEYS: tuple[str, ...] = (
    "todo_index",
    "todo_tasks",
    "todo_age",
    "todo_by_class",
    "todo_classes",
    "in_progress_tasks",
    "in_progress_age",
    "claims",
    "settled",
    "finished_tasks",
    "failed_tasks",
    "task_fail_reason",
    "failed_final",
    "attempts",
    "reap_count",
    "terminal_count",
    "started",
    "events",
    "stats",
    "task_meta",
    "seq",
    "epoch",
    "layout",
    "workers",
    "worker_status",
    "wake_channel",  # a channel, passed in KEYS for ACL and cluster tools
    "reap_lock",
    "stop_requested",
    "owned",  # owned:{worker} of the calling worker
    "lease",  # worker_lease:{worker} of the calling worker
)
FIRST_EXTRA_KEY = len(SCRIPT_KEYS) + 1  # Lua indexes from 1
