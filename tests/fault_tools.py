"""Helpers shared by the fault tests and the chaos soak: tasks that log every execution,
execution counting, metric scraping and a minimal fault-injecting TCP proxy."""

from __future__ import annotations

import asyncio
import collections
import re
import shlex
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from distcomp_obs.audit import AuditReport, audit
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in its own thread (asyncio), with two faults:

    - `delay_s`: added before each chunk is forwarded to Redis (a latency spike);
    - `drop_reply_on`: a predicate on request bytes; the next request it matches is forwarded to
      Redis, but the connection is cut before the reply comes back (a lost reply: the command ran).

    (distcomp_obs.bench.proxy drops "the next reply" of any connection; these tests need to pick
    the request whose reply is lost, a claim or a report.)
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0
        self.drop_reply_on: Callable[[bytes], bool] | None = None
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        def close() -> None:
            if self._server:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    async def _client(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.close()
            return
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await creader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                match = self.drop_reply_on
                if match is not None and match(data):
                    self.drop_reply_on = None
                    cut.set()  # before forwarding: the reply must never reach the client
                    swriter.write(data)
                    await swriter.drain()
                    self.dropped += 1
                    await asyncio.sleep(0.2)  # let Redis run it, then lose the reply
                    return
                swriter.write(data)
                await swriter.drain()

        async def downstream() -> None:
            while data := await sreader.read(65536):
                if cut.is_set():
                    return
                cwriter.write(data)
                await cwriter.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        for t in tasks:
            t.cancel()
        for w in (cwriter, swriter):
            try:
                w.close()
            except Exception:
                pass


def now() -> float:
    return time.monotonic()
