"""Every Redis key of one queue, named in one place (nothing else formats key strings).

All keys sit under a prefix so several queues can share one Redis. The prefix is written as a
Redis Cluster hash tag (`{distcomp}:todo_tasks`): every key of one queue hashes to one slot, so
the scripts run on a Redis Cluster too, and two queues usually land on different masters.
DistComp's record names are kept (todo_tasks, in_progress_tasks, failed_tasks, finished_tasks,
task_fail_reason, worker_status) so its users recognise them, though their values are packed
(record layout 3, records.py); the rest is what the safe claim protocol needs.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "distcomp:"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        """`{distcomp}:`: the prefix as a hash tag (kept as given when it already holds one)."""
        if "{" in self.prefix and "}" in self.prefix.split("{", 1)[1]:
            return self.prefix
        return "{" + self.prefix.rstrip(":") + "}:"

    @property
    def pattern(self) -> str:
        """A glob matching every key of this queue (ACL `~` and `&` rules, SCAN)."""
        return self.tag + "*"

    def _k(self, name: str) -> str:
        return f"{self.tag}{name}"

    # --- task records (DistComp's names where DistComp has the record) ----------------------
    @property
    def tasks(self) -> str:  # HASH task -> "seq submitted_us[ trace]": every known task (dedup, submit order)
        return self._k("tasks")

    @property
    def task_ids(self) -> str:  # HASH id (the task's seq, decimal) -> task: what `distcomp task ID` resolves
        return self._k("task_ids")

    @property
    def jobs(self) -> str:  # HASH "job<TAB>counter" -> n: submitted, finished, failed, cancelled (O(1) progress)
        return self._k("jobs")

    @property
    def todo_tasks(self) -> str:  # ZSET, all scores 0: "dram:cpu|<17-digit claim score>|task" for each
        # waiting task, read by lexical range per resource class (no head-of-line block); claim
        # score = (MAX_PRIORITY - priority) * 2^32 + seq
        return self._k("todo_tasks")

    @property
    def todo_classes(self) -> str:  # SET of resource classes "dram:cpu" that may have tasks waiting (a
        # superset: emptied classes are dropped lazily); ZLEXCOUNT on todo_tasks gives each count
        return self._k("todo_classes")

    @property
    def in_progress_tasks(self) -> str:  # HASH task -> "token claim_ms started worker": claimed
        # (buffered or running); the token "incarnation:n" fences reports; started 's' or '-'
        return self._k("in_progress_tasks")

    @property
    def finished_tasks(self) -> str:  # HASH task -> record: JSON header line, then stdout (bounded)
        return self._k("finished_tasks")

    @property
    def failed_final(self) -> str:  # HASH task -> record: JSON header line, then the reason; failed for good
        return self._k("failed_final")

    @property
    def cancelled_tasks(self) -> str:  # HASH task -> record: JSON header line (by, at), then the reason; cancelled
        return self._k("cancelled_tasks")

    @property
    def cancel_requests(self) -> str:  # HASH task -> claim token: claimed tasks their worker must stop (cancel)
        return self._k("cancel_requests")

    @property
    def failed_tasks(self) -> str:  # HASH task -> ",w1,w2," workers where it failed (never retried there)
        return self._k("failed_tasks")

    @property
    def task_fail_reason(self) -> str:  # HASH task -> last failure reason (bounded stderr)
        return self._k("task_fail_reason")

    @property
    def attempts(self) -> str:  # HASH task -> failed attempts so far
        return self._k("attempts")

    @property
    def attempt_log(self) -> str:  # HASH task -> one JSON line per failed, retried attempt
        return self._k("attempt_log")

    @property
    def reap_count(self) -> str:  # HASH task -> times its worker died while it may have been running
        return self._k("reap_count")

    @property
    def worker_status(self) -> str:  # HASH worker -> JSON heartbeat (time, cores, memory, flags, counts)
        return self._k("worker_status")

    # --- protocol -----------------------------------------------------------------------
    @property
    def events(self) -> str:  # STREAM: one entry per batch of terminal transitions; retention trims it
        return self._k("events")

    @property
    def stats(self) -> str:  # HASH counter -> n: submitted, claimed, finished, failed, retried, forgotten_*, ...
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
    def stop_names(self) -> str:  # HASH worker -> time `distcomp stop-workers --name` asked that one to drain
        return self._k("stop_names")

    @property
    def reap_lock(self) -> str:  # STRING NX PX: one reaper at a time (leaderless)
        return self._k("reap_lock")

    def state_hash(self, state: str) -> str:
        """The hash holding a claimed or done state's tasks: in_progress, finished, failed, cancelled."""
        names = {"in_progress": "in_progress_tasks", "finished": "finished_tasks", "failed": "failed_final",
                 "cancelled": "cancelled_tasks"}  # fmt: skip
        return str(getattr(self, names[state]))

    def lease(self, worker: str) -> str:  # STRING incarnation, PX lease: liveness + name uniqueness
        return self._k(f"worker_lease:{worker}")

    def script_keys(self, worker: str) -> list[str]:
        """The KEYS every script receives, in SCRIPT_KEYS order, for one worker."""
        return [self.lease(worker) if n == "lease" else getattr(self, n) for n in SCRIPT_KEYS]

    def queue_keys(self) -> list[str]:
        """Every fixed key of this queue (per-worker keys come from the `workers` registry)."""
        return [getattr(self, n) for n in SCRIPT_KEYS if n not in ("wake_channel", "lease")]


#: The KEYS layout of every script, in order. The Lua preamble (queue/scripts.py) is generated
#: from it, naming KEYS[i] K.<name>, so this tuple is the only place the order is written; keys
#: past its end are script specific (reap.lua's lease keys start at FIRST_EXTRA_KEY).
SCRIPT_KEYS: tuple[str, ...] = (
    "tasks",
    "task_ids",
    "jobs",
    "todo_tasks",
    "todo_classes",
    "in_progress_tasks",
    "finished_tasks",
    "failed_final",
    "cancelled_tasks",
    "cancel_requests",
    "failed_tasks",
    "task_fail_reason",
    "attempts",
    "attempt_log",
    "reap_count",
    "events",
    "stats",
    "seq",
    "epoch",
    "layout",
    "workers",
    "worker_status",
    "wake_channel",  # a channel, passed in KEYS for ACL and cluster tools
    "reap_lock",
    "stop_requested",
    "stop_names",
    "lease",  # worker_lease:{worker} of the calling worker
)
FIRST_EXTRA_KEY = len(SCRIPT_KEYS) + 1  # Lua indexes from 1
