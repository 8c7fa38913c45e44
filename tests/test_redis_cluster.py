"""Redis Cluster: queues on a real 3-master cluster (tests/cluster_tools.py), through the
redis+cluster:// URL, with real `distcomp` worker and manager subprocesses.

A queue's keys share one hash slot (`{prefix}:record`), so each queue lives on one master and
its scripts, pipelines and transactions run there; two queues placed on different masters drain
at the same time, each audited as the single-server tests are. Under CI=true a missing
redis-server or redis-cli fails instead of skipping (conftest.require).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from distcomp_obs.audit import audit
from distcomp_obs.config import Settings
from distcomp_obs.errors import ConfigError, RedisUnavailable
from distcomp_obs.exporter import queue_label
from distcomp_obs.keys import Keys
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import ClusterClient, connect, parse_cluster_url, redact_url, server_time
from distcomp_obs.redis_server import RedisServer
from tests.cluster_tools import RedisClusterServers, cluster_ports, find_redis_cli
from tests.conftest import FAST, WorkerProc, distcomp_argv, require, run_cli, wait_until
from tests.test_exporter import ExporterProc, value

TASKS = 2000  # per queue


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    try:
        find_redis_cli()
        servers = RedisClusterServers(masters=3).start()
    except RedisUnavailable as exc:
        require(False, str(exc))
        raise  # unreachable: require() skips or fails
    yield servers
    servers.cleanup()


# --- the URL ---------------------------------------------------------------------------------
def test_cluster_url_lists_startup_nodes_and_keeps_credentials_and_options() -> None:
    first, nodes = parse_cluster_url("rediss+cluster://app:s3cret@h1:7000,[::1]:7001,h3/?ssl_cert_reqs=none")
    assert first == "rediss://app:s3cret@h1:7000/?ssl_cert_reqs=none"
    assert nodes == [("h1", 7000), ("::1", 7001), ("h3", 6379)]
    assert parse_cluster_url("redis+cluster://h:1/0")[1] == [("h", 1)]
    assert redact_url("redis+cluster://app:s3cret@h1:7000,h2:7001/") == "redis+cluster://app:***@h1:7000,h2:7001/"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://h:1/2", "only database 0"),
        ("redis+cluster://h:port/", "bad host:port"),
        ("redis+cluster:///", "no host:port"),
        ("redis+cluster://h:1,h:99999/", "bad host:port"),
    ],
)
def test_bad_cluster_urls_are_refused_by_settings(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Settings(redis_url=url)


def test_cluster_url_to_a_single_server_is_one_clear_error(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis+cluster://")
    with pytest.raises(RedisUnavailable, match="cluster support disabled.*use a redis:// or rediss:// URL"):
        connect(url)
    client = connect(url, check=False)
    with pytest.raises(redis.ResponseError):  # the worker's wait_for_redis stops on it, as on an ACL error
        client.ping()


def test_unreachable_cluster_is_a_connection_error() -> None:
    with pytest.raises(RedisUnavailable, match="cannot reach Redis at redis\\+cluster://127.0.0.1:1/"):
        connect("redis+cluster://127.0.0.1:1/", timeout_s=1)
    client = connect("redis+cluster://127.0.0.1:1/", timeout_s=1, check=False)  # as for one server: no error yet
    q = Queue(client, "down:")
    for read in (client.ping, q.counts, lambda: q.submit(["builtin:1:0:0:noop x"]), q.subscribe_wake):
        with pytest.raises(redis.ConnectionError):
            read()


def _finished_by(proc: WorkerProc) -> int:
    found = re.search(r"stopped: (\d+) finished", proc.log())
    assert found, proc.log()[-2000:]
    return int(found.group(1))


# --- queues on the cluster -------------------------------------------------------------------
def test_one_queue_is_one_slot_on_one_master(cluster: RedisClusterServers) -> None:
    """Every key a queue writes hashes to its tag's slot, and a multi-slot script is refused by
    the client before it reaches Redis."""
    prefix = cluster.prefixes_on_distinct_masters(1, stem="slot")[0]
    q = Queue(connect(cluster.url), prefix)
    try:
        q.submit([f"builtin:1:0:0:noop slot {i}" for i in range(10)])
        slot = key_slot(Keys(prefix).tag.encode())
        owner = cluster.slot_owner()[slot]
        with redis.Redis(port=owner, decode_responses=True) as node:
            in_slot = int(node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
            assert in_slot > 0 and in_slot == len(node.keys(Keys(prefix).pattern))
        assert isinstance(q.r, ClusterClient)
        sec, _ = server_time(q.r, Keys(prefix).tag + "x")  # TIME of the queue's own master
        assert abs(sec - time.time()) < 60
        with pytest.raises(Exception, match="same key slot|same slot|CROSSSLOT"):
            q.r.eval("return 1", 2, Keys(prefix).tag + "x", "{other}:x")
    finally:
        manager.reset(q)


#: per queue (in `prefixes` order): two workers on the Lua scripts; two on DistComp's protocol
#: (--no-pipeline: one command per round trip, MULTI/EXEC), so both run on a cluster
WORKER_FLAGS = (["--pipeline", "--prefetch", "64"], ["--no-pipeline", "--prefetch", "4"])


def _start_workers(url: str, prefix: str, flags: list[list[str]], log_dir: Path) -> list[WorkerProc]:
    """One worker per entry of `flags`. Their safety poll is 60 s: a drain well under it shows
    that the wake-up PUBLISH reached them through the cluster."""
    procs = []
    for n, extra in enumerate(flags):
        argv = distcomp_argv("worker", "--redis-url", url, "--prefix", prefix, "--name", f"w{n}", "--concurrency", "4",
                             "--polling", "adaptive", "--grace-period", "5", *extra)  # fmt: skip
        env = {**os.environ, "DISTCOMP_IDLE_MAX_WAIT_S": "60"}
        procs.append(WorkerProc(argv, log_dir / f"{prefix.strip(':')}-w{n}.log", env))
    return procs


def _check_drained(url: str, q: Queue, lines: list[str], procs: list[WorkerProc]) -> None:
    """Audit OK, every task finished once (the workers' own tallies add up to the tasks), and
    `distcomp status` reads the same through the cluster URL."""
    ran = [_finished_by(proc) for proc in procs]
    assert sum(ran) == len(lines), ran
    rep = audit(q, lines, expect_done=True)
    assert rep.ok, rep.summary()
    n = len(lines)
    assert rep.counts == {"submitted": n, "todo": 0, "in_progress": 0, "finished": n, "failed": 0}
    flags = ["--redis-url", url, "--prefix", q.keys.prefix]
    status = run_cli("status", *flags, "--json")
    assert status.returncode == 0, status.stderr
    drained = {"todo": 0, "in_progress": 0, "finished": n, "failed": 0, "cancelled": 0}
    assert json.loads(status.stdout)["counts"] == drained
    check = run_cli("status", *flags, "--check", "--drained")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.timeout(60)
def test_two_queues_on_two_masters_drain_at_once_exactly_once(cluster: RedisClusterServers, tmp_path: Path) -> None:
    prefixes = cluster.prefixes_on_distinct_masters(2)
    owner = cluster.slot_owner()
    masters = {p: owner[key_slot(Keys(p).tag.encode())] for p in prefixes}
    assert len(set(masters.values())) == 2, masters
    client = connect(cluster.url)
    queues = {p: Queue(client, p) for p in prefixes}
    lines = {p: [f"builtin:1:0:0:noop {p}{i}" for i in range(TASKS)] for p in prefixes}
    procs: dict[str, list[WorkerProc]] = {}
    try:
        for p, flags in zip(prefixes, WORKER_FLAGS, strict=True):
            procs[p] = _start_workers(cluster.url, p, [flags, flags], tmp_path)
        for p, q in queues.items():  # idle before anything is submitted
            wait_until(lambda q=q: len(q.workers()) == 2, timeout=20, what=f"both workers of {p} registered")
            listed = run_cli("workers", "--redis-url", cluster.url, "--prefix", p)
            assert listed.returncode == 0 and "w0" in listed.stdout and "w1" in listed.stdout, listed
        for p in prefixes:
            (tmp_path / "tasks.txt").write_text("\n".join(lines[p]) + "\n")
            sub = run_cli("submit", str(tmp_path / "tasks.txt"), "--redis-url", cluster.url, "--prefix", p)
            assert sub.returncode == 0, sub.stdout + sub.stderr
        for p, q in queues.items():
            wait_until(lambda q=q: q.counts()["finished"] >= TASKS, timeout=30, interval=0.1, what=f"{p} drained")
        for proc in (proc for group in procs.values() for proc in group):
            assert proc.stop(timeout=10) == 0, proc.log()[-3000:]
        for p, q in queues.items():
            _check_drained(cluster.url, q, lines[p], procs[p])
        exporter = ExporterProc(cluster.url, prefixes, tmp_path / "exporter.log")
        try:
            samples = exporter.scrape()
        finally:
            exporter.stop()
        for p in prefixes:
            assert value(samples, "distcomp_queue_tasks", queue=queue_label(p), state="finished") == TASKS
            assert value(samples, "distcomp_queue_tasks", queue=queue_label(p), state="todo") == 0
        assert value(samples, "distcomp_exporter_collect_errors_total") == 0
        # each queue's keys are on its own master; the third master holds none
        for port in cluster.ports:
            with redis.Redis(port=port, decode_responses=True) as node:
                held = {p for p in prefixes if node.keys(Keys(p).pattern)}
            assert held == {p for p in prefixes if masters[p] == port}, (port, masters)
    except AssertionError as exc:
        logs = (f"--- {proc.log_path.name}\n{proc.log()[-2000:]}" for group in procs.values() for proc in group)
        raise AssertionError("\n".join([str(exc), *logs])) from None
    finally:
        for proc in (proc for group in procs.values() for proc in group):
            proc.close()
        for q in queues.values():
            manager.reset(q)


@pytest.mark.timeout(60)
def test_worker_started_before_the_cluster_waits_for_it(tmp_path: Path) -> None:
    """As for one server: a worker whose cluster is not up yet waits (one log line), then runs."""
    try:
        find_redis_cli()
        late = RedisClusterServers(masters=3, ports=cluster_ports(3))
    except RedisUnavailable as exc:
        require(False, str(exc))
        raise
    argv = distcomp_argv("worker", "--redis-url", late.url, "--prefix", "late", "--name", "early", *FAST)
    worker = WorkerProc(argv, tmp_path / "early.log", dict(os.environ))
    try:
        wait_until(lambda: "waiting for Redis" in worker.log(), timeout=20, what="the worker waits for the cluster")
        late.start()
        q = Queue(connect(late.url), "late")
        lines = [f"builtin:1:0:0:noop late {i}" for i in range(50)]
        q.submit(lines)
        wait_until(lambda: q.counts()["finished"] == len(lines), timeout=30, what=f"drained\n{worker.log()}")
        assert worker.stop(timeout=10) == 0, worker.log()
        rep = audit(q, lines, expect_done=True)
        assert rep.ok, rep.summary()
        assert worker.log().count("waiting for Redis") == 1
    finally:
        worker.close()
        late.cleanup()


@pytest.mark.timeout(60)
def test_failures_retries_and_manager_commands_on_the_cluster(cluster: RedisClusterServers, tmp_path: Path) -> None:
    """Retries on the other worker, retry-failed, purge-finished, stop-workers (PUBLISH) and reset
    (MULTI/EXEC and UNLINK on the queue's slot) through the cluster URL."""
    prefix = cluster.prefixes_on_distinct_masters(1, stem="mgr")[0]
    q = Queue(connect(cluster.url), prefix)
    flags = ["--redis-url", cluster.url, "--prefix", prefix]
    ok = [f"builtin:1:0:0:noop ok {i}" for i in range(30)]
    bad = [f"builtin:1:0:0:fail bad {i}" for i in range(5)]
    workers = _start_workers(cluster.url, prefix, [FAST, [*FAST, "--no-pipeline"]], tmp_path)
    try:
        wait_until(lambda: len(q.workers()) == 2, timeout=20, what="both workers registered")
        q.submit(ok + bad)
        wait_until(lambda: q.counts()["finished"] == 30 and q.counts()["failed"] == 5, timeout=30, what="settled")
        assert q.stats().get("retried", 0) >= 5  # each failure was retried on the other worker first
        retried = run_cli("retry-failed", *flags)
        assert retried.returncode == 0 and "5" in retried.stdout, retried
        wait_until(lambda: q.counts()["failed"] == 5 and q.counts()["todo"] == 0, timeout=30, what="failed again")
        purged = run_cli("purge-finished", *flags)
        assert purged.returncode == 0 and "30" in purged.stdout, purged
        assert q.counts()["finished"] == 0
        stop = run_cli("stop-workers", *flags)
        assert stop.returncode == 0, stop
        assert all(w.wait(20) == 0 for w in workers), [w.log()[-2000:] for w in workers]
        rep = audit(q)
        assert rep.ok, rep.summary()
        assert run_cli("reset", "--yes", *flags).returncode == 0
        assert not any(q.counts().values()), q.counts()
    finally:
        for w in workers:
            w.close()
        manager.reset(q)


#: docs/RELIABILITY.md's least-privilege user, plus what a cluster client needs: the slot map
#: (CLUSTER SLOTS) and whether the cluster serves (CLUSTER INFO, ClusterClient.ping)
CLUSTER_ACL = ("on", ">s3cret", "~{aclq}:*", "&{aclq}:*", "+@read", "+@write", "+@scripting", "+@pubsub",
               "+@connection", "+@transaction", "+time", "-@dangerous", "-keys", "-scan", "-script|flush",
               "-function|flush", "+info", "+config|get", "+cluster|slots", "+cluster|info")  # fmt: skip


def test_least_privilege_user_on_the_cluster(cluster: RedisClusterServers) -> None:
    for port in cluster.ports:  # ACLs are per node: a cluster needs the user on every node
        with redis.Redis(port=port) as node:
            node.acl_setuser("distcomp-acl", reset=True)
            node.execute_command("ACL", "SETUSER", "distcomp-acl", *CLUSTER_ACL)
    url = cluster.url.replace("redis+cluster://", "redis+cluster://distcomp-acl:s3cret@")
    q = Queue(connect(url), "aclq")
    try:
        lines = [f"builtin:1:0:0:noop acl {i}" for i in range(20)]
        assert q.submit(lines) == 20
        assert q.snapshot().counts["todo"] == 20
        assert audit(q, lines).ok
        with pytest.raises(redis.exceptions.NoPermissionError):
            q.r.set("{other}:x", "1")  # another queue's keys are out of reach
        out = run_cli("status", "--redis-url", url, "--prefix", "aclq", "--check")
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        manager.reset(q)
    bare = cluster.url.replace("redis+cluster://", "redis+cluster://nobody:x@")
    with pytest.raises(RedisUnavailable, match="refused the credentials"):
        connect(bare)
