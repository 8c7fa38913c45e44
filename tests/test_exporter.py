"""`distcomp exporter` against real Redis, real workers and real HTTP: its numbers match what
`distcomp status` / `distcomp workers` say, its counters live in Redis, /sd lists live and dead
workers, /healthz follows Redis, and a scrape costs the same Redis commands whatever the queue size."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from distcomp_obs.config import parse_prefixes
from distcomp_obs.exporter import queue_label, sd_target
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import REPO, distcomp_argv, require, run_cli, terminate, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(url: str, accept: str = "") -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def parse(text: str) -> Samples:
    """{(sample name, sorted labels): value} of a text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class ExporterProc:
    def __init__(self, redis_url: str, prefixes: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        argv = distcomp_argv("exporter", "--redis-url", redis_url, "--metrics-addr", f"127.0.0.1:{self.port}")
        for p in prefixes:
            argv += ["--prefix", p]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_until(self._up, timeout=20, interval=0.05, what="exporter listening")

    def _up(self) -> bool:
        assert self.proc.poll() is None, "exporter exited"
        try:
            http_get(self.base + "/healthz")
            return True
        except OSError:
            return False

    def scrape(self) -> Samples:
        code, _, body = http_get(self.base + "/metrics")
        assert code == 200
        return parse(body)

    def sd(self) -> list[dict]:
        code, ctype, body = http_get(self.base + "/sd")
        assert code == 200 and ctype == "application/json"
        return json.loads(body)

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture
def start_exporter(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Callable[..., ExporterProc]]:
    procs: list[ExporterProc] = []

    def start(*prefixes: str, url: str | None = None) -> ExporterProc:
        proc = ExporterProc(url or redis_url, list(prefixes) or [prefix], tmp_path / f"exporter-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def status_json(redis_url: str, prefix: str) -> dict:
    out = run_cli("status", "--json", "--redis-url", redis_url, "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def workers_json(redis_url: str, prefix: str) -> dict:
    out = run_cli("workers", "--json", "--redis-url", redis_url, "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --------------------------------------------------------------------------- pure helpers


def test_prefix_parsing_and_queue_label() -> None:
    assert parse_prefixes(["a:", "b:,c:", "a:"], "distcomp:") == ["a:", "b:", "c:"]
    assert parse_prefixes(None, "distcomp:") == ["distcomp:"]
    assert queue_label("distcomp:") == "distcomp"


def test_sd_target_labels_and_metrics_path() -> None:
    info = {"metrics_url": "http://node7.example:9712/custom", "variant": "optimized", "host": "node7"}
    group = sd_target("w1", info, "dc")
    assert group == {
        "targets": ["node7.example:9712"],
        "labels": {"worker": "w1", "variant": "optimized", "host": "node7", "queue": "dc",
                   "__metrics_path__": "/custom"},
    }  # fmt: skip
    assert "__metrics_path__" not in sd_target("w1", {**info, "metrics_url": "http://h:1/metrics"}, "dc")["labels"]
    assert sd_target("w1", {"metrics_url": ""}, "dc") is None  # --no-metrics


# --------------------------------------------------------------------------- against real processes


def test_exporter_matches_status_and_counters_survive_restarts(
    redis_url: str, prefix: str, queue: Queue, tmp_path: Path, start_worker, start_exporter
) -> None:
    tasks = tmp_path / "tasks.txt"
    lines = [f"builtin:1:0:0:noop {i}" for i in range(60)] + ["builtin:1:0:0:fail a", "builtin:1:0:0:fail b"]
    tasks.write_text("\n".join(lines) + "\n")
    assert run_cli("submit", str(tasks), "--redis-url", redis_url, "--prefix", prefix).returncode == 0
    exporter = start_exporter()
    before = exporter.scrape()
    q = queue_label(prefix)
    assert value(before, "distcomp_queue_tasks", queue=q, state="todo") == 62
    assert value(before, "distcomp_queue_tasks_submitted_total", queue=q) == 62
    assert value(before, "distcomp_queue_oldest_task_age_seconds", queue=q, state="todo") >= 0

    worker = start_worker("--concurrency", "2", name="w1")
    wait_until(lambda: queue.counts()["finished"] + queue.counts()["failed"] == 62, what="queue drained")
    wait_until(lambda: workers_json(redis_url, prefix)["w1"]["finished"] == 60, what="heartbeat caught up")

    status, workers, m = status_json(redis_url, prefix), workers_json(redis_url, prefix), exporter.scrape()
    for state in ("todo", "in_progress", "finished", "failed", "cancelled"):
        assert value(m, "distcomp_queue_tasks", queue=q, state=state) == status["counts"][state], state
    assert status["counts"] == {"todo": 0, "in_progress": 0, "finished": 60, "failed": 2, "cancelled": 0}
    assert value(m, "distcomp_queue_tasks", queue=q, state="buffered") == sum(w["buffered"] for w in workers.values())
    stats = status["stats"]
    assert value(m, "distcomp_queue_tasks_submitted_total", queue=q) == stats["submitted"] == 62
    assert value(m, "distcomp_queue_tasks_claimed_total", queue=q) == stats["claimed"] == 62
    assert value(m, "distcomp_queue_tasks_finished_total", queue=q) == stats["finished"] == 60
    assert value(m, "distcomp_queue_tasks_failed_total", queue=q) == stats["failed"] == 2
    assert value(m, "distcomp_workers", queue=q, state="live") == 1
    assert value(m, "distcomp_workers", queue=q, state="stale") == 0
    beat = value(m, "distcomp_worker_last_heartbeat_timestamp_seconds", queue=q, worker="w1")
    assert abs(beat - workers["w1"]["time"]) < 5
    assert value(m, "distcomp_queue_oldest_task_age_seconds", queue=q, state="in_progress") == 0
    assert value(m, "distcomp_exporter_collect_errors_total") == 0
    assert value(m, "distcomp_exporter_redis_up") == 1
    assert value(m, "distcomp_exporter_collect_duration_seconds") > 0
    assert not [k for k in m if k[0] == "distcomp_queue_tasks_started_total"]  # renamed: it counts claims
    assert not [k for k in m if k[0].endswith("_created")]

    # The counters live in Redis: a new worker process and a new exporter process see the same.
    assert worker.stop() == 0
    exporter.stop()
    start_worker("--concurrency", "1", name="w1")
    again = start_exporter().scrape()
    for name in ("submitted", "claimed", "finished", "failed"):
        key = f"distcomp_queue_tasks_{name}_total"
        assert value(again, key, queue=q) == value(m, key, queue=q), name


def test_sd_lists_live_and_killed_workers_until_forgotten(
    redis_url: str, prefix: str, queue: Queue, start_worker, start_exporter
) -> None:
    exporter = start_exporter()
    assert exporter.sd() == []  # Prometheus wants an empty list, not an error, when there is nothing
    start_worker(name="alive")
    start_worker("--variant", "exp", name="doomed")

    def both() -> list[dict] | None:
        groups = exporter.sd()
        return groups if len(groups) == 2 else None

    sd = wait_until(both, what="both workers in /sd")
    by_worker = {g["labels"]["worker"]: g for g in sd}
    assert by_worker["doomed"]["labels"]["variant"] == "exp"
    for name, group in by_worker.items():
        assert group["labels"]["queue"] == queue_label(prefix)
        assert group["labels"]["host"]
        assert "__metrics_path__" not in group["labels"]
        (target,) = group["targets"]
        code, _, body = http_get(f"http://{target}/metrics")  # the target really is that worker
        assert code == 200 and f'worker="{name}"' in body

    # kill -9: no leave, no deregistration; the lease runs out (1 s in tests) and it turns stale
    doomed_pid = workers_json(redis_url, prefix)["doomed"]["pid"]
    os.kill(doomed_pid, signal.SIGKILL)
    q = queue_label(prefix)
    wait_until(lambda: value(exporter.scrape(), "distcomp_workers", queue=q, state="stale") == 1, what="stale")
    m = exporter.scrape()
    assert value(m, "distcomp_workers", queue=q, state="live") == 1
    assert ("distcomp_worker_last_heartbeat_timestamp_seconds", (("queue", q), ("worker", "doomed"))) in m
    sd = exporter.sd()
    assert {g["labels"]["worker"] for g in sd} == {"alive", "doomed"}  # still a target: up == 0
    dead_target = next(g for g in sd if g["labels"]["worker"] == "doomed")["targets"][0]
    with pytest.raises(OSError):
        http_get(f"http://{dead_target}/metrics")

    # The reaper returns its tasks but keeps the registration (`distcomp workers` shows it DEAD);
    # once forgotten it leaves discovery and the heartbeat series.
    manager.forget_worker(queue, "doomed")
    assert [g["labels"]["worker"] for g in exporter.sd()] == ["alive"]
    m = exporter.scrape()
    assert value(m, "distcomp_workers", queue=q, state="stale") == 0
    assert ("distcomp_worker_last_heartbeat_timestamp_seconds", (("queue", q), ("worker", "doomed"))) not in m


def test_healthz_follows_redis(restartable_redis: RedisServer, prefix: str, start_exporter) -> None:
    exporter = start_exporter(prefix, url=restartable_redis.url)
    assert http_get(exporter.base + "/healthz")[0] == 200  # no scrape yet: it pings Redis itself
    assert value(exporter.scrape(), "distcomp_exporter_collect_errors_total") == 0
    assert http_get(exporter.base + "/healthz")[0] == 200

    restartable_redis.stop(kill=True)
    m = exporter.scrape()  # the scrape itself still answers, with the error counted and no queue numbers
    assert value(m, "distcomp_exporter_collect_errors_total") == 1
    assert value(m, "distcomp_exporter_redis_up") == 0
    assert not [k for k in m if k[0] == "distcomp_queue_tasks"]
    code, _, body = http_get(exporter.base + "/healthz")
    assert code == 503 and "last collect failed" in body
    assert http_get(exporter.base + "/livez")[0] == 200  # not ready, but alive: it is what reports the outage

    restartable_redis.start()

    def collected() -> Samples | None:
        samples = exporter.scrape()
        return samples if any(k[0] == "distcomp_queue_tasks" for k in samples) else None

    m = wait_until(collected, what="collect works again")
    assert value(m, "distcomp_exporter_collect_errors_total") >= 1
    assert value(m, "distcomp_exporter_redis_up") == 1
    assert http_get(exporter.base + "/healthz")[0] == 200


def test_frozen_redis_scrape_answers_in_time_with_redis_up_0(
    restartable_redis: RedisServer, prefix: str, start_exporter
) -> None:
    """A frozen Redis (SIGSTOP: connections are accepted, reads hang) must not hang the scrape past
    Prometheus' scrape_timeout (4 s bundled): it answers with redis_up 0, without queue series."""
    Queue(connect(restartable_redis.url), prefix).submit(["builtin:1:0:0:noop 1"])
    exporter = start_exporter(prefix, url=restartable_redis.url)
    assert value(exporter.scrape(), "distcomp_exporter_redis_up") == 1
    assert restartable_redis.process is not None
    pid = restartable_redis.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(2):  # the first on the open connection, the next on a new one
            started = time.monotonic()
            m = exporter.scrape()
            took = time.monotonic() - started
            assert took < 3.0, f"scrape took {took:.1f}s with Redis frozen"
            assert value(m, "distcomp_exporter_redis_up") == 0
            assert not [k for k in m if k[0].startswith("distcomp_queue_")]
        assert value(m, "distcomp_exporter_collect_errors_total") == 2
        code, _, body = http_get(exporter.base + "/healthz")
        assert code == 503 and "Timeout" in body, body
    finally:
        os.kill(pid, signal.SIGCONT)
    m = wait_until(lambda: (s := exporter.scrape()) and value(s, "distcomp_exporter_redis_up") == 1 and s,
                   what="redis_up 1 after SIGCONT")  # fmt: skip
    assert value(m, "distcomp_queue_tasks", queue=queue_label(prefix), state="todo") == 1


def test_heartbeat_age_and_task_timeout_from_the_workers_status(queue: Queue, prefix: str, start_exporter) -> None:
    """Heartbeat age by the Redis server's clock, and the stuck-task alert's input: the longest
    `task_timeout_s` the live workers report (0 if one has none; absent if none reports it)."""
    q = queue_label(prefix)
    exporter = start_exporter()

    def beat(name: str, **status: float) -> None:
        queue.heartbeat(name, f"inc-{name}", 60_000, {"cores": 1, "mem_total_gb": 1.0, **status})

    beat("old")  # a worker that does not report its timeout
    m = exporter.scrape()
    assert 0 <= value(m, "distcomp_worker_heartbeat_age_seconds", queue=q, worker="old") < 2
    assert not [k for k in m if k[0] == "distcomp_queue_task_timeout_seconds"]

    beat("a", task_timeout_s=600.0)
    beat("b", task_timeout_s=900.0)
    assert value(exporter.scrape(), "distcomp_queue_task_timeout_seconds", queue=q) == 900
    beat("c", task_timeout_s=0.0)  # runs tasks without a timeout
    assert value(exporter.scrape(), "distcomp_queue_task_timeout_seconds", queue=q) == 0

    time.sleep(1.5)
    beat("a", task_timeout_s=600.0)
    m = exporter.scrape()
    assert 1.4 <= value(m, "distcomp_worker_heartbeat_age_seconds", queue=q, worker="old") < 10
    assert value(m, "distcomp_worker_heartbeat_age_seconds", queue=q, worker="a") < 1.4
    ts = value(m, "distcomp_worker_last_heartbeat_timestamp_seconds", queue=q, worker="old")
    server_now = float(queue.r.time()[0])
    age = value(m, "distcomp_worker_heartbeat_age_seconds", queue=q, worker="old")
    assert abs((server_now - ts) - age) < 2  # both by the Redis server's clock


def commands_total(client: redis.Redis) -> dict[str, int]:
    return {name: int(stat["calls"]) for name, stat in client.info("commandstats").items()}


def scrape_cost(client: redis.Redis, exporter: ExporterProc) -> dict[str, int]:
    """Redis commands one scrape issued, by command (INFO's own call left out)."""
    before = commands_total(client)
    exporter.scrape()
    after = commands_total(client)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    delta.pop("cmdstat_info", None)
    return delta


def test_scrape_cost_does_not_grow_with_the_queue(redis_url: str, prefix: str, queue: Queue, start_exporter) -> None:
    client = connect(redis_url)
    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(10)])
    exporter = start_exporter()
    exporter.scrape()  # the first scrape opens the connection (HELLO/CLIENT SETINFO): not counted
    small = scrape_cost(client, exporter)
    queue.submit([f"builtin:1:0:0:noop {i}" for i in range(10, 200_000)])
    big = scrape_cost(client, exporter)
    assert big == small, (small, big)
    # lengths, counters, TIME, the registry, and ages.lua: the classes, a step per (class,
    # priority) in use plus one, the oldest waiting task's submit time, the claimed tasks' values
    assert sum(big.values()) <= 17, big  # a handful of O(1) reads, whatever the length
    assert not {"cmdstat_hscan", "cmdstat_scan", "cmdstat_keys", "cmdstat_hkeys"} & set(big)
    assert value(exporter.scrape(), "distcomp_queue_tasks", queue=queue_label(prefix), state="todo") == 200_000


def test_several_queues_and_promtool(redis_url: str, prefix: str, queue: Queue, start_exporter, tmp_path: Path) -> None:
    other = Queue(connect(redis_url), prefix.rstrip(":") + "b:")
    try:
        queue.submit(["builtin:1:0:0:noop 1"])
        other.submit(["builtin:1:0:0:noop 1", "builtin:1:0:0:noop 2"])
        exporter = start_exporter(f"{prefix},{other.keys.prefix}")
        m = exporter.scrape()
        assert value(m, "distcomp_queue_tasks", queue=queue_label(prefix), state="todo") == 1
        assert value(m, "distcomp_queue_tasks", queue=queue_label(other.keys.prefix), state="todo") == 2
        build = [k for k in m if k[0] == "distcomp_build_info"]
        assert len(build) == 1 and dict(build[0][1])["version"]

        promtool = shutil.which("promtool")
        require(promtool is not None, "promtool (Debian package: prometheus)")
        # promtool reads the Prometheus text format (OpenMetrics HELP lines name the family without
        # _total, which it reports as missing help): check the format it understands.
        _, _, body = http_get(exporter.base + "/metrics")
        res = subprocess.run([str(promtool), "check", "metrics"], input=body, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        manager.reset(other)


def test_unfit_tasks_at_the_head_neither_block_nor_hide(
    redis_url: str, prefix: str, queue: Queue, start_worker, start_exporter
) -> None:
    """Issue 10's head-of-line case: 250 tasks no worker can take (100 TB each) queued ahead of 50
    that fit. A worker runs the 50; `status --todo` and the exporter say what waits and why."""
    unfit = [f"shell:9:100000:0:echo big {i}" for i in range(250)]
    fit = [f"builtin:1:0:0:noop small {i}" for i in range(50)]
    queue.submit(unfit + fit)
    start_worker()
    wait_until(lambda: queue.counts()["finished"] == 50, 30, what="the 50 that fit finished")
    assert queue.counts()["todo"] == 250
    out = run_cli("status", "--todo", "--redis-url", redis_url, "--prefix", prefix)
    assert out.returncode == 0, out.stderr
    assert "250 waiting task(s) no live worker can take" in out.stdout
    assert out.stdout.count("cannot run on any live worker: needs 100000 GB of memory") == 250
    assert status_json(redis_url, prefix)["unrunnable"]["100000:0"]["tasks"] == 250
    exporter = start_exporter()
    assert value(exporter.scrape(), "distcomp_queue_tasks_unrunnable", queue=queue_label(prefix)) == 250


def test_a_real_workers_task_timeout_reaches_the_exporter(queue: Queue, prefix: str, start_exporter,
                                                          start_worker) -> None:  # fmt: skip
    """The stuck-task threshold's input comes from the workers' own heartbeats (`--task-timeout`)."""
    exporter = start_exporter()
    start_worker("--task-timeout", "45")
    wait_until(lambda: queue.workers().get("w1", {}).get("task_timeout_s") == 45, what="the heartbeat says 45 s")
    assert value(exporter.scrape(), "distcomp_queue_task_timeout_seconds", queue=queue_label(prefix)) == 45
