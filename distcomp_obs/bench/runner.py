"""`distcomp bench`: real worker processes per variant, one Redis, a latency proxy in between.

Method (DESIGN.md §7): for each workload and injected latency, variants run one after the other,
interleaved (A B C A B C ...) and repeated, each on a fresh key prefix of the same Redis. A
drain run starts the worker idle, pauses it (SIGSTOP) while the tasks are submitted, and times
from SIGCONT to the last task recorded, so neither interpreter start-up nor submission is in
the figure. Runs that cannot drain in `window_s` (DistComp's 2 s sleep drains 0.5 tasks/s)
are measured over the window instead. Redis-side counts come from INFO commandstats deltas
(the bench's own probe commands removed); worker-side counts from the worker's /metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from distcomp_obs.audit import audit
from distcomp_obs.bench import probes
from distcomp_obs.bench.proxy import LatencyProxy, Upstream, measure_rtt_ms
from distcomp_obs.bench.workers import DEFAULT_VARIANTS, Variant, WorkerGroup
from distcomp_obs.queue import ClaimLimits, Queue
from distcomp_obs.redis_io import RedisServer, connect

WORKLOADS = ("noop", "shell", "pickup", "scale")
#: how often the drain loop reads the finished counter (one HGETALL each, removed from the counts)
PROBE_INTERVAL_S = 0.01


@dataclass
class BenchOptions:
    workloads: list[str] = field(default_factory=lambda: ["noop", "shell", "pickup", "scale"])
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    latencies_ms: list[float] = field(default_factory=lambda: [0.0, 1.0, 5.0])
    repeat: int = 3
    concurrency: int = 2
    noop_tasks: int = 20000
    shell_tasks: int = 1000
    window_s: float = 5.0  # longest drain measurement
    pickups: int = 10
    pickup_spacing_s: float = 0.2
    idle_window_s: float = 20.0
    pickup_repeat: int | None = None  # None: same as repeat
    scale_queued: int = 1_000_000
    scale_idle_workers: int = 200
    scale_seconds: float = 3.0
    overhead: bool = True  # extra control runs: --no-metrics and direct (no proxy)
    redis_url: str | None = None
    out_dir: str = "bench-results"
    command: str = ""
    seed: int = 1


class Bench:
    def __init__(self, opts: BenchOptions, log: Callable[[str], None] | None = None) -> None:
        self.o = opts
        self.out = Path(opts.out_dir)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.rng = random.Random(opts.seed)
        self.runs: list[dict[str, Any]] = []
        self.scale: dict[str, Any] = {}
        self.proxy_info: dict[str, Any] = {}
        self._serial = 0
        self._server: RedisServer | None = None
        self.redis_url = ""
        self.proxy: LatencyProxy | None = None
        self._sink: Any = None  # OTLP sink for the tracing control runs, started on first use

    def _otlp_sink(self) -> str:
        """A local OTLP/HTTP endpoint that accepts and drops spans: tracing's cost without a backend."""
        if self._sink is None:
            from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

            class Sink(BaseHTTPRequestHandler):
                def do_POST(self) -> None:
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                def log_message(self, *_: Any) -> None:
                    pass

            self._sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
            threading.Thread(target=self._sink.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._sink.server_address[1]}"

    # ------------------------------------------------------------------ top level
    def run(self) -> dict[str, Any]:
        started = time.time()
        with self._redis() as url, self._proxied(url) as proxy:
            self.redis_url, self.proxy = url, proxy
            self.admin = connect(url)
            self._measure_proxy()
            for workload in self.o.workloads:
                self.log(f"== workload {workload}")
                {"noop": self._drain_workload, "shell": self._drain_workload, "pickup": self._pickup_workload}.get(
                    workload, lambda _w: self._scale_workload()
                )(workload)
            redis_version = self.admin.info("server").get("redis_version", "?")
        return {
            "meta": self._meta(started, redis_version),
            "proxy": self.proxy_info,
            "runs": self.runs,
            "scale": self.scale,
        }

    @contextmanager
    def _redis(self) -> Iterator[str]:
        if self.o.redis_url:
            yield self.o.redis_url
            return
        from distcomp_obs.bench.workers import free_port

        self._server = RedisServer(port=free_port()).start()
        try:
            yield self._server.url
        finally:
            self._server.cleanup()

    @contextmanager
    def _proxied(self, url: str) -> Iterator[LatencyProxy]:
        parts = urlsplit(url)
        upstream: Upstream = (
            parts.path if parts.scheme == "unix" else (parts.hostname or "127.0.0.1", parts.port or 6379)
        )
        proxy = LatencyProxy(upstream).start()
        try:
            yield proxy
        finally:
            proxy.stop()

    def _proxy_url(self, direct: bool) -> str:
        """The URL workers use: the proxy's, with the real URL's credentials and db."""
        if direct:
            return self.redis_url
        assert self.proxy is not None
        parts = urlsplit(self.redis_url)
        auth = ""
        if parts.password is not None:
            auth = f"{parts.username or ''}:{parts.password}@"
        db = parts.path if parts.scheme != "unix" else ""
        return f"redis://{auth}127.0.0.1:{self.proxy.port}{db}"

    def _measure_proxy(self) -> None:
        """PING round trips direct and through the proxy at each latency: its own overhead."""
        assert self.proxy is not None
        direct = measure_rtt_ms(self.redis_url, 300)
        by_latency = {}
        for ms in self.o.latencies_ms:
            self.proxy.set_latency(ms)
            by_latency[f"{ms:g}"] = _summary(measure_rtt_ms(self._proxy_url(False), 300))
        self.proxy.set_latency(0)
        self.proxy_info = {
            "precise_timers": self.proxy.precise_timers,
            "ping_rtt_ms_direct": _summary(direct),
            "ping_rtt_ms_proxied": by_latency,
        }
        self.log(
            f"proxy: PING p50 direct {self.proxy_info['ping_rtt_ms_direct']['p50']:.3f} ms; proxied "
            + ", ".join(f"{k} ms -> {v['p50']:.3f} ms" for k, v in by_latency.items())
        )

    def _meta(self, started: float, redis_version: str) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
                cwd=Path(__file__).resolve().parents[2],  # the checkout, not the caller's directory
            ).stdout.strip()
        except OSError:
            commit = ""
        return {
            "date": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "command": self.o.command,
            "options": asdict(self.o) | {"redis_url": "(set)" if self.o.redis_url else None},
            "machine": {
                "cpus": os.cpu_count(),
                "cpu_model": _cpu_model(),
                "mem_total_gb": round(vm.total / 2**30, 1),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_at_end": os.getloadavg(),
            },
            "redis_version": redis_version,
            "git_commit": commit,
        }

    # ------------------------------------------------------------------ helpers
    def _record(self, workload: str, variant: str, latency: float, rep: int, fn: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement; a failing run (a worker that cannot start, say) is recorded
        with its error and the bench goes on, so one bad variant does not lose the others."""
        try:
            run = fn()
        except (RuntimeError, OSError, ValueError, redis.RedisError) as exc:
            run = {
                "workload": workload,
                "variant": variant,
                "latency_ms": latency,
                "repeat": rep,
                "error": str(exc)[-2000:],
            }
            self.log(f"  {workload:6} {variant:16} {latency:g} ms #{rep}: FAILED: {str(exc)[-300:]}")
            self.runs.append(run)
            return
        self.runs.append(run)
        self.log(_run_line(run))

    def _variants(self, workload: str, latency_ms: float, first_latency: bool) -> list[Variant]:
        out = [Variant.named(v) for v in self.o.variants]
        if self.o.overhead and workload == "noop" and "all" in self.o.variants:
            if first_latency:  # instrumentation overhead: the same variant without metrics, and with traces
                flags = Variant.named("all").flags
                out.append(Variant("all-nometrics", flags, metrics=False))
                otlp = (("OTEL_TRACES_EXPORTER", "otlp"), ("OTEL_EXPORTER_OTLP_ENDPOINT", self._otlp_sink()))
                out.append(Variant("all-tracing1pct", flags, env=(*otlp, ("OTEL_TRACES_SAMPLER", "traceidratio"),
                                                                  ("OTEL_TRACES_SAMPLER_ARG", "0.01"))))  # fmt: skip
                out.append(Variant("all-tracing", flags, env=(*otlp, ("OTEL_TRACES_SAMPLER", "always_on"))))
            if latency_ms == 0:  # the proxy's overhead: the same variant connected directly
                out.append(Variant("all-direct", Variant.named("all").flags, direct=True))
        return out

    def _new_queue(self) -> Queue:
        self._serial += 1
        return Queue(connect(self.redis_url), f"bench{self._serial}-{uuid.uuid4().hex[:6]}:")

    def _group(self, q: Queue, variant: Variant, concurrency: int | None = None) -> WorkerGroup:
        return WorkerGroup(
            variant, self._proxy_url(variant.direct), q.keys.prefix, self.logs, concurrency or self.o.concurrency
        )

    def _lines(self, workload: str, n: int) -> list[str]:
        tag = uuid.uuid4().hex[:6]  # unique across runs: identical lines are one task
        if workload == "shell":
            return [f"shell:1:0:0:true {tag}-{i}" for i in range(n)]
        return [f"builtin:1:0:0:noop {tag}-{i}" for i in range(n)]

    # ------------------------------------------------------------------ drain workloads
    def _drain_workload(self, workload: str) -> None:
        assert self.proxy is not None
        n = self.o.noop_tasks if workload == "noop" else self.o.shell_tasks
        for li, latency in enumerate(self.o.latencies_ms):
            self.proxy.set_latency(latency)
            for rep in range(self.o.repeat):
                for variant in self._variants(workload, latency, li == 0):
                    self._record(workload, variant.name, latency, rep, lambda v=variant, r=rep, lat=latency:
                                 self._drain_run(workload, v, lat, r, n))  # fmt: skip
                if workload == "shell" and li == 0:
                    self._record("shell", "bare-loop", 0.0, rep, lambda r=rep: self._bare_loop_run(r))

    def _drain_run(self, workload: str, variant: Variant, latency: float, rep: int, n: int) -> dict[str, Any]:
        q = self._new_queue()
        group = self._group(q, variant)
        try:
            group.start(1)
            group.wait_ready(q)
            time.sleep(0.3)  # let the first (empty) fetch happen: the worker is idle
            wp = group.procs[0]
            scrape0 = probes.scrape(wp.metrics_url) if wp.metrics_url else None
            cpu0 = probes.cpu_seconds(wp.pid)
            group.pause()
            q.submit(self._lines(workload, n))
            stats0 = probes.commandstats(self.admin)
            t0 = time.perf_counter()
            group.resume()
            polls, done = 0, 0
            while True:
                time.sleep(PROBE_INTERVAL_S)
                s = q.stats()
                polls += 1
                done = s.get("finished", 0) + s.get("failed", 0)
                elapsed = time.perf_counter() - t0
                if done >= n or elapsed >= self.o.window_s:
                    break
            stats1 = probes.commandstats(self.admin)
            cpu1 = probes.cpu_seconds(wp.pid)
            scrape1 = probes.scrape(wp.metrics_url) if wp.metrics_url else None
        finally:
            group.stop()
        report = audit(q)
        q.reset()
        delta = probes.command_delta(stats0, stats1, {"cmdstat_hgetall": polls})
        run: dict[str, Any] = {
            "workload": workload,
            "variant": variant.name,
            "latency_ms": latency,
            "repeat": rep,
            "tasks": n,
            "done": done,
            "drained": done >= n,
            "elapsed_s": elapsed,
            "tasks_per_s": done / elapsed if elapsed > 0 else 0.0,
            "redis_commands_per_task": _per(sum(delta.values()), done),
            "redis_script_calls_per_task": _per(probes.script_calls(delta), done),
            "worker_cpu_us_per_task": _per((cpu1 - cpu0) * 1e6, done),
            "audit_ok": report.ok,
        }
        if scrape0 and scrape1:
            d = scrape1.minus(scrape0)
            run["worker_roundtrips_per_task"] = _per(sum(d.roundtrips.values()), done)
            run["worker_commands_per_task"] = _per(sum(d.commands.values()), done)
            run["worker_roundtrips_by_op"] = {k: v for k, v in d.roundtrips.items() if v}
        return run

    def _bare_loop_run(self, rep: int) -> dict[str, Any]:
        """The same `sh -c 'true N'` subprocesses at the same concurrency, without any queue."""
        n = self.o.shell_tasks
        tag = uuid.uuid4().hex[:6]
        commands = iter(range(n))
        lock = threading.Lock()
        done = 0
        deadline = time.perf_counter() + self.o.window_s

        def slot() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                with lock:
                    i = next(commands, None)
                if i is None:
                    return
                with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                    subprocess.run(
                        ["/bin/sh", "-c", f"true {tag}-{i}"],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        check=False,
                    )
                with lock:
                    done += 1

        start = time.perf_counter()
        threads = [threading.Thread(target=slot) for _ in range(self.o.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        return {
            "workload": "shell",
            "variant": "bare-loop",
            "latency_ms": 0.0,
            "repeat": rep,
            "tasks": n,
            "done": done,
            "drained": done >= n,
            "elapsed_s": elapsed,
            "tasks_per_s": done / elapsed if elapsed > 0 else 0.0,
        }

    # ------------------------------------------------------------------ pickup
    def _pickup_workload(self, _workload: str) -> None:
        assert self.proxy is not None
        for li, latency in enumerate(self.o.latencies_ms):
            self.proxy.set_latency(latency)
            for rep in range(self.o.repeat if self.o.pickup_repeat is None else self.o.pickup_repeat):
                for variant in (Variant.named(v) for v in self.o.variants):
                    idle = li == 0 and rep == 0  # idle cost does not depend on latency: measured once
                    self._record("pickup", variant.name, latency, rep, lambda v=variant, r=rep, lat=latency, i=idle:
                                 self._pickup_run(v, lat, r, idle=i))  # fmt: skip

    def _pickup_run(self, variant: Variant, latency: float, rep: int, idle: bool) -> dict[str, Any]:
        q = self._new_queue()
        group = self._group(q, variant, concurrency=self.o.concurrency)
        run: dict[str, Any] = {"workload": "pickup", "variant": variant.name, "latency_ms": latency, "repeat": rep}
        try:
            group.start(1)
            group.wait_ready(q)
            wp = group.procs[0]
            time.sleep(1.0)  # settle into the idle state (adaptive: blocking on the wake-up)
            if idle:
                run |= self._idle_window([wp.metrics_url], workers=1)
            scrape0 = probes.scrape(wp.metrics_url)
            e2e: list[float] = []
            last = q.last_event_id()
            for i in range(self.o.pickups):
                time.sleep(self.o.pickup_spacing_s * self.rng.uniform(0.8, 1.2))
                t0 = time.perf_counter()
                q.submit([f"builtin:1:0:0:noop pickup-{i}-{uuid.uuid4().hex[:6]}"])
                got = q.wait_event(last, timeout_ms=10_000)
                if got is None:
                    continue
                e2e.append((time.perf_counter() - t0) * 1000)
                last = got[0]
            d = probes.scrape(wp.metrics_url).minus(scrape0)
        finally:
            group.stop()
        q.reset()
        p50 = probes.histogram_quantile(0.5, d.pickup_buckets)
        p99 = probes.histogram_quantile(0.99, d.pickup_buckets)
        run |= {
            "pickups": len(e2e),
            "pickup_p50_ms": None if p50 is None else p50 * 1000,
            "pickup_p99_ms": None if p99 is None else p99 * 1000,
            "pickup_le_1ms_share": _share_le(d.pickup_buckets, 0.001),
            "e2e_p50_ms": probes.percentile(e2e, 0.5),
            "e2e_p99_ms": probes.percentile(e2e, 0.99),
        }
        return run

    def _idle_window(self, metrics_urls: list[str], workers: int) -> dict[str, Any]:
        """Redis commands/s while the workers idle: all of them (Redis side, script-internal
        commands included) and the worker-side split into housekeeping (heartbeat and reaper)
        and everything else (polling) -- the target is about the latter."""
        before = [probes.scrape(u) for u in metrics_urls if u]
        stats0 = probes.commandstats(self.admin)
        t0 = time.perf_counter()
        time.sleep(self.o.idle_window_s)
        stats1 = probes.commandstats(self.admin)
        elapsed = time.perf_counter() - t0
        after = [probes.scrape(u) for u in metrics_urls if u]
        redis_total = sum(probes.command_delta(stats0, stats1, {}).values())
        d = probes.Scrape.add([a.minus(b) for a, b in zip(after, before, strict=True)])
        housekeeping = sum(v for op, v in d.commands.items() if op in ("heartbeat", "reap"))
        polling = sum(v for op, v in d.commands.items() if op not in ("heartbeat", "reap"))
        return {
            "idle_window_s": elapsed,
            "idle_workers": workers,
            "idle_redis_commands_per_s": redis_total / elapsed,
            "idle_redis_commands_per_s_per_worker": redis_total / elapsed / workers,
            "idle_worker_housekeeping_commands_per_s": housekeeping / elapsed,
            "idle_worker_beyond_heartbeat_commands_per_s": polling / elapsed,
            "idle_worker_beyond_heartbeat_per_worker": polling / elapsed / workers,
        }

    # ------------------------------------------------------------------ scale
    def _scale_workload(self) -> None:
        assert self.proxy is not None
        self.proxy.set_latency(self.o.latencies_ms[0] if self.o.latencies_ms else 0.0)
        for part, fn in (("claim", self._claim_scaling), ("idle_workers", self._idle_workers)):
            try:
                self.scale[part] = fn()
            except (RuntimeError, OSError, ValueError, redis.RedisError) as exc:
                self.scale[part] = {"error": str(exc)[-2000:]}
                self.log(f"scale {part}: FAILED: {str(exc)[-300:]}")

    def _claim_scaling(self) -> dict[str, Any]:
        """Claim cost with a small and a huge queue: 32-task claims from the bench process,
        each batch handed back at once so the queue keeps its size; alternated and repeated."""
        small, big = self._new_queue(), self._new_queue()
        sizes = {"small": (small, min(1000, self.o.scale_queued)), "big": (big, self.o.scale_queued)}
        out: dict[str, Any] = {"queued": {k: v[1] for k, v in sizes.items()}, "rounds": []}
        try:
            for label, (q, n) in sizes.items():
                t0 = time.perf_counter()
                tag = uuid.uuid4().hex[:6]
                q.submit(f"builtin:1:0:0:noop {tag}-{i}" for i in range(n))
                out[f"submit_s_{label}"] = time.perf_counter() - t0
                self.log(f"scale: {n} tasks queued in {out[f'submit_s_{label}']:.1f}s")
            for rep in range(max(1, self.o.repeat)):
                for label, (q, _) in sizes.items():
                    out["rounds"].append({"queue": label, "repeat": rep, **self._claim_loop(q)})
                    self.log(f"scale claim {label}: {out['rounds'][-1]['claims_per_s']:.0f} tasks/s")
            # a real `all` worker draining the big queue over a window (compare: the noop drain)
            out["worker_big"] = self._window_rate(big)
        finally:
            small.reset()
            big.reset()
        by = {lbl: median(r["claims_per_s"] for r in out["rounds"] if r["queue"] == lbl) for lbl in sizes}
        out["claims_per_s_median"] = by
        out["big_vs_small"] = by["big"] / by["small"] if by["small"] else None
        return out

    def _claim_loop(self, q: Queue) -> dict[str, Any]:
        name, inc = f"bench-claimer-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        q.acquire_lease(name, inc, 600_000)
        limits = ClaimLimits(free_dram_gb=1e6, cpus=1e6)
        claimed, claim_s = 0, 0.0
        end = time.perf_counter() + self.o.scale_seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            res = q.claim(name, inc, 32, limits)
            claim_s += time.perf_counter() - t0
            claimed += len(res.tasks)
            q.requeue(name, [(c.task, c.token) for c in res.tasks])
        return {"claimed": claimed, "claim_s": claim_s, "claims_per_s": claimed / claim_s if claim_s else 0.0}

    def _window_rate(self, q: Queue) -> dict[str, Any]:
        group = self._group(q, Variant.named("all"))
        try:
            group.start(1)
            group.wait_ready(q)
            s0 = q.stats()
            t0 = time.perf_counter()
            time.sleep(min(self.o.window_s, 3.0))
            s1 = q.stats()
            elapsed = time.perf_counter() - t0
        finally:
            group.stop()
        done = (s1.get("finished", 0) - s0.get("finished", 0)) + (s1.get("failed", 0) - s0.get("failed", 0))
        return {"done": done, "elapsed_s": elapsed, "tasks_per_s": done / elapsed}

    def _idle_workers(self) -> dict[str, Any]:
        """Many idle `all` workers on one queue: total Redis commands/s. Started in batches; the
        count is capped so their memory stays under 40 % of what is available."""
        want = self.o.scale_idle_workers
        q = self._new_queue()
        group = self._group(q, Variant.named("all"), concurrency=1)
        out: dict[str, Any] = {"requested": want}
        try:
            first = group.start(min(5, want))
            group.wait_ready(q, first, timeout_s=120)
            time.sleep(0.5)
            rss = max(probes.rss_bytes(p.pid) for p in first)
            fit = int(0.4 * psutil.virtual_memory().available / max(rss, 1)) + len(first)
            target = min(want, fit)
            out |= {"rss_mb_per_worker": rss / 2**20, "started": target, "capped_by_memory": target < want}
            while len(group.procs) < target:
                batch = group.start(min(10, target - len(group.procs)), first_index=len(group.procs))
                group.wait_ready(q, batch, timeout_s=180)
            self.log(f"scale: {target} idle workers up ({rss / 2**20:.0f} MB each); idle window")
            time.sleep(2.0)
            out |= self._idle_window([p.metrics_url for p in group.procs], workers=target)
        finally:
            group.stop(timeout_s=60)
            q.reset()
        if out.get("started") and out["started"] < want:
            per = out["idle_worker_beyond_heartbeat_per_worker"]
            out["extrapolated_beyond_heartbeat_commands_per_s"] = per * want
        return out


# ---------------------------------------------------------------------- small helpers
def _per(value: float, n: int) -> float | None:
    return value / n if n else None


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": probes.percentile(values, 0.5) or 0.0,
        "p99": probes.percentile(values, 0.99) or 0.0,
        "min": min(values),
    }


def _share_le(buckets: list[tuple[float, float]], le: float) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    return dict(buckets).get(le, 0.0) / buckets[-1][1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _run_line(run: dict[str, Any]) -> str:
    keys = ("tasks_per_s", "redis_commands_per_task", "worker_roundtrips_per_task", "worker_cpu_us_per_task")
    keys += ("pickup_p50_ms", "pickup_p99_ms", "e2e_p50_ms", "idle_worker_beyond_heartbeat_commands_per_s")
    figures = " ".join(f"{k}={run[k]:.3g}" for k in keys if isinstance(run.get(k), int | float))
    return f"  {run['workload']:6} {run['variant']:16} {run['latency_ms']:g} ms #{run['repeat']}: {figures}"


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    return path


def command_line(argv: list[str]) -> str:
    return "distcomp " + " ".join(shlex.quote(a) for a in argv)


def install_sigterm() -> None:
    """SIGTERM ends the bench like Ctrl-C (its finally blocks stop the workers and Redis)."""

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
