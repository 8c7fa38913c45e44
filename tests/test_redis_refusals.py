"""Issue 11: Redis answers but refuses (out of memory, read-only after a demotion). Real
redis-server per test (CONFIG SET maxmemory, REPLICAOF a dead port), real worker processes.

A refusal is an outage like a lost connection: the worker keeps its results, backs off, logs one
line per change of state naming the real cause, keeps its lease where Redis lets it, never exits,
and drains once Redis serves again. A submit into a full Redis says how many lines it added.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import WorkerProc, run_cli, wait_until
from tests.fault_tools import assert_audit, executions, logged_task, wait_done


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(port=free_port()).start()
    yield server
    server.cleanup()


def healthz(worker: WorkerProc, queue: Queue, name: str) -> tuple[int, str]:
    url = queue.workers()[name]["metrics_url"].replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def used_memory(q: Queue) -> int:
    return int(q.r.info("memory")["used_memory"])


def test_out_of_memory_is_an_outage_not_a_crash(own_redis: RedisServer, prefix: str, start_worker, tmp_path: Path
                                               ) -> None:  # fmt: skip
    """Claims, reports and the reaper's first write are refused (OOM); the worker stays up and
    registered (heartbeats renew the lease: PEXPIRE is allowed), /healthz and the log say "out of
    memory" (once), a dead worker's lease is left to expire without stopping the heartbeat, and
    everything drains when memory is back."""
    q = Queue(connect(own_redis.url), prefix)
    log = tmp_path / "exec.log"
    first = [logged_task(i, log) for i in range(20)]
    q.submit(first)
    q.r.set(q.keys.lease("ghost"), "g", px=1)  # a registered worker whose lease is gone: reaper work
    q.r.sadd(q.keys.workers, "ghost")
    w = start_worker("--concurrency", "2", name="w", url=own_redis.url)
    wait_done(q, len(first))
    q.r.config_set("maxmemory-policy", "noeviction")
    q.r.config_set("maxmemory", 1)  # every write that grows memory is refused from here on
    try:
        rest = [logged_task(i, log) for i in range(20, 60)]
        out = run_cli("submit", "-", "--redis-url", own_redis.url, "--prefix", prefix, input="\n".join(rest) + "\n")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out
        assert "added 0 of 40: Redis is out of memory" in out.stderr, out.stderr
        wait_until(lambda: "Redis out of memory" in w.log(), 15, what="the worker names the cause")
        code, body = healthz(w, q, "w")
        assert code == 503 and "out of memory" in body, (code, body)
        deadline = time.monotonic() + 4 * 1.0  # four lease periods: a starved heartbeat loses the lease
        while time.monotonic() < deadline:
            assert int(q.r.pttl(q.keys.lease("w"))) > 0, "the lease expired under OOM"
            assert w.proc.poll() is None
            time.sleep(0.05)
        assert "our lease was not found" not in w.log() and "Traceback" not in w.log()
    finally:
        q.r.config_set("maxmemory", 0)
    out = run_cli("submit", "-", "--redis-url", own_redis.url, "--prefix", prefix, input="\n".join(rest) + "\n")
    assert out.returncode == 0, out
    wait_done(q, len(first) + len(rest), timeout=30)
    assert w.log().count("Redis out of memory") == 1, "one line per change of state, not per attempt"
    assert w.stop() == 0
    assert all(n == 1 for n in executions(log).values())
    assert_audit(q, first + rest)


def test_submit_into_a_full_redis_says_how_many_and_a_resubmit_adds_the_rest(own_redis: RedisServer, prefix: str,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    q = Queue(connect(own_redis.url), prefix)
    q.submit(["builtin:1:0:0:noop first"])  # the queue's fixed keys exist
    lines = [f"builtin:1:0:0:noop {i}" for i in range(3000)]
    f = tmp_path / "tasks.txt"
    f.write_text("\n".join(lines) + "\n")
    q.r.config_set("maxmemory-policy", "noeviction")
    # room for a client and less than one batch of 1,000 lines: the first batch starts below the limit
    # (a script is refused only when it starts above it), the second above
    q.r.config_set("maxmemory", used_memory(q) + 150_000)
    try:
        out = run_cli("submit", str(f), "--redis-url", own_redis.url, "--prefix", prefix)
    finally:
        q.r.config_set("maxmemory", 0)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    [line] = [x for x in out.stderr.splitlines() if x.strip()]
    assert "added 1000 of 3000: Redis is out of memory" in line and "submit the same file again" in line, line
    out = run_cli("submit", str(f), "--redis-url", own_redis.url, "--prefix", prefix, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["added"] == 2000, out
    assert q.counts()["todo"] == 3001


def test_a_demoted_master_read_only_is_an_outage(own_redis: RedisServer, prefix: str, start_worker,
                                                tmp_path: Path) -> None:  # fmt: skip
    """What a Sentinel failover does to the old master: it becomes a replica and answers READONLY.
    Workers wait (no crash, cause logged once), and resume when it is a master again; the lease
    expired meanwhile, so buffered tasks are dropped and returned, never started stale."""
    q = Queue(connect(own_redis.url), prefix)
    log = tmp_path / "exec.log"
    tasks = [logged_task(i, log, first_run_s=0.5) for i in range(30)]
    q.submit(tasks)
    w = start_worker("--concurrency", "2", "--prefetch", "4", name="w", url=own_redis.url)
    wait_until(lambda: len(executions(log)) >= 4, 20, what="work under way")
    q.r.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that is not there
    try:
        wait_until(lambda: "Redis read-only" in w.log(), 15, what="the worker names the cause")
        wait_until(lambda: q.r.pttl(q.keys.lease("w")) < 0, 10, what="no renewal possible: the lease expires")
        assert w.proc.poll() is None and "Traceback" not in w.log()
    finally:
        q.r.execute_command("REPLICAOF", "NO", "ONE")
    wait_done(q, len(tasks), timeout=60)
    assert w.log().count("Redis read-only") == 1
    w.signal(signal.SIGTERM)
    assert w.proc.wait(timeout=30) == 0
    counts = executions(log)
    assert sum(n - 1 for n in counts.values()) <= 2, f"duplicates beyond the 2 running: {counts}"
    assert_audit(q, tasks)


def test_a_report_lost_in_a_rollback_is_reconciled(own_redis: RedisServer, prefix: str, start_worker,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """Issue 11 case 3: Redis comes back from a snapshot older than a finished report (an AOF
    missing its last second, a failover to a lagging replica). The task shows in progress on a
    live worker that no longer holds it; the worker notices the restart (run_id) and gives it back,
    so it runs again and ends recorded once, instead of staying in progress forever."""
    q = Queue(connect(own_redis.url), prefix)
    log = tmp_path / "exec.log"
    slow = logged_task(0, log, first_run_s=5)  # the SAVE must land before it ends, on a loaded machine too
    q.submit([slow])
    # a lease that outlives the rollback: the reaper has nothing to do, only reconciliation can
    w = start_worker("--concurrency", "1", "--prefetch", "0", "--lease", "60", name="w", url=own_redis.url)
    wait_until(lambda: len(executions(log)) == 1, 20, what="the task runs")
    q.r.save()  # the snapshot Redis will come back from: the task in progress on w
    wait_done(q, 1)  # w finishes and reports it: the report is after the snapshot
    own_redis.stop(kill=True)
    own_redis.start()  # back from the snapshot: the report is lost
    q = Queue(connect(own_redis.url), prefix)
    assert q.counts()["in_progress"] == 1, "the rollback did not happen"
    wait_done(q, 1, timeout=30)  # without reconciliation it stays in progress on live w forever
    # Reconciled by whichever notices first: the heartbeat (Redis's run_id changed) or the fetch loop
    # (its wake listener reconnects and asks for a round trip, which finds Redis gone and reconciles)
    assert "run_id changed" in w.log() or "claimed during a lost reply" in w.log(), w.log()
    assert executions(log)["0"] == 2  # ran again: its first report was lost
    assert w.stop() == 0
    assert_audit(q, [slow])
