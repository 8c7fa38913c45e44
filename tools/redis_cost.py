"""Redis cost of the record layout, two source trees side by side (interleaved rounds, medians).

    python tools/redis_cost.py --tree old=/path/to/checkout-a --tree new=. --rounds 5 --tasks 20000

Each round, for each tree: a private redis-server, one `Queue.submit` of N no-op lines (Redis CPU
µs per line from INFO cpu, lines/s for the client, bytes of `used_memory` per queued task), then
one `distcomp worker` (default flags, 2 slots) drains them (Redis CPU µs per task, tasks/s). A tree
runs with PYTHONPATH set to it, so the worker it starts is that tree's too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_RUN = r"""
import json, os, subprocess, sys, time
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
try:
    from distcomp_obs.redis_server import RedisServer
except ImportError:  # trees from before redis_server.py
    from distcomp_obs.redis_io import RedisServer
n = int(sys.argv[1])
srv = RedisServer().start()
c = connect(srv.url)
q = Queue(c, "cost:")
lines = [f"builtin:1:0:0:noop abcdef-{i}" for i in range(n)]
def cpu():
    i = c.info("cpu")
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])
m0, c0, t0 = c.info("memory")["used_memory"], cpu(), time.perf_counter()
q.submit(lines)
submit_s, c1, m1 = time.perf_counter() - t0, cpu(), c.info("memory")["used_memory"]
w = subprocess.Popen([sys.executable, "-m", "distcomp_obs", "worker", "--redis-url", srv.url, "--prefix", "cost:",
                      "--name", "w", "--concurrency", "2", "--no-metrics"],
                     env=dict(os.environ, DISTCOMP_LOG_LEVEL="WARNING"))
t1 = time.perf_counter()
while q.counts()["finished"] < n:
    time.sleep(0.02)
drain_s, c2 = time.perf_counter() - t1, cpu()
w.terminate()
w.wait()
srv.stop()
print(json.dumps({"submit_us_per_line": (c1 - c0) * 1e6 / n, "submit_lines_per_s": n / submit_s,
                  "bytes_per_queued_task": (m1 - m0) / n, "drain_us_per_task": (c2 - c1) * 1e6 / n,
                  "drain_tasks_per_s": n / drain_s}))
"""


def one_run(tree: str, tasks: int) -> dict[str, float]:
    root = os.path.abspath(tree)
    # run inside the tree: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(tasks)], env=env, cwd=root, capture_output=True,
                         text=True, check=True)  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=20000)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, path in trees.items():
            runs[name].append(one_run(path, args.tasks))
    figures = list(next(iter(runs.values()))[0])
    print("| figure | " + " | ".join(trees) + " |")
    print("|---|" + "---|" * len(trees))
    for fig in figures:
        cells = [f"{statistics.median(r[fig] for r in runs[name]):,.1f}" for name in trees]
        print(f"| {fig} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
