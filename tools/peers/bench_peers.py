"""Peer table: one worker process's no-op drain throughput, distcomp-obs vs Sidekiq vs Dramatiq.

Same method for every peer, on one machine, in one run, interleaved (A B C A B C ...):

1. a fresh loopback `redis-server` for the run (persistence off);
2. N no-op jobs enqueued with the peer's own client, straight to Redis (not timed);
3. the project's latency proxy (distcomp_obs/bench/proxy.py, run in this process) in front of
   that Redis, adding 0, 1 or 5 ms of round trip (split evenly between the two directions);
   `direct` skips it;
4. ONE worker process started against the proxy;
5. the harness polls the peer's own Redis records, directly (not through the proxy), every
   --poll-interval seconds: the clock starts when the first job leaves the waiting queue and
   stops when the queue is drained (below). tasks/s = N / (stop - start). Interpreter start-up
   and connecting are therefore excluded for every peer; spawn -> first job is recorded apart;
6. (untimed) wait for the peer's own completion count where it lags (Sidekiq), SIGTERM, and an
   audit once the worker has exited: every job done, none failed.

What "left the waiting queue" and "drained" read, per peer:

- distcomp-obs: `Queue(...).counts()`: todo < N; drained when finished + failed == N (recorded
  by the worker's settle round trip). Jobs: `builtin:1:0:0:noop <unique>` lines, `distcomp submit`.
- Sidekiq: LLEN queue:default < N; drained when LLEN == 0: every job fetched (Sidekiq's
  processed counter reaches Redis only with its 5 s heartbeat, so completion is not visible
  sooner; at most `concurrency` no-op jobs are still running then). The audit reads
  stat:processed == N and stat:failed == 0 after the worker's exit flush.
- Dramatiq: LLEN dramatiq:default < N; drained when HLEN dramatiq:default.msgs == 0 (a message
  leaves that hash when it is acked, after the actor ran). Audit: no dead-lettered message.

Run from the repository root with the project's venv (it imports distcomp_obs):

    .venv/bin/python tools/peers/bench_peers.py --distcomp-ref HEAD --out tools/peers/results.json

Needs `redis-server`, Debian's `ruby-sidekiq` (apt-get install -y ruby-sidekiq) and a throwaway
venv with Dramatiq outside the repository (python3.11 -m venv /tmp/peervenv &&
/tmp/peervenv/bin/pip install 'dramatiq[redis]'; --dramatiq-python points at it).

Prints a markdown table of medians (min-max) and the ratio of each peer's median to
distcomp-obs's at the same latency, and writes every run, raw, to --out (JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:  # imported at run time only after --distcomp-ref has chosen the source tree
    from distcomp_obs.bench.proxy import LatencyProxy
    from distcomp_obs.queue import Queue

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DISTCOMP = Path(sys.executable).with_name("distcomp")  # the CLI of the venv running this script
DISTCOMP_PREFIX = "peers:"
SIDEKIQ_QUEUE = "queue:default"  # Sidekiq's list for the "default" queue
DRAMATIQ_QUEUE = "dramatiq:default"  # Dramatiq's list of waiting message ids (namespace:queue)
DRAMATIQ_MSGS = "dramatiq:default.msgs"  # message bodies, deleted on ack
DRAMATIQ_DEAD = "dramatiq:default.XQ"  # dead-letter queue (a sorted set)


class RunError(RuntimeError):
    """A run that did not drain (timeout, worker exit): recorded, not fatal to the session."""


# ------------------------------------------------------------------------------------ peers
@dataclass(frozen=True)
class Peer:
    """One row of the table: a system and the worker settings it runs with."""

    label: str  # row label
    system: str  # "distcomp-obs" | "sidekiq" | "dramatiq"
    setting: str  # what the worker was told, in words
    args: tuple[str, ...] = ()  # extra worker arguments
    env: tuple[tuple[str, str], ...] = ()  # extra worker environment


class Driver:
    """How one system enqueues, runs a worker, and shows its progress in Redis."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts

    def enqueue(self, redis_url: str, n: int, log: Path) -> None:
        raise NotImplementedError

    def worker(self, peer: Peer, redis_url: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the worker process."""
        raise NotImplementedError

    def waiting(self, r: redis.Redis) -> int:
        """Jobs not yet taken by the worker."""
        raise NotImplementedError

    def drained(self, r: redis.Redis, n: int) -> bool:
        raise NotImplementedError

    def settled(self, r: redis.Redis, n: int) -> bool:
        """After the drain, before SIGTERM: the peer's own record that all n jobs ran (not timed)."""
        return True

    def audit(self, r: redis.Redis, n: int, redis_url: str) -> dict[str, Any]:
        """After the worker exited: {"ok": bool, ...what was read}."""
        raise NotImplementedError


def _run(argv: Sequence[str], log: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> None:
    with open(log, "ab") as out:
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
    if rc != 0:
        raise RunError(f"{' '.join(map(str, argv))} exited {rc}: see {log}")


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without DISTCOMP_* settings (every worker runs with its defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCOMP_")}
    env.update(extra)
    return env


class DistcompDriver(Driver):
    def enqueue(self, redis_url: str, n: int, log: Path) -> None:
        run_id = uuid.uuid4().hex[:12]
        tasks = log.with_suffix(".tasks")
        tasks.write_text("".join(f"builtin:1:0:0:noop {run_id}-{i}\n" for i in range(n)))
        _run([str(DISTCOMP), "submit", str(tasks), "--redis-url", redis_url, "--prefix", DISTCOMP_PREFIX], log)
        tasks.unlink()

    def worker(self, peer: Peer, redis_url: str) -> tuple[list[str], dict[str, str]]:
        argv = [str(DISTCOMP), "worker", "--redis-url", redis_url, "--prefix", DISTCOMP_PREFIX, *peer.args]
        return argv, _clean_env()

    def __init__(self, opts: argparse.Namespace) -> None:
        super().__init__(opts)
        self._queues: dict[int, Queue] = {}  # one Queue per Redis client: polled every few ms

    def _counts(self, r: redis.Redis) -> dict[str, int]:
        from distcomp_obs.queue import Queue

        q = self._queues.get(id(r))
        if q is None or q.r is not r:
            q = self._queues[id(r)] = Queue(r, DISTCOMP_PREFIX)
        return q.counts()

    def waiting(self, r: redis.Redis) -> int:
        return self._counts(r)["todo"]

    def drained(self, r: redis.Redis, n: int) -> bool:
        c = self._counts(r)
        return c["finished"] + c["failed"] >= n

    def audit(self, r: redis.Redis, n: int, redis_url: str) -> dict[str, Any]:
        c = self._counts(r)
        check = subprocess.run(
            [str(DISTCOMP), "status", "--check", "--drained", "--redis-url", redis_url, "--prefix", DISTCOMP_PREFIX],
            capture_output=True,
            text=True,
            timeout=120,
        )
        ok = c["finished"] == n and c["failed"] == 0 and check.returncode == 0
        return {"ok": ok, "counts": c, "status_check_rc": check.returncode}


class SidekiqDriver(Driver):
    def enqueue(self, redis_url: str, n: int, log: Path) -> None:
        _run([self.opts.ruby, str(HERE / "sidekiq_enqueue.rb"), str(n)], log, _clean_env(REDIS_URL=redis_url))

    def worker(self, peer: Peer, redis_url: str) -> tuple[list[str], dict[str, str]]:
        argv = [self.opts.sidekiq, "-r", str(HERE / "sidekiq_noop.rb"), "-q", "default", *peer.args]
        return argv, _clean_env(REDIS_URL=redis_url, **dict(peer.env))

    def _processed(self, r: redis.Redis) -> int:
        return int(r.get("stat:processed") or 0)

    def settled(self, r: redis.Redis, n: int) -> bool:
        # The processed counter is flushed by Sidekiq's 5 s heartbeat. Waiting for it before the
        # SIGTERM also avoids a shutdown race in 6.4 (a heartbeat that has taken the in-memory
        # count but not yet written it is lost at exit: seen as processed = N - 13 once).
        return self._processed(r) >= n

    def waiting(self, r: redis.Redis) -> int:
        return int(r.llen(SIDEKIQ_QUEUE))

    def drained(self, r: redis.Redis, n: int) -> bool:
        return self.waiting(r) == 0

    def audit(self, r: redis.Redis, n: int, redis_url: str) -> dict[str, Any]:
        processed = self._processed(r)
        failed = int(r.get("stat:failed") or 0)
        left = self.waiting(r)
        return {"ok": processed == n and failed == 0 and left == 0, "processed": processed, "failed": failed}


class DramatiqDriver(Driver):
    def enqueue(self, redis_url: str, n: int, log: Path) -> None:
        _run(
            [self.opts.dramatiq_python, str(HERE / "dramatiq_noop.py"), str(n)],
            log,
            _clean_env(PEER_REDIS_URL=redis_url),
        )

    def worker(self, peer: Peer, redis_url: str) -> tuple[list[str], dict[str, str]]:
        dramatiq = str(Path(self.opts.dramatiq_python).with_name("dramatiq"))
        argv = [dramatiq, "dramatiq_noop", "--processes", "1", "--path", str(HERE), *peer.args]
        return argv, _clean_env(PEER_REDIS_URL=redis_url)

    def waiting(self, r: redis.Redis) -> int:
        return int(r.llen(DRAMATIQ_QUEUE))

    def drained(self, r: redis.Redis, n: int) -> bool:
        return int(r.hlen(DRAMATIQ_MSGS)) == 0 and self.waiting(r) == 0

    def audit(self, r: redis.Redis, n: int, redis_url: str) -> dict[str, Any]:
        left, dead = int(r.hlen(DRAMATIQ_MSGS)), int(r.zcard(DRAMATIQ_DEAD))
        return {"ok": left == 0 and dead == 0, "unacked": left, "dead_lettered": dead}


def build_peers(opts: argparse.Namespace) -> list[Peer]:
    peers = [Peer("distcomp-obs", "distcomp-obs", "`distcomp worker` default flags (concurrency = cores)")]
    for c in _names(opts.sidekiq_concurrency):
        args = () if c == "default" else ("-c", c)
        label = "Sidekiq (default)" if c == "default" else f"Sidekiq -c {c}"
        setting = "default concurrency" if c == "default" else f"-c {c}"
        peers.append(Peer(label, "sidekiq", setting + ", quiet", args))
    for c in _names(opts.sidekiq_as_packaged):
        args = () if c == "default" else ("-c", c)
        label = "Sidekiq (default)" if c == "default" else f"Sidekiq -c {c}"
        setting = ("default concurrency" if c == "default" else f"-c {c}") + ", as packaged"
        env = (("PEERS_SIDEKIQ_LOG_LEVEL", "info"), ("PEERS_SIDEKIQ_DEPRECATIONS", "1"))
        peers.append(Peer(label + " as packaged", "sidekiq", setting, args, env))
    for t in _names(opts.dramatiq_threads):
        if t == "default":
            peers.append(Peer("Dramatiq (default)", "dramatiq", "--processes 1, default threads"))
        else:
            peers.append(Peer(f"Dramatiq -t {t}", "dramatiq", f"--processes 1 --threads {t}", ("--threads", t)))
    return peers


# ------------------------------------------------------------------------------------ one run
@dataclass
class RunRecord:
    round: int
    peer: str
    system: str
    setting: str
    latency: str  # "direct", or the added round trip in ms
    tasks: int
    enqueue_s: float = 0.0
    startup_s: float = 0.0  # worker spawn -> first job left the waiting queue
    drain_s: float = 0.0  # first job left -> drained: the figure
    tasks_per_s: float = 0.0
    tasks_per_s_with_startup: float = 0.0  # N / (spawn -> drained), for reference
    settle_s: float = 0.0  # drained -> the peer's own completion record (Sidekiq's heartbeat flush)
    shutdown_s: float = 0.0
    audit: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str = ""
    proxy_precise_timers: bool | None = None
    loadavg_1m: float = 0.0  # at the run's start: other work on this shared machine


class RedisServer:
    """A private loopback redis-server, persistence off."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(workdir), "--daemonize", "no"]
        self.log = open(workdir / f"redis-{self.port}.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = redis.Redis.from_url(self.url, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RunError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _wait(
    cond: Callable[[], bool], worker: subprocess.Popen[bytes], deadline: float, interval: float, what: str
) -> float:
    """Poll until cond() holds; returns the monotonic time it was seen to hold."""
    while True:
        if cond():
            return time.perf_counter()
        if worker.poll() is not None:
            raise RunError(f"worker exited ({worker.returncode}) before {what}")
        if time.perf_counter() > deadline:
            raise RunError(f"timeout waiting for {what}")
        time.sleep(interval)


def _stop(worker: subprocess.Popen[bytes], timeout_s: float = 30) -> float:
    """SIGTERM the worker's process group (Dramatiq forks its worker process); seconds to exit."""
    start = time.perf_counter()
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(peer: Peer, driver: Driver, latency: str, n: int, rnd: int, opts: argparse.Namespace) -> RunRecord:
    from distcomp_obs.bench.proxy import LatencyProxy

    rec = RunRecord(rnd, peer.label, peer.system, peer.setting, latency, n, loadavg_1m=os.getloadavg()[0])
    tag = f"r{rnd}-{latency}-{peer.label}".replace(" ", "_").replace("(", "").replace(")", "")
    log = opts.log_dir / f"{tag}.log"
    server = RedisServer(opts.redis_server, opts.log_dir)
    proxy: LatencyProxy | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        driver.enqueue(server.url, n, log)
        rec.enqueue_s = time.perf_counter() - t0
        if driver.waiting(server.client) != n:
            raise RunError(f"{driver.waiting(server.client)} jobs waiting after enqueue, expected {n}")
        url = server.url
        if latency != "direct":
            proxy = LatencyProxy(("127.0.0.1", server.port), rtt_ms=float(latency)).start()
            rec.proxy_precise_timers = proxy.precise_timers
            url = proxy.url + "/0"
        argv, env = driver.worker(peer, url)
        with open(log, "ab") as out:
            spawned = time.perf_counter()
            worker = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = spawned + opts.run_timeout
        r, iv = server.client, opts.poll_interval
        first = _wait(lambda: driver.waiting(r) < n, worker, deadline, iv, "the first job")
        done = _wait(lambda: driver.drained(r, n), worker, deadline, iv, "the drain")
        rec.startup_s, rec.drain_s = first - spawned, done - first
        rec.tasks_per_s = n / rec.drain_s
        rec.tasks_per_s_with_startup = n / (done - spawned)
        settled = _wait(lambda: driver.settled(r, n), worker, done + opts.settle_timeout, 0.05, "the peer's count")
        rec.settle_s = settled - done
        rec.shutdown_s = _stop(worker)
        rec.audit = driver.audit(server.client, n, server.url)
        rec.ok = bool(rec.audit["ok"])
        if not rec.ok:
            rec.error = f"audit failed: {rec.audit}"
    except (RunError, subprocess.TimeoutExpired, redis.RedisError) as e:
        rec.error = str(e)
    finally:
        if worker is not None:
            _stop(worker)
        if proxy is not None:
            proxy.stop()
        server.stop()
    return rec


# ------------------------------------------------------------------------------------ report
def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _latency_label(lat: str) -> str:
    return "direct (no proxy)" if lat == "direct" else f"+{lat} ms" if float(lat) else "0 ms (proxy)"


def medians(runs: list[RunRecord]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for rec in runs:
        if rec.ok:
            out.setdefault((rec.peer, rec.latency), []).append(rec.tasks_per_s)
    return out


def table(peers: list[Peer], latencies: list[str], tasks: dict[str, int], runs: list[RunRecord]) -> str:
    by = medians(runs)
    head = ["peer", "worker settings"]
    for lat in latencies:
        head += [f"{_latency_label(lat)} tasks/s (N={tasks[lat]:,})", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = {lat: statistics.median(by[("distcomp-obs", lat)]) for lat in latencies if ("distcomp-obs", lat) in by}
    for p in peers:
        row = [p.label, p.setting]
        for lat in latencies:
            vals = by.get((p.label, lat), [])
            if not vals:
                row += ["failed", "—"]
                continue
            med = statistics.median(vals)
            spread = f" ({_fmt(min(vals))}–{_fmt(max(vals))})" if len(vals) > 1 else ""
            bad = sum(1 for r in runs if r.peer == p.label and r.latency == lat and not r.ok)
            note = f", {bad} failed" if bad else ""
            row += [f"{_fmt(med)}{spread}{note}", f"{med / ref[lat]:.2f}×" if lat in ref else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def startup_table(peers: list[Peer], latencies: list[str], runs: list[RunRecord]) -> str:
    head = ["peer", *(f"{_latency_label(lat)}: spawn → first job (s)" for lat in latencies)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in peers:
        row = [p.label]
        for lat in latencies:
            vals = [r.startup_s for r in runs if r.ok and r.peer == p.label and r.latency == lat]
            row.append(f"{statistics.median(vals):.2f}" if vals else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ versions
def _out(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (res.stdout or res.stderr).strip()


def versions(opts: argparse.Namespace) -> dict[str, str]:
    import distcomp_obs

    git = ["git", "--no-optional-locks", "-C", str(REPO)]  # read-only: never writes the index
    if opts.distcomp_ref:
        source = f"git archive of {opts.distcomp_ref} = {opts.distcomp_commit[:12]}"
    else:
        dirty = _out([*git, "status", "--porcelain", "--untracked-files=no"])
        source = "working tree at " + _out([*git, "rev-parse", "--short=12", "HEAD"]) + (" + changes" if dirty else "")
    rb = 'require "sidekiq"; print "#{Sidekiq::VERSION} / redis-rb #{Redis::VERSION} / #{RUBY_DESCRIPTION}"'
    py = "import dramatiq, redis, sys; print(dramatiq.__version__, '/ redis-py', redis.__version__, '/', sys.version)"
    return {
        "distcomp-obs": metadata.version("distcomp-obs"),
        "distcomp-obs source": f"{source} ({Path(distcomp_obs.__file__).parent})",
        "distcomp-obs python": sys.version.split()[0],
        "redis-py (distcomp-obs)": redis.__version__,
        "sidekiq": _out([opts.ruby, "-e", rb]),
        "ruby-sidekiq (Debian package)": _out(["dpkg-query", "-W", "-f", "${Version}", "ruby-sidekiq"]),
        "dramatiq": _out([opts.dramatiq_python, "-c", py]).replace("\n", " "),
        "redis-server": _out([opts.redis_server, "--version"]),
    }


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "platform": platform.platform(), "loadavg": os.getloadavg()}


# ------------------------------------------------------------------------------------ main
def _names(csv: str) -> list[str]:
    return [s.strip() for s in csv.split(",") if s.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--tasks", default="20000", help="jobs per run: one number, or one per --latency-ms entry")
    ap.add_argument(
        "--latency-ms", default="direct,0,1,5", help="added round trips (ms) through the proxy; 'direct': none"
    )
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (A B C A B C ...); medians reported")
    ap.add_argument("--peers", default="distcomp-obs,sidekiq,dramatiq", help="systems to run")
    ap.add_argument("--sidekiq-concurrency", default="default,30", help="Sidekiq -c values ('default': no -c)")
    ap.add_argument("--dramatiq-threads", default="default", help="Dramatiq --threads values ('default': no flag)")
    ap.add_argument(
        "--sidekiq-as-packaged",
        default="30",
        help="Sidekiq -c values also run as Debian ships them: per-job INFO start/done log lines and "
        "redis-rb 4.8's per-BRPOP deprecation warning kept ('' for none). The other Sidekiq rows are quiet",
    )
    ap.add_argument("--poll-interval", type=float, default=0.005, help="seconds between progress reads")
    ap.add_argument("--settle-timeout", type=float, default=15, help="drained -> peer's own count, at most")
    ap.add_argument("--run-timeout", type=float, default=180, help="give up on a run after this many seconds")
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--ruby", default="ruby")
    ap.add_argument("--sidekiq", default="sidekiq", help="the sidekiq executable")
    ap.add_argument("--dramatiq-python", default="/tmp/peervenv/bin/python", help="python of a venv with dramatiq")
    ap.add_argument("--out", type=Path, default=Path("peers-results.json"), help="raw runs (JSON)")
    ap.add_argument("--log-dir", type=Path, default=None, help="worker and Redis logs (default: a temp dir)")
    ap.add_argument(
        "--distcomp-ref",
        default="",
        help="run distcomp-obs from `git archive REF` (e.g. HEAD) instead of the working tree, "
        "so edits made meanwhile do not change what is measured",
    )
    opts = ap.parse_args(argv)
    opts.latencies = _names(opts.latency_ms)
    counts = [int(x) for x in _names(opts.tasks)]
    if len(counts) == 1:
        counts *= len(opts.latencies)
    if len(counts) != len(opts.latencies):
        ap.error("--tasks: one number, or as many as --latency-ms has entries")
    opts.task_counts = dict(zip(opts.latencies, counts, strict=True))
    opts.log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="distcomp-peers-"))
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    opts.distcomp_commit = ""
    if opts.distcomp_ref:
        use_snapshot(opts)
    return opts


def use_snapshot(opts: argparse.Namespace) -> None:
    """Extract distcomp_obs at --distcomp-ref and put it first on the path, here and for every
    child process (the venv's `distcomp` script then imports it from there)."""
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", f"{opts.distcomp_ref}^{{commit}}"], capture_output=True, text=True)
    if commit.returncode != 0:
        sys.exit(f"--distcomp-ref {opts.distcomp_ref}: {commit.stderr.strip()}")
    opts.distcomp_commit = commit.stdout.strip()
    archive = subprocess.run([*git, "archive", opts.distcomp_commit, "distcomp_obs"], capture_output=True, check=True)
    src = opts.log_dir / "distcomp-src"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(src, filter="data")
    sys.path.insert(0, str(src))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    drivers: dict[str, Driver] = {
        "distcomp-obs": DistcompDriver(opts),
        "sidekiq": SidekiqDriver(opts),
        "dramatiq": DramatiqDriver(opts),
    }
    wanted = set(_names(opts.peers))
    peers = [p for p in build_peers(opts) if p.system in wanted]
    for tool in (opts.redis_server, opts.ruby, opts.sidekiq, opts.dramatiq_python):
        if shutil.which(tool) is None:
            print(f"warning: {tool} not found", file=sys.stderr)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    meta: dict[str, Any] = {
        "started": started,
        "argv": sys.argv,
        "machine": machine(),
        "versions": versions(opts),
        "method": "clock from the first job leaving the waiting queue to the drain (see the script's docstring)",
        "poll_interval_s": opts.poll_interval,
        "log_dir": str(opts.log_dir),
        "distcomp_ref": opts.distcomp_ref,
        "distcomp_commit": opts.distcomp_commit,
    }
    runs: list[RunRecord] = []
    t_start = time.perf_counter()
    for rnd in range(1, opts.repeat + 1):
        for lat in opts.latencies:
            for peer in peers:
                rec = run_once(peer, drivers[peer.system], lat, opts.task_counts[lat], rnd, opts)
                runs.append(rec)
                status = f"{rec.tasks_per_s:8,.0f} tasks/s" if rec.ok else f"FAILED: {rec.error}"
                print(f"round {rnd} {_latency_label(lat):>17} {peer.label:<20} {status}", file=sys.stderr, flush=True)
                _write(opts.out, meta, runs)
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    _write(opts.out, meta, runs)
    print(table(peers, opts.latencies, opts.task_counts, runs))
    print()
    print(startup_table(peers, opts.latencies, runs))
    print()
    for name, version in meta["versions"].items():
        print(f"- {name}: {version}")
    print(f"\nraw runs: {opts.out}; logs: {opts.log_dir}; total {meta['total_s']} s", file=sys.stderr)
    return 0 if all(r.ok for r in runs) else 1


def _write(path: Path, meta: dict[str, Any], runs: list[RunRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
