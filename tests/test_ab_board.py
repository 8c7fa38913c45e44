"""The A/B board's verdicts on live data agree with `distcomp bench` on the same flags.

One test, in two halves measured back to back on the same machine (so both see the same noise):

1. `distcomp bench --workloads noop` on the reference (`baseline-nosleep`) and each flag alone, through
   the bench's latency proxy at LATENCY_MS: capacity ratios flag / reference.
2. The A/B experiment the board is made for: one real `distcomp worker` per variant (the bench's flags,
   the same concurrency), each on its own key prefix, all reaching Redis through a LatencyProxy at the
   same LATENCY_MS; `distcomp loadgen --prefix p1,p2,...` fans one stream out to every queue (a burst
   that leaves each queue backlogged for the whole window); `distcomp exporter` watches every queue and
   discovers the workers; a real Prometheus with the bundled rules scrapes them. After a window of
   WINDOW_S, the board's own verdict expressions (from grafana/dashboards/ab-compare.json, variables
   substituted, $__range = the window) are evaluated at the window's end through the HTTP API.

Checks: each flag's verdict is a number within 15 % of the bench's ratio; and every B/A stat of the
board shows no number (a negative sentinel that the board maps to a text) when B is a variant that got
no work (idle) or is too slow to reach the sample gate (the 2 s `baseline`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from distcomp_obs.bench.proxy import LatencyProxy
from distcomp_obs.bench.workers import VARIANT_FLAGS
from distcomp_obs.netutil import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import render_boards

from tests.conftest import REPO, ProcGroup, WorkerProc, distcomp_argv, require, run_cli, wait_until
from tests.test_monitoring_stack import substitute

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LATENCY_MS = 5.0  # round trip added by the proxy: the workers are latency-bound, not CPU-bound
CONCURRENCY = 2
WINDOW_S = 40  # the board's $__range
FLAGS = ("pipeline", "prefetch", "adaptive")  # each flag alone, against the claims' reference
REFERENCE = "baseline-nosleep"
TOLERANCE = 0.15
BOARD = REPO / "grafana" / "dashboards" / "ab-compare.json"
PROM_DIR = REPO / "prometheus"


# --------------------------------------------------------------------------- bench half


def bench_ratios(redis_url: str, out: Path) -> dict[str, float]:
    """Median tasks/s of each flag's noop drain divided by the reference's (three interleaved rounds in a
    rotating order: one round's order effects moved every ratio by ~15 % together)."""
    res = run_cli(
        "bench", "--redis-url", redis_url, "--workloads", "noop", "--variants", ",".join((REFERENCE, *FLAGS)),
        "--latency-ms", f"{LATENCY_MS:g}", "--repeat", "3", "--concurrency", str(CONCURRENCY),
        "--tasks", "5000", "--window", "6", "--no-overhead", "--out", str(out), timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    by_variant: dict[str, list[float]] = {}
    for r in runs:
        if r["workload"] == "noop":
            by_variant.setdefault(r["variant"], []).append(float(r["tasks_per_s"]))
    rate = {v: statistics.median(x) for v, x in by_variant.items()}
    assert rate.get(REFERENCE, 0) > 0, rate
    return {flag: rate[flag] / rate[REFERENCE] for flag in FLAGS}


# --------------------------------------------------------------------------- live half


def http_json(url: str, data: dict[str, str] | None = None) -> Any:
    import urllib.request

    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=10) as resp:
        return json.loads(resp.read())


def prometheus_yml(tmp: Path, exporter: str) -> Path:
    """The bundled scrape jobs and rules, addresses on loopback, everything every 1 s."""
    rules = tmp / "rules"
    rules.mkdir()
    for f in (PROM_DIR / "rules").glob("*.yml"):
        (rules / f.name).write_text(f.read_text())
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": [
            {"job_name": "distcomp-exporter", "static_configs": [{"targets": [exporter]}]},
            {
                "job_name": "distcomp-worker",
                "http_sd_configs": [{"url": f"http://{exporter}/sd", "refresh_interval": "1s"}],
            },
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def board_stats() -> dict[str, str]:
    """title -> expr of every single-query instant stat of the A/B board (the B/A numbers and verdicts)."""
    board = json.loads(BOARD.read_text())
    out = {}
    for p in board["panels"]:
        if p["type"] == "stat" and len(p["targets"]) == 1 and p["targets"][0]["legendFormat"] == "B/A":
            out[p["title"]] = p["targets"][0]["expr"]
    return out


class Live(ProcGroup):
    """The stack's processes, each logging to TMP/NAME.log with a clean distcomp environment."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(stop_wait_s=20)
        self.tmp = tmp

    def launch(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> WorkerProc:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DISTCOMP_", "OTEL_"))}
        return self.start(argv, self.tmp / f"{name}.log", {**base, "OTEL_SDK_DISABLED": "true", **(env or {})})


def test_board_verdicts_agree_with_bench(redis_url: str, prefix: str, tmp_path: Path) -> None:
    prometheus_bin = shutil.which("prometheus")
    require(prometheus_bin is not None, "prometheus (Debian package: prometheus)")
    assert prometheus_bin is not None

    expected = bench_ratios(redis_url, tmp_path / "bench")

    variants = {REFERENCE: VARIANT_FLAGS[REFERENCE], **{f: VARIANT_FLAGS[f] for f in FLAGS}}
    variants["baseline"] = VARIANT_FLAGS["baseline"]  # too slow for the sample gate: must show no number
    variants["idle"] = VARIANT_FLAGS["all"]  # its queue gets no task: must show no number
    prefixes = {v: f"{prefix}ab-{v}:" for v in variants}
    live = Live(tmp_path)
    url = urllib.parse.urlsplit(redis_url)
    proxy = LatencyProxy((url.hostname or "127.0.0.1", url.port or 6379), rtt_ms=LATENCY_MS).start()
    try:
        exporter_port = free_port()
        watched = ",".join(prefixes.values())
        live.launch("exporter", distcomp_argv("exporter", "--redis-url", redis_url, "--prefix", watched,
                                             "--metrics-addr", f"127.0.0.1:{exporter_port}"))  # fmt: skip
        for v, flags in variants.items():
            argv = ["worker", "--redis-url", f"{proxy.url}/{url.path.lstrip('/') or 0}", "--prefix", prefixes[v]]
            argv += ["--name", f"ab-{v}", "--variant", v, "--concurrency", str(CONCURRENCY), *flags]
            live.launch(f"worker-{v}", distcomp_argv(*argv, "--metrics-addr", "127.0.0.1:0"))
        prom_port = free_port()
        live.launch(
            "prometheus",
            [prometheus_bin, f"--config.file={prometheus_yml(tmp_path, f'127.0.0.1:{exporter_port}')}",
             f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        )  # fmt: skip
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def query(expr: str, at: float | None = None) -> list[dict[str, Any]]:
            res = http_json(f"{api}/query", {"query": expr, **({"time": f"{at:.3f}"} if at else {})})
            assert res["status"] == "success", res
            return res["data"]["result"]

        def scraped() -> bool:
            try:
                got = {s["metric"].get("variant") for s in query('up{job="distcomp-worker"} == 1')}
            except OSError:
                return False
            return got >= set(variants) and bool(query('up{job="distcomp-exporter"} == 1'))

        wait_until(scraped, timeout=90, interval=0.5, what="every worker discovered and scraped")

        # One burst, fanned out to every queue but the idle one's: backlogged for the whole window.
        fed = ",".join(p for v, p in prefixes.items() if v != "idle")
        res = run_cli("loadgen", "--redis-url", redis_url, "--prefix", fed, "--rate", "3000", "--duration", "10",
                      "--mix", "noop=1", "--seed", "7", timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "to each of" in res.stderr, res.stderr
        time.sleep(3)
        start = time.time()
        time.sleep(WINDOW_S)
        end = time.time()
        window = f"{round(end - start)}s"

        values = {"job": "distcomp-worker", "exporter_job": "distcomp-exporter", "__range": window,
                  "op": "claim|report", "a": REFERENCE}  # fmt: skip
        stats = board_stats()
        verdicts = {}
        for flag in FLAGS:
            (title,) = [t for t in stats if t.endswith(f": {flag} / $a")]
            (sample,) = query(substitute(stats[title], values), end)
            verdicts[flag] = float(sample["value"][1])
        report = {f: (round(verdicts[f], 3), round(expected[f], 3)) for f in FLAGS}
        print("verdict (board, bench):", report, flush=True)
        for flag in FLAGS:
            assert verdicts[flag] > 0, f"{flag}: the board gave no number (sentinel {verdicts[flag]}): {report}"
            assert abs(verdicts[flag] / expected[flag] - 1) <= TOLERANCE, f"{flag}: board vs bench {report}"

        # A starved (too slow for the gate) or idle B shows no number on any B/A stat.
        # (Round-trip p99 is per round trip, not per task: a slow variant still makes enough of them.)
        per_task = {t: e for t, e in stats.items() if "$b" in e and not t.startswith("Round-trip")}
        assert len(per_task) >= 6, list(per_task)
        for b in ("idle", "baseline"):
            for title, expr in per_task.items():
                result = query(substitute(expr, {**values, "b": b}), end)
                assert len(result) == 1, (b, title, result)
                value = float(result[0]["value"][1])
                assert value < 0, f"B={b}: {title!r} shows the number {value}, not a 'no number' sentinel"

        # The docs' pictures of the board come from this very run (tools/render_boards.py): the
        # flag against the reference, and a B too slow for any per-task number.
        out = Path(os.environ.get("DISTCOMP_RENDER_BOARDS") or tmp_path)
        board = json.loads(BOARD.read_text())
        rng = {**values, "__rate_interval": "10s", "__interval": "1s"}
        for b, name in (("pipeline", "ab-board-pipeline.png"), ("baseline", "ab-board-starved.png")):
            drawn = render_boards.render(
                f"http://127.0.0.1:{prom_port}", board, {**rng, "b": b}, start, end, out / name
            )
            assert drawn >= 20 and (out / name).stat().st_size > 10_000, (name, drawn)
    except BaseException:
        print(live.logs())
        raise
    finally:
        live.stop()
        proxy.stop()
