#!/usr/bin/env python3
"""Generate the three Grafana boards in grafana/dashboards/ from one description.

Why generated: three boards share a datasource variable, selector conventions, units, heatmap and
exemplar settings; writing them from Python keeps them consistent, and tests/test_monitoring_bundle.py
checks that the committed JSON is what this script produces (``--check``).

    python tools/build_dashboards.py          # rewrite grafana/dashboards/*.json
    python tools/build_dashboards.py --check  # exit 1 if the committed JSON is out of date

Rules every panel follows (the dashboard-linter rules and the survey in research/monitoring.md §d):
fixed uids; ``${datasource}`` on every panel and target; ``job``/``variant``/``instance`` variables, never
a hard-coded job; ``$__rate_interval`` in every rate()/increase(); a unit and a description on every
panel; heatmaps (``format: heatmap``, calculation off) for histograms; exemplars on latency panels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "grafana" / "dashboards"

# Grafana image pinned in docker-compose.yml and the dashboard schema version it writes. Change both
# together: a board with an older schemaVersion is migrated on every load (and rewritten on save).
GRAFANA_VERSION = "11.5.1"
SCHEMA_VERSION = 40

DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

# Selectors. Worker metrics carry the SD target labels job/instance/worker/variant/host.
W = 'job=~"$job", variant=~"$variant", instance=~"$instance"'
E = 'job=~"$exporter_job", queue=~"$queue"'
TASKS_PER_S = "suffix: tasks/s"


# --------------------------------------------------------------------------- building blocks


class Board:
    """Lays panels out on Grafana's 24-column grid, left to right, wrapping rows."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self._x = 0
        self._y = 0
        self._row_h = 0
        self._id = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._next_id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
            self._x = 0
            self._row_h = 0

    def add(self, panel: dict, w: int, h: int = 8) -> dict:
        if self._x + w > 24:
            self._newline()
        panel["id"] = self._next_id()
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._x += w
        self._row_h = max(self._row_h, h)
        self.panels.append(panel)
        return panel


def target(expr: str, legend: str = "", ref: str = "A", **extra) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "range": True, "refId": ref}
    t.update(extra)
    return t


def targets(*specs) -> list[dict]:
    """specs: (expr, legend) or (expr, legend, extra-dict); refIds A, B, C..."""
    out = []
    for i, spec in enumerate(specs):
        expr, legend, *rest = spec
        out.append(target(expr, legend, chr(ord("A") + i), **(rest[0] if rest else {})))
    return out


def thresholds(*steps) -> dict:
    """steps: ("green", None), ("yellow", 1.0), ... base first."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def field_config(unit: str, *, stack: bool = False, min_=None, max_=None, th=None, decimals=None) -> dict:
    defaults: dict = {"unit": unit, "custom": {}}
    if stack:
        defaults["custom"]["stacking"] = {"mode": "normal", "group": "A"}
        defaults["custom"]["fillOpacity"] = 30
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if th is not None:
        defaults["thresholds"] = th
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"defaults": defaults, "overrides": []}


def timeseries(title, desc, unit, tgts, *, stack=False, min_=None, max_=None) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": field_config(unit, stack=stack, min_=min_, max_=max_),
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": tgts,
    }


def stat(title, desc, unit, tgts, *, th=None, decimals=None, instant=True, color_mode="value") -> dict:
    for t in tgts:
        if instant:
            t["instant"] = True
            t["range"] = False
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": field_config(unit, th=th or thresholds(("blue", None)), decimals=decimals),
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": color_mode,
            "graphMode": "none" if instant else "area",
            "textMode": "auto",
            "orientation": "auto",
            "justifyMode": "auto",
        },
        "targets": tgts,
    }


def heatmap(title, desc, bucket_metric, selector, unit="s", *, by="le", exemplar=True) -> dict:
    """A heatmap of a classic histogram: bucket increases per rate interval, calculation off."""
    expr = f"sum by ({by}) (increase({bucket_metric}{{{selector}}}[{RI}]))"
    return {
        "type": "heatmap",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, "custom": {}}, "overrides": []},
        "options": {
            # The series are already buckets ("calculate from data" off); rows are the le bounds.
            "calculate": False,
            "yAxis": {"unit": unit, "axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange"},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
            "filterValues": {"le": 1e-9},
        },
        "targets": [
            target(expr, "{{le}}", "A", format="heatmap", exemplar=exemplar, interval="", range=True),
        ],
    }


def table(title, desc, unit, tgts, transformations, overrides=None) -> dict:
    for t in tgts:
        t["instant"] = True
        t["range"] = False
        t["format"] = "table"
    fc = field_config(unit)
    fc["overrides"] = overrides or []
    return {
        "type": "table",
        "title": title,
        "description": desc,
        "datasource": DS,
        "fieldConfig": fc,
        "options": {"showHeader": True, "cellHeight": "sm"},
        "targets": tgts,
        "transformations": transformations,
    }


def quantile(q: float, bucket_metric: str, selector: str, by: str = "") -> str:
    by_clause = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({by_clause}) (rate({bucket_metric}{{{selector}}}[{RI}])))"


# --------------------------------------------------------------------------- variables


def ds_var() -> dict:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus", "value": "distcomp-prometheus"},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_var(name, label, query, *, multi=True, include_all=True, all_value=".+", current=None) -> dict:
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,  # on time range change: workers come and go
        "multi": multi,
        "includeAll": include_all,
        "sort": 1,
        "hide": 0,
        "regex": "",
        "options": [],
        "current": current or ({"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {}),
    }
    if include_all:
        v["allValue"] = all_value
    return v


def worker_vars() -> list[dict]:
    return [
        query_var("job", "Worker job", "label_values(distcomp_worker_info, job)"),
        query_var("variant", "Variant", 'label_values(distcomp_worker_info{job=~"$job"}, variant)'),
        query_var(
            "instance", "Instance", 'label_values(distcomp_worker_info{job=~"$job", variant=~"$variant"}, instance)'
        ),
    ]


def exporter_vars() -> list[dict]:
    return [
        query_var("exporter_job", "Exporter job", "label_values(distcomp_build_info, job)"),
        query_var("queue", "Queue", 'label_values(distcomp_queue_tasks{job=~"$exporter_job"}, queue)'),
    ]


def restart_annotation() -> dict:
    return {
        "name": "Worker (re)starts",
        "datasource": DS,
        "enable": True,
        "iconColor": "rgba(255, 96, 96, 1)",
        "expr": 'changes(process_start_time_seconds{job=~"$job"}[1m]) > 0',
        "step": "15s",
        "titleFormat": "worker restart",
        "textFormat": "{{worker}} ({{variant}}) started",
        "useValueForTime": False,
    }


def dashboard(uid, title, description, board: Board, variables, *, refresh="10s", time_from="now-30m") -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["distcomp"],
        "editable": False,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "id": None,
        "links": [
            {
                "type": "dashboards",
                "title": "distcomp boards",
                "tags": ["distcomp"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                restart_annotation(),
            ]
        },
        "templating": {"list": [ds_var(), *variables]},
        "panels": board.panels,
    }


# --------------------------------------------------------------------------- board 1: overview


def overview() -> dict:
    b = Board()
    b.row("Queue")
    b.add(
        stat(
            "Tasks by state",
            "Tasks in each state right now, read from Redis by the exporter: todo (waiting), in_progress "
            "(claimed and running), buffered (claimed into a worker's prefetch buffer, not started), failed "
            "(failed for good) and finished.",
            "short",
            targets((f"sum by (state) (distcomp_queue_tasks{{{E}}})", "{{state}}")),
        ),
        w=10,
        h=5,
    )
    b.add(
        stat(
            "Workers",
            "Registered workers by state: live (heartbeat fresh) and stale (heartbeat missed, not yet reaped; "
            "their tasks return to the queue when the reaper runs).",
            "short",
            targets((f"sum by (state) (distcomp_workers{{{E}}})", "{{state}}")),
        ),
        w=4,
        h=5,
    )
    b.add(
        stat(
            "Throughput",
            "Tasks finished per second over the last rate interval, from the Redis-kept finished counter "
            "(counts every worker, including ones that have since exited).",
            TASKS_PER_S,
            targets((f"sum(rate(distcomp_queue_tasks_finished_total{{{E}}}[{RI}]))", "finished")),
            decimals=2,
        ),
        w=5,
        h=5,
    )
    fail = f"sum(rate(distcomp_queue_tasks_failed_total{{{E}}}[{RI}]))"
    fin = f"sum(rate(distcomp_queue_tasks_finished_total{{{E}}}[{RI}]))"
    b.add(
        stat(
            "Failure ratio",
            "Share of tasks that ended in the last rate interval and failed for good "
            "(failed / (failed + finished)). The DistcompTaskFailureRatioHigh alert uses 15 minutes and a "
            "minimum volume.",
            "percentunit",
            targets((f"{fail} / ({fail} + {fin})", "failed share")),
            th=thresholds(("green", None), ("yellow", 0.01), ("red", 0.1)),
        ),
        w=5,
        h=5,
    )
    b.add(
        timeseries(
            "Queue by state",
            "Tasks in each state over time (stacked). A growing todo band with a flat finished rate means "
            "the workers cannot keep up.",
            "short",
            targets((f'sum by (state) (distcomp_queue_tasks{{{E}, state=~"todo|in_progress|buffered"}})', "{{state}}")),
            stack=True,
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Oldest task age",
            "Age of the oldest waiting task (todo: how long the queue makes work wait; DistcompQueueStalled) "
            "and of the oldest running task (in_progress; DistcompTaskStuck).",
            "s",
            targets((f"max by (state) (distcomp_queue_oldest_task_age_seconds{{{E}}})", "{{state}}")),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Time to drain (estimate)",
            "Waiting tasks divided by the finished rate of the last minute (recording rule "
            "queue:distcomp_queue_tasks_finished:rate1m): how long the backlog lasts at the current pace. "
            "Empty when nothing is finishing.",
            "s",
            targets(
                (
                    f'sum by (queue) (distcomp_queue_tasks{{{E}, state="todo"}}) / '
                    f"sum by (queue) (queue:distcomp_queue_tasks_finished:rate1m{{{E}}} > 0)",
                    "{{queue}}",
                )
            ),
            min_=0,
        ),
        w=8,
    )

    b.row("Tasks")
    b.add(
        timeseries(
            "Task flow",
            "Tasks submitted, started, finished and failed for good per second, from the Redis-kept queue "
            "counters. Submitted above finished for long means a growing backlog.",
            TASKS_PER_S,
            targets(
                (f"sum(rate(distcomp_queue_tasks_submitted_total{{{E}}}[{RI}]))", "submitted"),
                (f"sum(rate(distcomp_queue_tasks_started_total{{{E}}}[{RI}]))", "started"),
                (f"sum(rate(distcomp_queue_tasks_finished_total{{{E}}}[{RI}]))", "finished"),
                (f"sum(rate(distcomp_queue_tasks_failed_total{{{E}}}[{RI}]))", "failed for good"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Failures and their growth",
            "Tasks failed for good per rate interval, by queue (the DistcompTasksFailing signal), and the "
            "total failed-for-good count. Attempts that failed and were retried are on the next panel.",
            "short",
            targets(
                (
                    f"sum by (queue) (increase(distcomp_queue_tasks_failed_total{{{E}}}[{RI}]))",
                    "new failures {{queue}}",
                ),
                (f'sum by (queue) (distcomp_queue_tasks{{{E}, state="failed"}})', "failed total {{queue}}"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Attempt outcomes by variant",
            "Task attempts ended per second on the workers, by variant and outcome (finished, failed for "
            "good, retried).",
            TASKS_PER_S,
            targets(
                (
                    f"sum by (variant, outcome) (rate(distcomp_tasks_completed_total{{{W}}}[{RI}]))",
                    "{{variant}} {{outcome}}",
                )
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        heatmap(
            "Task duration",
            "Distribution of task run times (all types and outcomes) per rate interval. Exemplars link to "
            "the task's process span in the trace backend.",
            "distcomp_task_duration_seconds_bucket",
            W,
        ),
        w=8,
    )
    dur = "distcomp_task_duration_seconds_bucket"
    b.add(
        timeseries(
            "Task duration p50 / p95 / p99",
            "Quantiles of task run time by type over the rate interval. Exemplars (dots) open the trace of "
            "a sampled task.",
            "s",
            targets(
                (quantile(0.5, dur, W, "type"), "p50 {{type}}", {"exemplar": True}),
                (quantile(0.95, dur, W, "type"), "p95 {{type}}", {"exemplar": True}),
                (quantile(0.99, dur, W, "type"), "p99 {{type}}", {"exemplar": True}),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        heatmap(
            "Pickup delay",
            "Submit-to-start delay of tasks per rate interval (queue wait + buffer wait). Fixed 2 s polling "
            "shows as a band near 1-2 s; adaptive polling moves it to milliseconds.",
            "distcomp_task_pickup_delay_seconds_bucket",
            W,
        ),
        w=8,
    )

    b.row("Workers")
    by_worker = "worker"
    b.add(
        table(
            "Workers",
            "One row per registered worker: heartbeat age (from the exporter, kept until reaped), variant and "
            "flags (distcomp_worker_info), busy/total slots, finished tasks per second and whether its "
            "metrics endpoint answers (up).",
            "short",
            targets(
                (
                    f"time() - max by ({by_worker}) (distcomp_worker_last_heartbeat_timestamp_seconds{{{E}}})",
                    "heartbeat age",
                ),
                (
                    f"max by (worker, variant, version, pipeline, prefetch, polling) (distcomp_worker_info{{{W}}})",
                    "info",
                ),
                (f"max by (worker) (distcomp_slots_busy{{{W}}})", "slots busy"),
                (f"max by (worker) (distcomp_slots{{{W}}})", "slots total"),
                (
                    f'sum by (worker) (rate(distcomp_tasks_completed_total{{{W}, outcome="finished"}}[{RI}]))',
                    "finished/s",
                ),
                (f"max by (worker) (up{{{W}}})", "up"),
            ),
            [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #B": True},
                        "renameByName": {
                            "Value #A": "heartbeat age",
                            "Value #C": "slots busy",
                            "Value #D": "slots total",
                            "Value #E": "finished/s",
                            "Value #F": "up",
                        },
                    },
                },
            ],
            overrides=[
                {"matcher": {"id": "byName", "options": "heartbeat age"}, "properties": [{"id": "unit", "value": "s"}]},
                {
                    "matcher": {"id": "byName", "options": "finished/s"},
                    "properties": [{"id": "unit", "value": TASKS_PER_S}],
                },
            ],
        ),
        w=16,
        h=9,
    )
    b.add(
        {
            "type": "state-timeline",
            "title": "Worker up",
            "description": "Whether each worker's metrics endpoint answered Prometheus's scrape. A dead worker "
            "stays listed by the exporter's service discovery until it is reaped, so it shows as down "
            "instead of disappearing.",
            "datasource": DS,
            "fieldConfig": {
                "defaults": {
                    "unit": "none",
                    "custom": {},
                    "mappings": [
                        {
                            "type": "value",
                            "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}},
                        }
                    ],
                    "thresholds": thresholds(("red", None), ("green", 1)),
                },
                "overrides": [],
            },
            "options": {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "legend": {"showLegend": False}},
            "targets": targets((f"max by (worker) (up{{{W}}})", "{{worker}}")),
        },
        w=8,
        h=9,
    )
    b.add(
        timeseries(
            "Slots busy by variant",
            "Running tasks and the slot limit per variant. Busy well below total while tasks wait means the "
            "fetch path, not the slots, is the bottleneck.",
            "short",
            targets(
                (f"sum by (variant) (distcomp_slots_busy{{{W}}})", "busy {{variant}}"),
                (f"sum by (variant) (distcomp_slots{{{W}}})", "total {{variant}}"),
            ),
            min_=0,
        ),
        w=12,
    )
    b.add(
        table(
            "Firing alerts",
            "distcomp alerts firing now (Prometheus's ALERTS series). Each alert's runbook is in docs/ALERTS.md.",
            "short",
            targets(('ALERTS{alertstate="firing", alertname=~"Distcomp.*"}', "{{alertname}}")),
            [
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True, "alertstate": True}},
                }
            ],
        ),
        w=12,
    )
    return dashboard(
        "distcomp-overview",
        "distcomp / Overview",
        "Operator view of a distcomp deployment: queue state, throughput, failures, workers and alerts.",
        b,
        [*exporter_vars(), *worker_vars()],
    )


# --------------------------------------------------------------------------- board 2: A/B compare

# Thresholds for the B/A ratio stats, at the proposal's claims: pipelining +30-50 % and adaptive
# polling +20-30 % throughput. "Higher is better" rows turn green at 1.3; "lower is better" rows at
# 1/1.3 = 0.77. Correctness rows must match across variants: green only between 0.8 and 1.25.
HIGHER_BETTER = thresholds(("red", None), ("yellow", 1.0), ("green", 1.3))
LOWER_BETTER = thresholds(("green", None), ("yellow", 0.77), ("red", 1.0))
MUST_MATCH = thresholds(("red", None), ("green", 0.8), ("red", 1.25))


def ab_row(b: Board, title, desc, unit, exprs, *, ratio=None, ratio_desc="", th=HIGHER_BETTER, samples=None) -> None:
    """A, B side by side (same unit), then the B/A ratio stat and optionally observation counts.

    exprs: list of (template, legend) where the template holds {v} for the variant variable. The
    expressions keep no variant label, so B / A matches series one to one.
    """
    for side in ("a", "b"):
        v = f"${side}"
        tg = targets(*[(e.replace("{v}", v), f"{legend} ({v})", *rest) for e, legend, *rest in exprs])
        w = 9 if samples else 10
        b.add(timeseries(f"{title} — {side.upper()}: ${side}", desc, unit, tg, min_=0), w=w)
    if ratio is None:
        ratio = exprs[0][0]
    exprs = [(e, legend, *rest) for e, legend, *rest in exprs]
    r = stat(
        f"{title} — B/A",
        (ratio_desc or "B divided by A for the first series of the row.")
        + " Thresholds sit at the proposal's claims (see the board description).",
        "none",
        targets((f"({ratio.replace('{v}', '$b')}) / ({ratio.replace('{v}', '$a')})", "B/A")),
        th=th,
        decimals=2,
        color_mode="background",
    )
    b.add(r, w=3 if samples else 4)
    if samples:
        b.add(
            stat(
                "Observations",
                "Histogram observations behind the quantiles in this row, per rate interval, for A and B: a "
                "p99 from a dozen observations is noise.",
                "short",
                targets((samples.replace("{v}", "$a"), "A"), (samples.replace("{v}", "$b"), "B")),
            ),
            w=3,
        )


def ab_compare() -> dict:
    b = Board()
    s = 'job=~"$job", variant="{v}"'
    rt = "distcomp_redis_roundtrip_seconds_bucket"

    finished = f'sum(variant:distcomp_tasks_completed:rate1m{{{s}, outcome="finished"}})'
    workers = f"count(distcomp_worker_info{{{s}}})"

    b.row("Throughput")
    ab_row(
        b,
        "Tasks finished per second",
        "Tasks finished per second by the variant (recording rule variant:distcomp_tasks_completed:rate1m), "
        "and per worker (divided by the number of the variant's workers).",
        TASKS_PER_S,
        [
            (finished, "all workers"),
            (f"{finished} / {workers}", "per worker"),
        ],
        ratio=f"{finished} / {workers}",
        ratio_desc="Finished tasks per second per worker, B/A (higher is better; claim: >= 1.3).",
    )

    b.row("Protocol cost")
    ab_row(
        b,
        "Redis round trips and commands per task",
        "Redis round trips and commands per finished task (recording rules "
        "variant:distcomp_redis_roundtrips_per_tasks_finished:ratio_rate1m and ..._commands_...). Pipelining "
        "cuts round trips; prefetch batches claims.",
        "short",
        [
            (f"sum(variant:distcomp_redis_roundtrips_per_tasks_finished:ratio_rate1m{{{s}}})", "round trips/task"),
            (f"sum(variant:distcomp_redis_commands_per_tasks_finished:ratio_rate1m{{{s}}})", "commands/task"),
        ],
        ratio_desc="Round trips per finished task, B/A (lower is better).",
        th=LOWER_BETTER,
    )
    sop = s + ', op=~"$op"'
    ab_row(
        b,
        "Commands per round trip",
        "Mean Redis commands carried by one round trip, by operation: the direct batching signal "
        "(1 without pipelining).",
        "short",
        [
            (
                f"sum by (op) (rate(distcomp_redis_roundtrip_commands_sum{{{sop}}}[{RI}])) / "
                f"sum by (op) (rate(distcomp_redis_roundtrip_commands_count{{{sop}}}[{RI}]))",
                "{{op}}",
            )
        ],
        ratio=(
            f"sum(rate(distcomp_redis_roundtrip_commands_sum{{{sop}}}[{RI}])) / "
            f"sum(rate(distcomp_redis_roundtrip_commands_count{{{sop}}}[{RI}]))"
        ),
        ratio_desc="Commands per round trip over the selected operations, B/A (higher means more batching).",
    )

    b.row("Round-trip latency")
    ab_row(
        b,
        "Round-trip p50 / p99 by operation",
        "Redis round-trip latency quantiles by operation from the recording rules "
        "variant_op:distcomp_redis_roundtrip_seconds:p50_rate1m / p99_rate1m.",
        "s",
        [
            (f"max by (op) (variant_op:distcomp_redis_roundtrip_seconds:p50_rate1m{{{sop}}})", "p50 {{op}}"),
            (f"max by (op) (variant_op:distcomp_redis_roundtrip_seconds:p99_rate1m{{{sop}}})", "p99 {{op}}"),
        ],
        ratio=(
            "histogram_quantile(0.99, sum by (le) "
            f"(variant_op:distcomp_redis_roundtrip_seconds_bucket:rate1m{{{sop}}}))"
        ),
        ratio_desc="p99 round trip over the selected operations, B/A (lower is better).",
        th=LOWER_BETTER,
        samples=f"sum(increase(distcomp_redis_roundtrip_seconds_count{{{sop}}}[{RI}]))",
    )
    for side in ("a", "b"):
        b.add(
            heatmap(
                f"Round-trip latency — {side.upper()}: ${side}",
                "Distribution of Redis round-trip times of the selected operations. Exemplars link to the "
                "receive/settle span of a sampled claim or report.",
                rt,
                sop.replace("{v}", f"${side}"),
            ),
            w=12,
        )

    b.row("Prefetch buffer")
    for side in ("a", "b"):
        b.add(
            heatmap(
                f"Buffer occupancy at take — {side.upper()}: ${side}",
                "Tasks in the prefetch buffer each time a slot takes one. The bottom (le=0) band is "
                "starvation: a free slot found the buffer empty.",
                "distcomp_buffer_occupancy_tasks_bucket",
                s.replace("{v}", f"${side}") + ', event="take"',
                unit="short",
                exemplar=False,
            ),
            w=12,
        )
    take = s + ', event="take"'
    ab_row(
        b,
        "Starvation and buffer fill",
        "Share of takes that found the buffer empty (starvation), and the buffer fill against its capacity "
        "summed over the variant's workers (right: tasks).",
        "percentunit",
        [
            (
                f'sum(rate(distcomp_buffer_occupancy_tasks_bucket{{{take}, le=~"0|0.0"}}[{RI}])) / '
                f"sum(rate(distcomp_buffer_occupancy_tasks_count{{{take}}}[{RI}]))",
                "starved share",
            ),
            (f"sum(distcomp_buffer_tasks{{{s}}}) / sum(distcomp_buffer_capacity_tasks{{{s}}} > 0)", "fill / capacity"),
        ],
        ratio_desc="Starved share of takes, B/A (lower is better).",
        th=LOWER_BETTER,
    )

    b.row("Polling")
    ab_row(
        b,
        "Share of time asleep by reason",
        "Fraction of each worker's wall time spent sleeping or blocked between fetches, by reason "
        "(fixed_interval, idle_backoff, blocking_wait, buffer_full, redis_down), averaged over the variant's workers.",
        "percentunit",
        [
            (
                f"sum by (reason) (rate(distcomp_poll_sleep_seconds_sum{{{s}}}[{RI}])) / scalar({workers})",
                "{{reason}}",
            )
        ],
        ratio=f"sum(rate(distcomp_poll_sleep_seconds_sum{{{s}}}[{RI}])) / {workers}",
        ratio_desc="Total share of time asleep, B/A. Under load lower is better; when idle, asleep is the point.",
        th=LOWER_BETTER,
    )
    for side in ("a", "b"):
        b.add(
            heatmap(
                f"Sleep durations — {side.upper()}: ${side}",
                "Distribution of the sleeps and blocking waits between fetches (all reasons).",
                "distcomp_poll_sleep_seconds_bucket",
                s.replace("{v}", f"${side}"),
                exemplar=False,
            ),
            w=12,
        )

    b.row("Latency to start")
    ab_row(
        b,
        "Pickup delay p50 / p99",
        "Submit-to-start delay (recording rules variant:distcomp_task_pickup_delay_seconds:p50_rate1m / "
        "p99_rate1m), split into queue wait (submit to claim) and buffer wait (claim to start).",
        "s",
        [
            (f"sum(variant:distcomp_task_pickup_delay_seconds:p50_rate1m{{{s}}})", "pickup p50"),
            (f"sum(variant:distcomp_task_pickup_delay_seconds:p99_rate1m{{{s}}})", "pickup p99"),
            (quantile(0.99, "distcomp_task_queue_wait_seconds_bucket", s), "queue wait p99", {"exemplar": True}),
            (quantile(0.99, "distcomp_task_buffer_wait_seconds_bucket", s), "buffer wait p99", {"exemplar": True}),
        ],
        ratio=f"sum(variant:distcomp_task_pickup_delay_seconds:p99_rate1m{{{s}}})",
        ratio_desc="Pickup delay p99, B/A (lower is better).",
        th=LOWER_BETTER,
        samples=f"sum(increase(distcomp_task_pickup_delay_seconds_count{{{s}}}[{RI}]))",
    )

    b.row("Cost")
    ab_row(
        b,
        "CPU per task and idle Redis load",
        "Worker CPU seconds per finished task, and Redis commands per second per idle worker (workers with "
        "no busy slot): the price of polling.",
        "s",
        [
            (
                f"sum(rate(process_cpu_seconds_total{{{s}}}[{RI}])) / {finished}",
                "CPU s/task",
            ),
            (
                f"sum(sum by (instance) (rate(distcomp_redis_roundtrip_commands_sum{{{s}}}[{RI}])) "
                f"and on (instance) (max by (instance) (distcomp_slots_busy{{{s}}}) == 0)) / "
                f"count(max by (instance) (distcomp_slots_busy{{{s}}}) == 0)",
                "idle commands/s per worker",
            ),
        ],
        ratio_desc="CPU seconds per finished task, B/A (lower is better).",
        th=LOWER_BETTER,
    )

    b.row("Correctness (must match across variants)")
    ab_row(
        b,
        "Failures, retries and returns",
        "Failed and retried attempts, tasks returned to the queue (by reason) and stale reports per second. "
        "The optimizations change cost, not outcomes: these rates should match across variants.",
        TASKS_PER_S,
        [
            (
                f'sum by (outcome) (rate(distcomp_tasks_completed_total{{{s}, outcome=~"failed|retried"}}[{RI}]))',
                "{{outcome}}",
            ),
            (f"sum by (reason) (rate(distcomp_tasks_returned_total{{{s}}}[{RI}]))", "returned {{reason}}"),
            (f"sum(rate(distcomp_stale_reports_total{{{s}}}[{RI}]))", "stale reports"),
        ],
        ratio=(
            f'sum(rate(distcomp_tasks_completed_total{{{s}, outcome="failed"}}[{RI}])) / '
            f"sum(rate(distcomp_tasks_completed_total{{{s}}}[{RI}]))"
        ),
        ratio_desc="Failed share of attempts, B/A (should be close to 1).",
        th=MUST_MATCH,
    )

    variables = [
        query_var("job", "Worker job", "label_values(distcomp_worker_info, job)"),
        query_var(
            "a",
            "A (baseline)",
            'label_values(distcomp_worker_info{job=~"$job"}, variant)',
            multi=False,
            include_all=False,
            current={"selected": True, "text": "baseline", "value": "baseline"},
        ),
        query_var(
            "b",
            "B (candidate)",
            'label_values(distcomp_worker_info{job=~"$job"}, variant)',
            multi=False,
            include_all=False,
            current={"selected": True, "text": "optimized", "value": "optimized"},
        ),
        query_var(
            "op",
            "Operation",
            'label_values(distcomp_redis_roundtrip_seconds_count{job=~"$job"}, op)',
            current={"selected": True, "text": ["claim", "report"], "value": ["claim", "report"]},
        ),
    ]
    return dashboard(
        "distcomp-ab",
        "distcomp / A/B compare",
        "Two worker variants side by side (A left, B right, B/A ratio beside them). Ratio thresholds sit "
        "at the proposal's claims: throughput green at >= 1.3 (pipelining +30-50 %, adaptive polling "
        "+20-30 %), costs green at <= 0.77. This is the live view; the verdict is `distcomp bench`, which "
        "interleaves the variants against one Redis and repeats (DESIGN.md §7).",
        b,
        variables,
    )


# --------------------------------------------------------------------------- board 3: worker internals


def worker_internals() -> dict:
    b = Board()
    i = 'job=~"$job", instance=~"$instance"'
    iop = i + ', op=~"$op"'

    b.row("Redis round trips")
    b.add(
        heatmap(
            "Round-trip latency ($op)",
            "Distribution of this instance's Redis round trips for the selected operation, one panel per "
            "operation. Exemplars open the receive/settle span.",
            "distcomp_redis_roundtrip_seconds_bucket",
            i + ', op=~"$op"',
        )
        | {"repeat": "op", "repeatDirection": "h", "maxPerRow": 3},
        w=8,
    )
    b.add(
        timeseries(
            "Round-trip p50 / p99 by operation",
            "Round-trip latency quantiles by operation over the rate interval; exemplars link to traces.",
            "s",
            targets(
                (quantile(0.5, "distcomp_redis_roundtrip_seconds_bucket", iop, "op"), "p50 {{op}}", {"exemplar": True}),
                (
                    quantile(0.99, "distcomp_redis_roundtrip_seconds_bucket", iop, "op"),
                    "p99 {{op}}",
                    {"exemplar": True},
                ),
            ),
            min_=0,
        ),
        w=12,
    )
    b.add(
        timeseries(
            "Commands per round trip",
            "Mean Redis commands per round trip by operation (1 without pipelining).",
            "short",
            targets(
                (
                    f"sum by (op) (rate(distcomp_redis_roundtrip_commands_sum{{{iop}}}[{RI}])) / "
                    f"sum by (op) (rate(distcomp_redis_roundtrip_commands_count{{{iop}}}[{RI}]))",
                    "{{op}}",
                )
            ),
            min_=0,
        ),
        w=6,
    )
    b.add(
        timeseries(
            "Redis errors",
            "Redis errors per second by operation and kind (connection, timeout, response, script). "
            "Reconnect waits show on the sleep panels as reason redis_down.",
            "suffix: errors/s",
            targets((f"sum by (op, error) (rate(distcomp_redis_errors_total{{{i}}}[{RI}]))", "{{op}} {{error}}")),
            min_=0,
        ),
        w=6,
    )

    b.row("Buffer, slots and polling")
    b.add(
        timeseries(
            "Buffer fill vs capacity",
            "Claimed-but-not-started tasks in the prefetch buffer, against its capacity (the prefetch flag).",
            "short",
            targets(
                (f"sum by (instance) (distcomp_buffer_tasks{{{i}}})", "buffered {{instance}}"),
                (f"sum by (instance) (distcomp_buffer_capacity_tasks{{{i}}})", "capacity {{instance}}"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Slots busy vs total",
            "Running tasks against the slot limit (concurrency).",
            "short",
            targets(
                (f"sum by (instance) (distcomp_slots_busy{{{i}}})", "busy {{instance}}"),
                (f"sum by (instance) (distcomp_slots{{{i}}})", "total {{instance}}"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Time asleep by reason",
            "Fraction of wall time spent sleeping or blocked between fetches, by reason (stacked).",
            "percentunit",
            targets((f"sum by (reason) (rate(distcomp_poll_sleep_seconds_sum{{{i}}}[{RI}]))", "{{reason}}")),
            stack=True,
            min_=0,
        ),
        w=8,
    )
    b.add(
        heatmap(
            "Sleep durations",
            "Distribution of sleeps and blocking waits between fetches.",
            "distcomp_poll_sleep_seconds_bucket",
            i,
            exemplar=False,
        ),
        w=12,
    )
    b.add(
        heatmap(
            "Buffer occupancy at take",
            "Tasks in the buffer each time a slot takes one; the bottom (le=0) band is starvation.",
            "distcomp_buffer_occupancy_tasks_bucket",
            i + ', event="take"',
            unit="short",
            exemplar=False,
        ),
        w=12,
    )

    b.row("Tasks")
    dur = "distcomp_task_duration_seconds_bucket"
    b.add(
        timeseries(
            "Task duration by type",
            "p50 and p99 of task run time by type over the rate interval; exemplars open the process span.",
            "s",
            targets(
                (quantile(0.5, dur, i, "type"), "p50 {{type}}", {"exemplar": True}),
                (quantile(0.99, dur, i, "type"), "p99 {{type}}", {"exemplar": True}),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Started and completed",
            "Tasks started by type and attempts ended by outcome, per second.",
            TASKS_PER_S,
            targets(
                (f"sum by (type) (rate(distcomp_tasks_started_total{{{i}}}[{RI}]))", "started {{type}}"),
                (f"sum by (outcome) (rate(distcomp_tasks_completed_total{{{i}}}[{RI}]))", "{{outcome}}"),
                (f"sum(rate(distcomp_tasks_claimed_total{{{i}}}[{RI}]))", "claimed"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Returned tasks and stale reports",
            "Tasks handed back to the queue by reason (sigterm, memory_pressure, restart, lease_lost, "
            "reconcile, shutdown) and reports rejected because the claim token no longer matched.",
            "short",
            targets(
                (f"sum by (reason) (increase(distcomp_tasks_returned_total{{{i}}}[{RI}]))", "returned {{reason}}"),
                (f"sum(increase(distcomp_stale_reports_total{{{i}}}[{RI}]))", "stale reports"),
            ),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "Seconds since last claim",
            "Time since the instance last claimed a task (distcomp_worker_last_claim_timestamp_seconds).",
            "s",
            targets(
                (f"time() - max by (instance) (distcomp_worker_last_claim_timestamp_seconds{{{i}}})", "{{instance}}")
            ),
            min_=0,
        ),
        w=8,
    )

    b.row("Process")
    b.add(
        timeseries(
            "Resident memory",
            "Resident set size of the worker process (tasks run in subprocesses and are not included).",
            "bytes",
            targets((f"max by (instance) (process_resident_memory_bytes{{{i}}})", "{{instance}}")),
            min_=0,
        ),
        w=8,
    )
    b.add(
        timeseries(
            "CPU",
            "CPU time used by the worker process per second (1 = one core).",
            "percentunit",
            targets((f"sum by (instance) (rate(process_cpu_seconds_total{{{i}}}[{RI}]))", "{{instance}}")),
            min_=0,
        ),
        w=8,
    )

    variables = [
        query_var("job", "Worker job", "label_values(distcomp_worker_info, job)"),
        query_var("variant", "Variant", 'label_values(distcomp_worker_info{job=~"$job"}, variant)'),
        query_var(
            "instance",
            "Instance",
            'label_values(distcomp_worker_info{job=~"$job", variant=~"$variant"}, instance)',
            multi=False,
            include_all=False,
        ),
        query_var(
            "op",
            "Operation",
            'label_values(distcomp_redis_roundtrip_seconds_count{job=~"$job", instance=~"$instance"}, op)',
            current={"selected": True, "text": ["claim", "report"], "value": ["claim", "report"]},
        ),
    ]
    return dashboard(
        "distcomp-worker-internals",
        "distcomp / Worker internals",
        "One worker process from the inside: Redis round trips, buffer, slots, sleeps, tasks, memory and CPU.",
        b,
        variables,
    )


BOARDS = {
    "overview.json": overview,
    "ab-compare.json": ab_compare,
    "worker-internals.json": worker_internals,
}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in BOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python tools/build_dashboards.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
