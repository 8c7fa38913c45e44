"""Real `distcomp worker` processes against a real Redis: semantics of each optimization and of
every flag combination. Nothing here asserts a speed; waits are bounded conditions."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distcomp_obs.audit import audit
from distcomp_obs.config import WORKER_SETTINGS_ENV, Settings
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import FAST, WorkerProc, distcomp_argv, run_cli, wait_until, warm_up

StartWorker = Callable[..., WorkerProc]


def drained(q: Queue, total: int | None = None) -> bool:
    """Nothing waiting or running (and, given `total`, that many terminal): the unpipelined
    protocol moves a task in several steps, so empty todo and in-progress alone can be a moment
    between two of them."""
    c = q.counts()
    done = total is None or c["finished"] + c["failed"] == total
    return c["todo"] == 0 and c["in_progress"] == 0 and done


def mixed_tasks(tmp_path: Path, tag: str) -> list[str]:
    out = tmp_path / f"out-{tag}"
    return [f"builtin:1:0:0:noop {tag} {i}" for i in range(40)] + [
        f"builtin:3:0:0:sleep 0.05 {tag}",
        f"builtin:2:0:0:fail {tag}",
        f"shell:5:0:0:echo {tag} >> {out}",
        "python:4:0:0:examples/square.py 9",
        f"shell:1:0:0:echo oops-{tag} >&2; exit 4",
    ]


FLAGS = list(itertools.product([True, False], [0, 8], ["adaptive", "fixed"]))


@pytest.mark.parametrize(("pipeline", "prefetch", "polling"), FLAGS,
                         ids=[f"{'pipe' if p else 'nopipe'}-pf{n}-{m}" for p, n, m in FLAGS])  # fmt: skip
def test_every_flag_combination_drains_a_mixed_queue(queue: Queue, start_worker: StartWorker, tmp_path: Path,
                                                     pipeline: bool, prefetch: int, polling: str) -> None:  # fmt: skip
    tasks = mixed_tasks(tmp_path, "m")
    queue.submit(tasks)
    flags = ["--pipeline" if pipeline else "--no-pipeline", "--prefetch", str(prefetch), "--polling", polling,
             "--poll-interval", "0.01", "--concurrency", "2", "--max-retry-per-task", "1"]  # fmt: skip
    workers = [start_worker(*flags, name="a"), start_worker(*flags, name="b")]
    # Registered means started (signal handlers are installed before registration): one worker may
    # drain everything before the other is up, and a SIGTERM during its start-up is not a drain.
    wait_until(lambda: {"a", "b"} <= set(queue.workers()), timeout=30, what="both workers registered")
    wait_until(lambda: drained(queue, len(tasks)), timeout=60, what="queue drained")
    report = audit(queue, tasks, expect_done=True)
    assert report.ok, report.summary()
    failed = queue.list_state("failed")
    assert set(failed) == {"builtin:2:0:0:fail m", "shell:1:0:0:echo oops-m >&2; exit 4"}
    assert "exit code 4" in failed["shell:1:0:0:echo oops-m >&2; exit 4"]
    assert "oops-m" in failed["shell:1:0:0:echo oops-m >&2; exit 4"]
    assert queue.list_state("finished")["python:4:0:0:examples/square.py 9"] == "9^2 = 81\n"
    assert (tmp_path / "out-m").read_text() == "m\n"  # ran exactly once
    for w in workers:
        assert w.stop() == 0


def test_a_single_slot_runs_tasks_in_priority_order(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    out = tmp_path / "order"
    tasks = [f"shell:{p}:0:0:echo {p}-{i} >> {out}" for i, p in enumerate([1, 5, 3, 9, 5, 7, 1])]
    queue.submit(tasks)
    start_worker("--concurrency", "1", "--prefetch", "4")
    wait_until(lambda: drained(queue), timeout=30)
    assert out.read_text().split() == ["9-3", "7-5", "5-1", "5-4", "3-2", "1-0", "1-6"]


def test_task_needing_more_memory_than_free_is_never_claimed(queue: Queue, start_worker: StartWorker) -> None:
    queue.submit(["builtin:9:100000:0:noop too big", "builtin:1:0:0:noop fits"])
    start_worker()
    wait_until(lambda: queue.counts()["finished"] == 1, timeout=20)
    assert queue.todo_in_order() == ["builtin:9:100000:0:noop too big"]
    assert audit(queue).ok


def test_sigterm_returns_buffered_tasks_at_once_and_drains_running(queue: Queue, start_worker: StartWorker) -> None:
    tasks = [f"builtin:1:0:0:sleep 0.5 {i}" for i in range(20)]
    worker = start_worker("--concurrency", "2", "--prefetch", "10", "--grace-period", "10")
    warm = warm_up(queue)  # a buffer of --prefetch, not one sized by 0.5 s tasks
    queue.submit(tasks)
    wait_until(lambda: queue.counts()["in_progress"] >= 10, timeout=20, what="buffer filled")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    c = queue.counts()
    assert c["in_progress"] == 0 and c["finished"] + c["todo"] == 20 + len(warm)
    assert queue.stats().get("returned", 0) >= 8  # the unstarted buffer went back
    assert "returning buffered tasks" in worker.log()
    assert audit(queue, tasks).ok


def test_idle_adaptive_worker_wakes_on_submit(queue: Queue, start_worker: StartWorker) -> None:
    """With a 60 s safety poll, only the wake-up channel can explain a prompt pickup."""
    start_worker("--polling", "adaptive")
    wait_until(lambda: queue.workers(), timeout=10)
    time.sleep(0.3)  # let it go idle and block
    queue.submit(["builtin:1:0:0:noop wake"])
    wait_until(lambda: queue.counts()["finished"] == 1, timeout=10, what="pickup before the 60 s safety poll")


def test_restart_with_the_same_name_returns_what_it_held(queue: Queue, start_worker: StartWorker) -> None:
    tasks = [f"builtin:1:0:0:sleep 30 {i}" for i in range(4)]
    queue.submit(tasks)
    first = start_worker("--concurrency", "2", "--prefetch", "2", "--lease", "60", name="same")
    wait_until(lambda: queue.counts()["in_progress"] == 4, timeout=20)
    first.kill9()
    queue.r.delete(queue.keys.lease("same"))  # as if its lease ran out
    second = start_worker("--concurrency", "1", "--prefetch", "0", "--reap-interval", "60", name="same")
    wait_until(lambda: "returned 4 task(s) held by its previous run" in second.log(), timeout=20)
    assert queue.stats().get("returned", 0) >= 4


def test_a_second_live_worker_with_the_same_name_refuses_to_start(queue: Queue, start_worker: StartWorker) -> None:
    start_worker(name="twin")
    wait_until(lambda: "twin" in queue.workers(), timeout=10)
    second = start_worker(name="twin")
    assert second.wait(20) == 2
    assert "worker name 'twin' is held by a live worker" in second.log()


def test_stop_workers_lets_running_tasks_finish(queue: Queue, start_worker: StartWorker, prefix: str,
                                                redis_url: str) -> None:  # fmt: skip
    queue.submit(["builtin:1:0:0:sleep 0.5 a"])
    worker = start_worker()
    wait_until(lambda: queue.counts()["in_progress"] == 1, timeout=10)
    result = run_cli("stop-workers", "--redis-url", redis_url, "--prefix", prefix)
    assert result.returncode == 0
    assert worker.wait(20) == 0
    assert queue.counts()["finished"] == 1
    assert "name" not in queue.workers()


def test_stop_workers_by_name_stops_only_that_worker(queue: Queue, start_worker: StartWorker, prefix: str,
                                                     redis_url: str) -> None:  # fmt: skip
    """Issue 12: `stop-workers --name` drains the named worker (a fixed-polling one hears it on the
    channel at once, not at its next heartbeat) and no other; an unknown name changes nothing."""
    slow = ("--heartbeat-interval", "30", "--lease", "90", "--polling", "fixed", "--poll-interval", "30")
    one = start_worker(*slow, fast=False)
    two = start_worker()
    wait_until(lambda: {"w1", "w2"} <= set(queue.workers()), timeout=20, what="both registered")
    bad = run_cli("stop-workers", "--name", "w9", "--redis-url", redis_url, "--prefix", prefix)
    assert bad.returncode == 2 and "no registered worker named w9" in bad.stderr, bad
    assert not queue.r.exists(queue.keys.stop_names)
    ok = run_cli("stop-workers", "--name", "w1", "--json", "--redis-url", redis_url, "--prefix", prefix)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"stop_requested": ["w1"]}, ok
    assert one.wait(10) == 0
    assert two.proc.poll() is None  # still serving
    queue.submit(["builtin:1:0:0:noop after"])
    wait_until(lambda: queue.counts()["finished"] == 1, timeout=20, what="w2 still runs tasks")
    assert not queue.r.hexists(queue.keys.stop_names, "w1")  # w1 left: its request went with it


def test_memory_floor_kills_and_returns_the_newest_task(queue: Queue, start_worker: StartWorker) -> None:
    import psutil

    queue.submit(["builtin:1:0:0:sleep 60 victim"])
    floor = psutil.virtual_memory().available / 1024**3 - 1.0  # 1 GB above the floor
    worker = start_worker("--concurrency", "1", "--prefetch", "0", "--min-free-dram-gb", f"{floor:.3f}")
    wait_until(lambda: queue.workers().get("w1", {}).get("running") == 1, timeout=20, what="task running")
    ballast = bytearray(b"\x01") * (3 * 1024**3)  # touch 3 GB: free memory falls under the floor
    try:
        wait_until(lambda: "killing and returning the newest task" in worker.log(), timeout=20)
        wait_until(lambda: queue.counts()["todo"] == 1, timeout=10, what="task returned")
    finally:
        del ballast
    assert queue.stats().get("returned", 0) >= 1
    worker.stop()
    assert audit(queue, ["builtin:1:0:0:sleep 60 victim"]).ok


def test_urgent_submission_overtakes_a_full_buffer(queue: Queue, start_worker: StartWorker, tmp_path: Path) -> None:
    out = tmp_path / "order"
    low = [f"shell:1:0:0:sleep 0.2; echo low-{i} >> {out}" for i in range(12)]
    start_worker("--concurrency", "1", "--prefetch", "8")
    warm_up(queue)  # a buffer of --prefetch, not one sized by 0.2 s tasks
    queue.submit(low)
    wait_until(lambda: queue.counts()["todo"] <= 3, timeout=20, what="buffer full of low-priority tasks")
    queue.submit([f"shell:9:0:0:echo urgent >> {out}"])
    wait_until(lambda: drained(queue), timeout=60)
    order = out.read_text().split()
    assert order.index("urgent") <= 2, order  # started next (at most one more low task raced it)


# ---------------------------------------------------------------- workers started in a fresh directory


class Spawned:
    """A worker process run in a directory of the test's own (not the repository), logging to a file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = cwd / f"worker-{len(list(cwd.glob('worker-*.log')))}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})})  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    procs: list[Spawned] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> Spawned:
        procs.append(Spawned(argv, tmp_path, env))
        return procs[-1]

    yield start
    for p in procs:
        p.close()


def worker_argv(url: str, prefix: str, name: str, *flags: str) -> list[str]:
    return distcomp_argv("worker", "--redis-url", url, "--prefix", prefix, "--name", name, *FAST, *flags)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_waits_for_redis_and_stops_cleanly_on_a_signal(spawn: Callable[..., Spawned], prefix: str,
                                                                 sig: signal.Signals) -> None:  # fmt: skip
    port = free_port()
    w = spawn(worker_argv(f"redis://alice:s3cr3t-pw@127.0.0.1:{port}/0", prefix, "patient"))
    wait_until(lambda: "waiting for Redis" in w.log(), timeout=20, what="the waiting line")
    assert w.proc.poll() is None  # still waiting, not exited
    w.proc.send_signal(sig)
    assert w.proc.wait(20) == 0
    log = w.log()
    assert f"waiting for Redis at redis://alice:***@127.0.0.1:{port}/0" in log
    assert "s3cr3t-pw" not in log and "Traceback" not in log
    assert "stopped while waiting for Redis" in log


def test_a_worker_started_before_redis_runs_once_it_answers(spawn: Callable[..., Spawned], prefix: str,
                                                            tmp_path: Path) -> None:  # fmt: skip
    port = free_port()
    w = spawn(worker_argv(f"redis://127.0.0.1:{port}", prefix, "early"))
    wait_until(lambda: "waiting for Redis" in w.log(), timeout=20, what="the waiting line")
    server = RedisServer(port=port, directory=str(tmp_path / "redis")).start()
    try:
        q = Queue(connect(server.url), prefix)
        wait_until(lambda: "early" in q.workers(), timeout=30, what="registered once Redis answers")
        q.submit(["builtin:1:0:0:noop after the wait"])
        wait_until(lambda: q.counts()["finished"] == 1, timeout=30, what="the task ran")
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(20) == 0
        assert w.log().count("waiting for Redis") == 1  # logged once, not once per attempt
        assert audit(q, ["builtin:1:0:0:noop after the wait"], expect_done=True).ok
        q.r.close()
    finally:
        server.cleanup()


def test_relative_python_script_path_resolves_against_the_workers_directory(
    spawn: Callable[..., Spawned], queue: Queue, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "cube.py").write_text("import os, sys\nprint(int(sys.argv[1]) ** 3, os.getcwd())\n")
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("python:1:0:0:scripts/cube.py 3\n")
    submitted = subprocess.run(distcomp_argv("submit", "tasks.txt", "--redis-url", redis_url, "--prefix", prefix),
                               capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    w = spawn(worker_argv(redis_url, prefix, "here"))
    wait_until(lambda: drained(queue, 1), timeout=30, what="the python task settled")
    assert queue.list_state("finished") == {"python:1:0:0:scripts/cube.py 3": f"27 {tmp_path}\n"}
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0


def test_json_log_format_from_the_settings_of_distcomp_run(spawn: Callable[..., Spawned], queue: Queue,
                                                            redis_url: str, prefix: str) -> None:  # fmt: skip
    """`python -m distcomp_obs.worker` (a worker of `distcomp run`) logs one JSON object per line."""
    settings = dataclasses.replace(Settings(), redis_url=redis_url, prefix=prefix, name="json-logs", concurrency=1,
                                   log_format="json", heartbeat_interval_s=0.2, lease_s=1.0)  # fmt: skip
    w = spawn([sys.executable, "-m", "distcomp_obs.worker"], env={WORKER_SETTINGS_ENV: settings.to_json()})
    wait_until(lambda: " started: " in w.log(), timeout=30, what="the start line")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0
    records = [json.loads(line) for line in w.log().splitlines()]
    assert records and all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert any(r["message"].startswith("worker json-logs started: ") and r["level"] == "INFO" for r in records)
    assert all(r["time"].endswith("+00:00") for r in records)


def test_a_worker_started_later_gets_a_fair_share_of_long_tasks(queue: Queue, start_worker: StartWorker) -> None:
    """Issue 10: with the default prefetch the first worker must not hoard long tasks. 24 tasks
    of 0.5 s, two workers of 2 slots, the second started once the first has finished a round (so
    it knows how long the tasks take): the first then holds no more than its slots and what they
    start within one claim round trip, so the second runs a fair share. With a buffer filled to
    `--prefetch` whatever the tasks' length the first held all 24 and the second ran none.
    No timing is asserted: counts of tasks held and run."""
    tasks = [f"builtin:1:0:0:sleep 0.5 fair {i}" for i in range(24)]
    queue.submit(tasks)
    start_worker("--concurrency", "2", name="a")
    wait_until(lambda: queue.counts()["finished"] >= 2, timeout=30, what="a finished its first round")
    start_worker("--concurrency", "2", name="b")
    wait_until(lambda: "b" in queue.workers(), timeout=30, what="b registered")
    most_held_by_a = 0
    deadline = time.monotonic() + 60
    while not drained(queue, len(tasks)):
        assert time.monotonic() < deadline, f"not drained in 60 s: {queue.counts()}"
        most_held_by_a = max(most_held_by_a, queue.workers()["a"]["held"])
        time.sleep(0.02)
    # its 2 running tasks, plus 2 results in flight or, before any finished, a buffer of one per slot
    assert most_held_by_a <= 2 * 2, most_held_by_a
    finished = lambda: {n: int(queue.workers()[n].get("finished", 0)) for n in ("a", "b")}  # noqa: E731
    wait_until(lambda: sum(finished().values()) == len(tasks), timeout=10, what="heartbeats with the tallies")
    assert finished()["b"] >= 8, finished()  # hoarding left it none
    assert audit(queue, tasks, expect_done=True).ok


def test_workers_apply_retention_to_done_records(queue: Queue, start_worker) -> None:
    """Issue 10: with --keep-done 5 the workers' retention chore forgets all but the newest 5 done
    records; the counters keep the totals."""
    w = start_worker("--keep-done", "5")
    tasks = [f"builtin:1:0:0:noop keep {i}" for i in range(30)]
    for start in range(0, 30, 10):  # three submits: at least three batches of done tasks
        queue.submit(tasks[start : start + 10])
        wait_until(lambda n=start + 10: queue.stats().get("finished", 0) >= n, 20, what="batch done")
    wait_until(lambda: queue.counts()["finished"] <= 5, 20, what="retention ran")
    assert queue.stats()["finished"] == 30 and queue.stats()["forgotten_finished"] >= 25
    assert w.stop() == 0


@pytest.mark.parametrize("flags", [(), ("--no-pipeline",), ("--polling", "fixed", "--poll-interval", "30")],
                         ids=["pipelined", "one-command", "fixed-polling"])  # fmt: skip
def test_cancel_stops_a_running_task_and_records_it_cancelled(
    queue: Queue, start_worker, tmp_path: Path, redis_url: str, flags: tuple[str, ...]
) -> None:
    """Issue 12: `distcomp cancel ID` of a running task: its worker learns of it at once (a wake-up,
    then its next settle, or with DistComp's one-command protocol a read of the requests), kills the
    task's process group and records it cancelled; a buffered one ends without starting. A worker
    polling every 30 s hears it within the test's 10 s too. The audit knows the state."""
    pid_file = tmp_path / "pid"
    long = f"shell:1:0:0:echo $$ > {pid_file}; sleep 60"
    buffered = "shell:1:0:0:sleep 60 # buffered"
    fixed = "fixed" in flags
    if fixed:  # its first fetch, at start, is the only one within the test: submit before
        queue.submit([long, buffered])
    w = start_worker("--concurrency", "1", "--prefetch", "4", *flags)
    warm = [] if fixed else warm_up(queue)
    if not fixed:
        queue.submit([long, buffered])
    wait_until(pid_file.exists, 20, what="the long task runs")
    if not fixed:  # (a fresh worker's buffer target is one task per slot: the second stays queued)
        wait_until(lambda: len(queue.holdings("w1")) == 2, 20, what="the second buffered")
    ids = queue.ids([long, buffered])
    out = run_cli("cancel", ids[long], ids[buffered], "--redis-url", redis_url, "--prefix", queue.keys.prefix)
    assert out.returncode == 0 and "stops it and records it cancelled" in out.stdout, out
    wait_until(lambda: queue.counts()["cancelled"] == 2, 10, what="both recorded cancelled")
    pid = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, what="the task's process gone")
    assert queue.counts()["in_progress"] == 0 and queue.r.hlen(queue.keys.cancel_requests) == 0
    assert w.stop() == 0
    assert audit(queue, submitted=[*warm, long, buffered], expect_done=True).ok
