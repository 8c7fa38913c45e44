"""Helpers shared by the fault tests and the chaos soak: tasks that log every execution,
execution counting, metric scraping and the fault-injecting TCP proxy (the bench's, with the
fault tests' knobs)."""

from __future__ import annotations

import collections
import re
import shlex
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from distcomp_obs.audit import AuditReport, audit
from distcomp_obs.bench.proxy import LatencyProxy
from distcomp_obs.queue import Queue
from tests.conftest import wait_until


def logged_task(i: int, log: Path, first_run_s: float = 0.0, priority: int = 1, dram: float = 0,
                extra: str = "") -> str:  # fmt: skip
    """A shell task that appends its id to `log` on every execution. With first_run_s it sleeps
    that long on its first execution only (a marker file), so a task killed mid-run re-runs fast."""
    q = shlex.quote(str(log))
    body = f"echo {i} >> {q}"
    if first_run_s:
        marker = shlex.quote(f"{log}.m{i}")
        body += f"; [ -e {marker} ] || {{ touch {marker}; sleep {first_run_s:g}; }}"
    return f"shell:{priority}:{dram:g}:0:{body}{extra}"


def executions(log: Path) -> collections.Counter[str]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.strip() for line in log.read_text().splitlines() if line.strip())


def wait_done(queue: Queue, total: int, timeout: float = 30.0) -> None:
    def done() -> bool:
        c = queue.counts()
        return c["finished"] + c["failed"] >= total and c["todo"] == 0 and c["in_progress"] == 0

    wait_until(done, timeout, 0.05, what=f"{total} tasks terminal (now {queue.counts()})")


def assert_audit(queue: Queue, submitted: list[str], expect_done: bool = True) -> AuditReport:
    report = audit(queue, submitted=submitted, expect_done=expect_done)
    assert report.ok, report.summary()
    return report


def scrape(queue: Queue, worker: str) -> str:
    url = queue.workers()[worker].get("metrics_url")
    assert url, f"worker {worker} publishes no metrics url"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        got = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


class FaultProxy(LatencyProxy):
    """The bench's proxy (distcomp_obs.bench.proxy) on 127.0.0.1, with the fault tests' two knobs:

    - `delay_s`: added to each chunk on its way to Redis (a latency spike);
    - `drop_reply_on`: a predicate on request bytes; the next request it matches is forwarded to
      Redis, but the connection is cut before the reply comes back (a lost reply: the command ran).
      Unlike `drop_next_reply`, the test picks the request whose reply is lost (a claim or a report).
    """

    def __init__(self, target_port: int) -> None:
        super().__init__(("127.0.0.1", target_port))

    @property
    def delay_s(self) -> float:
        return self.delays_ms[0] / 1000

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        self.set_delays(seconds * 1000, self.delays_ms[1])

    @property
    def drop_reply_on(self) -> Callable[[bytes], bool] | None:
        return self.reply_drop_armed

    @drop_reply_on.setter
    def drop_reply_on(self, match: Callable[[bytes], bool] | None) -> None:
        self.drop_reply_to(match)

    @property
    def dropped(self) -> int:
        return self.dropped_replies


def now() -> float:
    return time.monotonic()
