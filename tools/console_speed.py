"""How fast the console answers with a big queue: a benchmark, not a test.

    python tools/console_speed.py --queued 1000000 --finished 100000 --failed 1000 --requests 40

A private redis-server gets the tasks through the queue's own paths: `Queue.submit` in batches of
1,000 lines; the finished and failed ones are claimed and reported with `Queue.claim` and
`Queue.settle` (what a worker does, 1,000 to a round trip), so every record is the scripts' own.
One worker heartbeat registers a worker. Then `distcomp console` runs as a process, and each page
and API endpoint is requested `--requests` times in turn over one keep-alive connection (after a
warm-up request); the table gives the median and 95th percentile of the wall time per answer, as
the client sees it, in ms. `--json` prints the figures as one JSON object too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distcomp_obs.netutil import free_port  # noqa: E402
from distcomp_obs.queue import Queue  # noqa: E402
from distcomp_obs.records import ClaimLimits, Report  # noqa: E402
from distcomp_obs.redis_io import connect  # noqa: E402
from distcomp_obs.redis_server import RedisServer  # noqa: E402

PREFIX = "speed:"
BATCH = 1000
WORKER, INCARNATION = "speed-worker", "speed-worker.1"
LIMITS = ClaimLimits(free_dram_gb=1e6, cpus=1e6)


def queued_line(i: int) -> str:
    return f"shell:{i % 5}:0:0:./sim --case {i} --size {i % 17}"


def submit(q: Queue, lines: list[str], job: str) -> None:
    for start in range(0, len(lines), BATCH):
        q.submit(lines[start : start + BATCH], job=job)


def run_through(q: Queue, n: int, outcome: str, text: Any) -> None:
    """Claim the n waiting tasks and report them `outcome`, as a worker does, BATCH a round trip."""
    done = 0
    while done < n:
        claimed = q.claim(WORKER, INCARNATION, min(BATCH, n - done), LIMITS).tasks
        if not claimed:
            raise SystemExit(f"claimed nothing after {done} of {n}")
        reports = [Report(c.line, c.token, outcome, text(c.line), '"ms":12,"exit":0') for c in claimed]
        q.settle(WORKER, INCARNATION, reports, 0, LIMITS, max_retry=0)
        done += len(claimed)


def load(q: Queue, queued: int, finished: int, failed: int) -> dict[str, float]:
    took: dict[str, float] = {}
    assert q.acquire_lease(WORKER, INCARNATION, 3_600_000)
    q.heartbeat(WORKER, INCARNATION, 3_600_000, {"host": "speed", "cores": 8, "concurrency": 8,
                                                  "mem_total_gb": 32, "mem_available_gb": 30})  # fmt: skip
    started = time.perf_counter()
    submit(q, [f"builtin:1:0:0:noop done {i}" for i in range(finished)], "done-part")
    run_through(q, finished, "finished", lambda line: f"result of {line.rsplit(' ', 1)[1]}\n")
    submit(q, [f"shell:1:0:0:./flaky --run {i}" for i in range(failed)], "flaky")
    reason = "exit code 3; stderr: disk quota exceeded on node-{}"
    run_through(q, failed, "failed", lambda line: reason.format(int(line.rsplit(" ", 1)[1]) % 50))
    took["finished_and_failed_s"] = time.perf_counter() - started
    started = time.perf_counter()
    for part in range(10):  # ten jobs of queued tasks
        submit(q, [queued_line(i) for i in range(part, queued, 10)], f"sweep-{part}")
    took["queued_s"] = time.perf_counter() - started
    return took


def endpoints(q: Queue, queued: int) -> list[str]:
    todo_line, done_line = queued_line(queued // 2), "builtin:1:0:0:noop done 7"
    todo_id, done_id = (q.meta(todo_line) or (0,))[0], (q.meta(done_line) or (0,))[0]
    return [
        "/",
        "/tasks?state=todo",
        "/tasks?state=finished",
        "/tasks?state=failed",
        "/tasks?state=todo&q=" + urllib.parse.quote(f"--case {queued - 1} "),  # one task in 1,000,000
        "/tasks?state=todo&job=sweep-3",
        "/tasks?state=finished&q=done%2099999",
        "/tasks?state=failed&q=node-7",  # the error text
        f"/tasks/{todo_id}",
        f"/tasks/{done_id}",
        "/jobs",
        "/jobs/sweep-3",
        "/jobs/flaky",
        "/workers",
        "/fragments/overview",
        "/api/overview",
        "/api/tasks?state=todo",
        "/api/tasks?state=failed&q=quota",
        f"/api/tasks/{todo_id}",
        "/api/jobs",
        "/api/jobs/flaky",
        "/api/workers",
    ]


def measure(port: int, paths: list[str], requests: int) -> dict[str, dict[str, float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: dict[str, dict[str, float]] = {}
    for path in paths:
        times = []
        for i in range(requests + 1):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"{path}: HTTP {resp.status}")
            if i:  # the first one warms up
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out[path] = {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}
    conn.close()
    return out


def start_console(url: str, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "distcomp_obs", "console", "--redis-url", url, "--prefix", PREFIX,
            "--addr", f"127.0.0.1:{port}", "--log-level", "WARNING"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DISTCOMP_CONSOLE_TOKEN", None)
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the console did not answer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--queued", type=int, default=1_000_000)
    ap.add_argument("--finished", type=int, default=100_000)
    ap.add_argument("--failed", type=int, default=1_000)
    ap.add_argument("--requests", type=int, default=40, help="requests per page (after one warm-up)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = RedisServer(port=free_port()).start()
    console = None
    try:
        client = connect(server.url)
        q = Queue(client, PREFIX)
        took = load(q, args.queued, args.finished, args.failed)
        counts = q.counts()
        memory_mb = int(client.info("memory")["used_memory"]) / 2**20
        print(f"loaded {counts} in {sum(took.values()):.0f} s; Redis used_memory {memory_mb:.0f} MiB", flush=True)
        port = free_port()
        console = start_console(server.url, port)
        figures = measure(port, endpoints(q, args.queued), args.requests)
        print("\n| request | median ms | p95 ms |\n|---|---:|---:|")
        for path, f in figures.items():
            print(f"| `{path}` | {f['median_ms']:.1f} | {f['p95_ms']:.1f} |")
        if args.json:
            print(json.dumps({"counts": counts, "load_s": took, "redis_mib": memory_mb, "figures": figures}))
        worst = max(f["p95_ms"] for f in figures.values())
        print(f"\nslowest p95: {worst:.1f} ms")
    finally:
        if console is not None:
            console.terminate()
            console.wait(10)
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
