"""`distcomp bench` end to end on a small run, the report's verdict logic, and `distcomp loadgen`.

Benchmark figures are never asserted: only that runs complete and outputs are well formed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from distcomp_obs.bench.probes import histogram_quantile
from distcomp_obs.bench.report import render_markdown
from distcomp_obs.bench.verdicts import Figures, claims, combine, targets
from distcomp_obs.errors import ConfigError
from distcomp_obs.loadgen import parse_mix
from distcomp_obs.queue import Queue
from tests.conftest import REPO, distcomp_argv, run_cli, wait_until

CLAIM_ROWS = 7


@pytest.mark.timeout(420)
def test_small_bench_run_writes_results_report_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run_cli(
        "bench", "--workloads", "noop,shell,pickup,scale", "--variants", "baseline-nosleep,all",
        "--latency-ms", "0,1", "--repeat", "1", "--tasks", "300", "--shell-tasks", "40", "--window", "3",
        "--pickups", "3", "--pickup-spacing", "0.05", "--idle-window", "1", "--scale-queued", "3000",
        "--idle-workers", "2", "--scale-seconds", "0.3", "--out", str(out),
        timeout=400,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert not [r for r in runs if "error" in r], [r["error"] for r in runs if "error" in r]
    seen = {(r["workload"], r["variant"], r["latency_ms"]) for r in runs}
    for workload in ("noop", "shell", "pickup"):
        for variant in ("baseline-nosleep", "all"):
            for lat in (0.0, 1.0):
                assert (workload, variant, lat) in seen
    assert ("noop", "all-nometrics", 0.0) in seen and ("noop", "all-direct", 0.0) in seen
    assert ("shell", "bare-loop", 0.0) in seen
    for r in runs:
        if r["workload"] in ("noop", "shell") and r["variant"] != "bare-loop":
            assert r["audit_ok"] is True
            assert r["done"] > 0 and r["tasks_per_s"] > 0
            assert r["redis_commands_per_task"] > 0
        if r["workload"] == "pickup":
            assert r["pickups"] == 3
    assert "ping_rtt_ms_direct" in results["proxy"] and set(results["proxy"]["ping_rtt_ms_proxied"]) == {"0", "1"}
    assert results["scale"]["claim"]["claims_per_s_median"]["big"] > 0
    assert results["scale"]["claim"]["worker_big"]["done"] > 0
    assert results["scale"]["idle_workers"]["started"] == 2
    assert results["meta"]["command"].startswith("distcomp bench")

    md = (out / "report.md").read_text()
    section = md.split("## Claimed vs measured", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == CLAIM_ROWS
    for line in rows:
        assert line.count("|") == 6  # claim, basis, 0 ms, 1 ms, verdict
        assert any(v in line for v in ("**holds", "**does not hold", "**not measured"))
    assert "## Targets" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = run_cli("bench", "--report-only", "--out", str(out))
    assert again.returncode == 0, again.stderr


def _runs(rates: dict[tuple[str, float], float], rt: dict[str, float] | None = None) -> dict[str, Any]:
    runs = []
    for (variant, lat), rate in rates.items():
        run = {"workload": "noop", "variant": variant, "latency_ms": lat, "repeat": 0, "tasks_per_s": rate}
        if rt and variant in rt:
            run["worker_roundtrips_per_task"] = rt[variant]
        runs.append(run)
    return {"runs": runs, "meta": {}, "scale": {}}


def test_verdicts_come_from_the_numbers() -> None:
    rates = {("baseline", 0.0): 0.5, ("baseline-nosleep", 0.0): 1000.0, ("pipeline", 0.0): 1400.0,
             ("prefetch", 0.0): 1100.0, ("adaptive", 0.0): 1000.0, ("all", 0.0): 10000.0,
             ("baseline", 5.0): 0.5, ("baseline-nosleep", 5.0): 100.0, ("pipeline", 5.0): 100.0,
             ("prefetch", 5.0): 150.0, ("adaptive", 5.0): 90.0, ("all", 5.0): 9000.0}  # fmt: skip
    rows = {r["claim"]: r for r in claims(Figures(_runs(rates, {"baseline-nosleep": 20.0, "pipeline": 2.0})))}
    assert len(rows) == CLAIM_ROWS
    assert rows["pipelining +30–50 %"]["verdict"] == "holds only at 0 ms"
    assert rows["prefetching +20–40 %"]["verdict"] == "holds only at 5 ms"
    assert rows["adaptive polling +20–30 %"]["verdict"] == "does not hold"
    assert rows["overall +50–100 %"]["verdict"].startswith("holds (understated")
    assert rows["pipelining 5–10× on Redis operations"]["verdict"] == "holds"
    assert rows["baseline ~100–200 tasks/s per worker"]["verdict"].startswith("does not hold as shipped")
    latency = rows["network latency is the primary bottleneck in large deployments"]["verdict"]
    assert latency.startswith("holds only for DistComp's protocol")
    assert combine({0.0: None}) == "not measured"
    md = render_markdown(_runs(rates), chart_name=None)
    assert "## Claimed vs measured" in md and "n/a" in md
    assert len(targets(Figures(_runs(rates)), _runs(rates))) >= 10


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.001, 50.0), (0.0025, 90.0), (0.005, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.001)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert histogram_quantile(0.5, []) is None


def test_loadgen_mix_parsing() -> None:
    mix = parse_mix("noop=3,fail=1")
    assert mix["noop"] == pytest.approx(0.75) and mix["fail"] == pytest.approx(0.25) and mix["shell"] == 0
    for bad in ("noop=x", "bogus=1", "noop=0"):
        with pytest.raises(ConfigError):
            parse_mix(bad)


def test_loadgen_submits_about_rate_times_duration(redis_url: str, queue: Queue, prefix: str) -> None:
    res = run_cli("loadgen", "--redis-url", redis_url, "--prefix", prefix, "--rate", "40", "--duration", "1.5",
                  "--mix", "noop=5,sleep=2,fail=2,shell=1", "--seed", "3")  # fmt: skip
    assert res.returncode == 0, res.stderr
    submitted = queue.stats().get("submitted", 0)
    assert 50 <= submitted <= 60  # rate x duration, the last partial tick included
    todo = queue.todo_in_order()
    assert len(set(todo)) == len(todo) == submitted  # every line unique
    kinds = {line.split(":", 4)[4].split()[0] if line.startswith("builtin") else "shell" for line in todo}
    assert kinds == {"noop", "sleep", "fail", "shell"}


def test_loadgen_stops_cleanly_on_sigterm(redis_url: str, queue: Queue, prefix: str) -> None:
    proc = subprocess.Popen(distcomp_argv("loadgen", "--redis-url", redis_url, "--prefix", prefix, "--rate", "100"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: queue.stats().get("submitted", 0) >= 20, timeout=30, what="loadgen submitting")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "submitted" in err
    before = queue.stats()["submitted"]
    time.sleep(0.3)
    assert queue.stats()["submitted"] == before  # nothing after exit


@pytest.mark.timeout(300)
def test_cluster_workload_reports_throughput_and_redis_costs_per_worker_count(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    res = run_cli(
        "bench", "--workloads", "cluster", "--cluster-workers", "1,2", "--repeat", "1", "--tasks", "500",
        "--latency-ms", "0", "--out", str(out), timeout=280,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert not [r for r in runs if "error" in r], [r["error"] for r in runs if "error" in r]
    assert sorted(r["workers"] for r in runs) == [1, 2]
    for r in runs:
        assert r["workload"] == "cluster" and r["audit_ok"] is True and r["done"] == r["tasks"] == 500 * r["workers"]
        assert r["redis_cpu_us_per_task"] > 0 and r["redis_cpu_us_per_line"] > 0 and r["redis_busy_pct"] > 0
        assert r["redis_bytes_per_queued_task"] > 0 and r["submit_lines_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "## Cluster: workers on one Redis" in report
    assert [
        line.split("|")[1].strip()
        for line in report.splitlines()
        if line.startswith("| 1 |") or line.startswith("| 2 |")
    ] == ["1", "2"]
