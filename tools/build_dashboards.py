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
    """One mark at each worker process's start time. `changes(process_start_time_seconds[1m])` missed
    real restarts: after a gap longer than the window the new value has nothing to change from. The
    series value is the start time itself, so Grafana places the mark there (value as time, in ms)."""
    return {
        "name": "Worker (re)starts",
        "datasource": DS,
        "enable": True,
        "iconColor": "rgba(255, 96, 96, 1)",
        "expr": 'max by (worker, variant) (process_start_time_seconds{job=~"$job"}) * 1000',
        "step": "15s",
        "titleFormat": "worker (re)start",
        "textFormat": "{{worker}} ({{variant}}) started",
        "useValueForTime": True,
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
                (f"sum(rate(distcomp_queue_tasks_claimed_total{{{E}}}[{RI}]))", "claimed"),
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
            "One row per registered worker: heartbeat age (from the exporter, by Redis time, kept until "
            "reaped), variant and flags (distcomp_worker_info), busy/total slots, finished tasks per second "
            "and whether its metrics endpoint answers (up).",
            "short",
            targets(
                (
                    f"max by ({by_worker}) (distcomp_worker_heartbeat_age_seconds{{{E}}})",  # Redis time at both ends
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
#
# Fair by construction: each variant works its own queue (key prefix) and `distcomp loadgen` fans the
# same stream out to every queue, so a variant's throughput is its own capacity, not the share it
# grabbed from a competitor. The board compares over the selected time range ($__range, instant
# queries), and a B/A number is shown only when it means something:
#   - each side has at least MIN_SAMPLES observations (tasks finished, round trips, pickups) in the range;
#   - capacity ratios (tasks/s per worker) also need both queues backlogged for BACKLOGGED_SHARE of
#     the range: a variant that keeps up with the offered load shows the load, not its capacity.
# Otherwise the stat shows a text ("too few samples", "not saturated"), never 0, +Inf or NaN: the
# query returns a sentinel value that a value mapping turns into that text.

MIN_SAMPLES = 100
BACKLOGGED_SHARE = 0.9
TOO_FEW, NOT_SATURATED, SATURATED, A_IS_ZERO = -1, -2, -3, -4  # sentinels (value mappings below)
COLOR_A, COLOR_B = "#5794F2", "#FF9830"  # fixed: A blue, B orange, on every overlaid panel

#: The proposal's claims: (title, candidate variant, low, high) gain in capacity over the reference.
#: The variant names are docker-compose.yml's (and `distcomp bench`'s, where all-on is `all`).
CLAIMS = (
    ("pipelining +30–50 %", "pipeline", 0.30, 0.50),
    ("adaptive polling +20–30 %", "adaptive", 0.20, 0.30),
    ("prefetching +20–40 %", "prefetch", 0.20, 0.40),
    ("overall +50–100 %", "optimized", 0.50, 1.00),
)

MUST_MATCH = thresholds(("red", None), ("green", 0.8), ("red", 1.25))
LOWER_BETTER = thresholds(("green", None), ("yellow", 0.77), ("red", 1.0))


def gain_thresholds(low: float) -> dict:
    """Red below 1 (a loss), yellow from 1 to the claim's low end, green at or above it."""
    return thresholds(("red", None), ("yellow", 1.0), ("green", round(1 + low, 4)))


def sentinel_mappings() -> list[dict]:
    texts = {
        TOO_FEW: f"too few samples (< {MIN_SAMPLES} per side in range)",
        NOT_SATURATED: "not saturated (a queue emptied: ramp the load past both capacities)",
        SATURATED: "saturated (a backlog makes latency the queue's length: compare at a load both keep up with)",
        A_IS_ZERO: "A is 0: no ratio (see B's value beside)",
    }
    return [
        {"type": "range", "options": {"from": v - 0.5, "to": v + 0.5, "result": {"text": t, "color": "text"}}}
        for v, t in texts.items()
    ]


def fill(template: str, v: str) -> str:
    """A PromQL template with {v} for the variant (str.format would trip on PromQL's braces)."""
    return template.replace("{v}", v)


def sel(v: str) -> str:
    return f'job=~"$job", variant="{v}"'


def over_range(metric: str, v: str, extra: str = "") -> str:
    """sum(increase(metric{variant=v}[$__range])): the count of events in the selected range."""
    return f"sum(increase({metric}{{{sel(v)}{extra}}}[$__range]))"


def finished(v: str) -> str:
    return over_range("distcomp_tasks_completed_total", v, ', outcome="finished"')


def workers(v: str) -> str:
    return f"count(distcomp_worker_info{{{sel(v)}}})"


def backlogged_share(v: str) -> str:
    """Share of the range during which the variant's queue(s) had tasks waiting (min over its queues).
    Worker series carry their queue as a target label (service discovery), the exporter's too."""
    todo = 'max by (queue) (distcomp_queue_tasks{job=~"$exporter_job", state="todo"})'
    return (
        f"min(avg_over_time(({todo} > bool 0)[$__range:]) "
        f"and on (queue) max by (queue) (distcomp_worker_info{{{sel(v)}}}))"
    )


def gated(ratio: str, samples: str, a: str, b: str, *, saturation: str = "", zero_a: bool = False) -> str:
    """ratio if both sides have >= MIN_SAMPLES (and, for capacity, both are backlogged), else a
    sentinel. saturation: "" (no condition), "need" (both backlogged) or "avoid" (neither).
    zero_a: the ratio is empty when A's value is 0 (written `A > 0`): say so instead."""
    enough = f"({fill(samples, a)} >= {MIN_SAMPLES}) and on () ({fill(samples, b)} >= {MIN_SAMPLES})"
    if zero_a:
        zero = f"(vector({A_IS_ZERO}) and on () {enough})"
        return f"(({ratio}) and on () {enough}) or on () {zero} or on () vector({TOO_FEW})"
    if saturation == "need":
        cond = f"({backlogged_share(a)} >= {BACKLOGGED_SHARE}) and on () ({backlogged_share(b)} >= {BACKLOGGED_SHARE})"
        miss = NOT_SATURATED
    elif saturation == "avoid":
        low = round(1 - BACKLOGGED_SHARE, 4)
        cond = f"({backlogged_share(a)} < {low}) and on () ({backlogged_share(b)} < {low})"
        miss = SATURATED
    else:
        return f"(({ratio}) and on () {enough}) or on () vector({TOO_FEW})"
    return (
        f"(({ratio}) and on () {enough} and on () {cond})"
        f" or on () (vector({miss}) and on () {enough}) or on () vector({TOO_FEW})"
    )


def capacity(v: str) -> str:
    """Tasks finished per second per worker over the range."""
    return f"({finished(v)} / {workers(v)})"


def capacity_ratio(a: str, b: str) -> str:
    return gated(f"{capacity(b)} / {capacity(a)}", finished("{v}"), a, b, saturation="need")


def ratio_stat(title: str, desc: str, expr: str, th: dict, *, w: int = 4) -> dict:
    s = stat(title, desc, "none", targets((expr, "B/A")), th=th, decimals=2, color_mode="background")
    s["fieldConfig"]["defaults"]["mappings"] = sentinel_mappings()
    s["fieldConfig"]["defaults"]["noValue"] = "no data"
    return s


def overlaid(title: str, desc: str, unit: str, exprs: list[tuple[str, str]], *, exemplar: bool = False) -> dict:
    """A and B in one panel: each (template with {v}, legend) once per side; refIds A* and B* get
    the fixed colours, so A is always blue and B always orange."""
    specs = []
    for side in ("a", "b"):
        for e, legend in exprs:
            specs.append(
                (fill(e, f"${side}"), f"{side.upper()} ${side}: {legend}", {"exemplar": True} if exemplar else {})
            )
    tg = targets(*specs)
    n = len(exprs)
    for i, t in enumerate(tg):
        t["refId"] = f"{'AB'[i // n]}{i % n}"
    panel = timeseries(title, desc, unit, tg, min_=0)
    panel["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byFrameRefID", "options": f"{side}{i}"},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]
            + ([{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}] if i else []),
        }
        for side, color in (("A", COLOR_A), ("B", COLOR_B))
        for i in range(n)
    ]
    return panel


def counts_stat(title: str, desc: str, samples: str) -> dict:
    return stat(title, desc, "short", targets((fill(samples, "$a"), "A"), (fill(samples, "$b"), "B")))


def ab_compare() -> dict:
    b = Board()
    sop = 'job=~"$job", variant="{v}", op=~"$op"'
    rt_bucket = "distcomp_redis_roundtrip_seconds_bucket"
    fin = finished("{v}")
    not_enough = f"Shown only with >= {MIN_SAMPLES} samples on each side in the range, else a text, never 0/Inf/NaN."

    b.row("Verdicts over the selected range (one per claim of the proposal)")
    for title, variant, low, high in CLAIMS:
        b.add(
            ratio_stat(
                f"{title}: {variant} / $a",
                f"Capacity gain of variant `{variant}` over `$a` (the reference; `distcomp bench` measures the "
                f"claims against `baseline-nosleep`): tasks finished per second per worker over the range, "
                f"B/A. Green from {1 + low:g} (the claim's low end, +{low * 100:.0f} %; it claims up to "
                f"+{high * 100:.0f} %), yellow from 1, red below. Capacity needs a backlog: shown only when both "
                f"queues had tasks waiting for {BACKLOGGED_SHARE * 100:.0f} % of the range and each side "
                f"finished >= {MIN_SAMPLES} tasks.",
                capacity_ratio("$a", variant),
                gain_thresholds(low),
                w=6,
            ),
            w=6,
            h=5,
        )

    b.row("Throughput (capacity needs a backlog on both queues)")
    b.add(
        overlaid(
            "Tasks finished per second per worker — A and B",
            "Finished tasks per second per worker of each variant, A blue, B orange. Each variant works its own "
            "queue fed the same stream (`distcomp loadgen --prefix a,b,...`): below capacity both show the "
            "offered load; above it, each shows its capacity.",
            TASKS_PER_S,
            [
                (
                    f'sum(rate(distcomp_tasks_completed_total{{{sel("{v}")}, outcome="finished"}}[{RI}])) / '
                    f"count(distcomp_worker_info{{{sel('{v}')}}})",
                    "finished/s per worker",
                )
            ],  # fmt: skip
        ),
        w=14,
    )
    b.add(
        ratio_stat(
            "Capacity B/A",
            "Tasks finished per second per worker over the range, B/A (higher is better). Needs both queues "
            f"backlogged for {BACKLOGGED_SHARE * 100:.0f} % of the range. " + not_enough,
            capacity_ratio("$a", "$b"),
            gain_thresholds(0.30),
        ),
        w=4,
    )
    b.add(
        stat(
            "Backlogged share of range",
            "Share of the selected range during which the variant's queue had tasks waiting (exporter, "
            "distcomp_queue_tasks{state=todo}). Near 1: the variant runs at capacity. Near 0: it keeps up.",
            "percentunit",
            targets((backlogged_share("$a"), "A"), (backlogged_share("$b"), "B")),
            decimals=0,
        ),
        w=3,
    )
    b.add(counts_stat("Tasks finished in range", "Tasks finished by each side in the selected range.", fin), w=3)

    b.row("Protocol cost")

    def per_task(metric: str, title: str, about: str, unit: str, legend: str, stat_title: str, stat_about: str) -> None:
        """A per-finished-task cost: A and B overlaid over time, and their B/A over the range (gated)."""
        b.add(
            overlaid(
                title,
                about,
                unit,
                [
                    (
                        f"sum(rate({metric}{{{sel('{v}')}}}[{RI}])) / "
                        f'sum(rate(distcomp_tasks_completed_total{{{sel("{v}")}, outcome="finished"}}[{RI}]))',
                        legend,
                    )
                ],  # fmt: skip
            ),
            w=14,
        )
        cost = over_range(metric, "{v}")
        b.add(
            ratio_stat(
                stat_title,
                stat_about + " " + not_enough,
                gated(
                    f"({fill(cost, '$b')} / {fill(fin, '$b')}) / ({fill(cost, '$a')} / {fill(fin, '$a')})",
                    fin,
                    "$a",
                    "$b",
                ),
                LOWER_BETTER,
            ),
            w=4,
        )

    per_task(
        "distcomp_redis_roundtrip_seconds_count",
        "Redis round trips per finished task — A and B",
        "Redis round trips per finished task (all operations), A blue, B orange. Pipelining makes a claim "
        "and a report one round trip; prefetch claims several tasks per round trip.",
        "short",
        "round trips/task",
        "Round trips per task B/A",
        "Round trips per finished task over the range, B/A (lower is better).",
    )
    b.add(
        counts_stat(
            "Redis commands per task",
            "Redis commands sent per finished task over the range (a script call counts once).",
            f"sum(increase(distcomp_redis_roundtrip_commands_sum{{{sel('{v}')}}}[$__range])) / {fin}",
        ),
        w=6,
    )

    b.row("Round-trip latency")
    b.add(
        overlaid(
            "Round-trip p99 of $op — A and B",
            "p99 Redis round-trip time of the selected operations (solid) and p50 (dashed), A blue, B orange.",
            "s",
            [(quantile(0.99, rt_bucket, sop), "p99"), (quantile(0.5, rt_bucket, sop), "p50")],
            exemplar=True,
        ),
        w=14,
    )
    rt_n = f"sum(increase(distcomp_redis_roundtrip_seconds_count{{{sop}}}[$__range]))"
    p99_range = f"histogram_quantile(0.99, sum by (le) (increase({rt_bucket}{{{sop}}}[$__range])))"
    b.add(
        ratio_stat(
            "Round-trip p99 B/A",
            "p99 round trip of the selected operations over the range, B/A (lower is better). " + not_enough,
            gated(f"({fill(p99_range, '$b')}) / ({fill(p99_range, '$a')})", rt_n, "$a", "$b"),
            LOWER_BETTER,
        ),
        w=4,
    )
    b.add(counts_stat("Round trips in range", "Round trips of the selected operations behind the p99.", rt_n), w=6)
    for side in ("a", "b"):
        b.add(
            heatmap(
                f"Round-trip latency — {side.upper()}: ${side}",
                "Distribution of Redis round-trip times of the selected operations. Exemplars link to the "
                "receive/settle span of a sampled claim or report.",
                rt_bucket,
                sop.replace("{v}", f"${side}"),
            ),
            w=12,
        )

    b.row("Prefetch buffer and polling")
    take = ', event="take"'
    starved = (
        f'sum(rate(distcomp_buffer_occupancy_tasks_bucket{{{sel("{v}")}{take}, le=~"0|0.0"}}[{RI}])) / '
        f"sum(rate(distcomp_buffer_occupancy_tasks_count{{{sel('{v}')}{take}}}[{RI}]))"
    )
    b.add(
        overlaid(
            "Starved takes and time asleep — A and B",
            "Share of takes that found the prefetch buffer empty (solid: a free slot had to wait for a claim) "
            "and share of wall time the fetch loop slept or blocked, per worker (dashed), A blue, B orange.",
            "percentunit",
            [
                (starved, "starved share"),
                (
                    f"sum(rate(distcomp_poll_sleep_seconds_sum{{{sel('{v}')}}}[{RI}])) / {workers('{v}')}",
                    "asleep share",
                ),
            ],  # fmt: skip
        ),
        w=14,
    )
    takes = over_range("distcomp_buffer_occupancy_tasks_count", "{v}", take)
    starved_range = (
        f'sum(increase(distcomp_buffer_occupancy_tasks_bucket{{{sel("{v}")}{take}, le=~"0|0.0"}}[$__range])) / {takes}'
    )
    b.add(
        ratio_stat(
            "Starved share B/A",
            "Share of takes that found the buffer empty over the range, B/A (lower is better). B never "
            "starving shows 0, the truth; A never starving leaves no ratio, and the panel says so. " + not_enough,
            gated(f"({fill(starved_range, '$b')}) / ({fill(starved_range, '$a')} > 0)", takes, "$a", "$b", zero_a=True),
            LOWER_BETTER,
        ),
        w=4,
    )
    for side in ("a", "b"):
        b.add(
            heatmap(
                f"Sleep durations — {side.upper()}: ${side}",
                "Distribution of the sleeps and blocking waits between fetches (all reasons).",
                "distcomp_poll_sleep_seconds_bucket",
                sel(f"${side}"),
                exemplar=False,
            ),
            w=12,
        )

    b.row("Latency to start (compare below capacity)")
    pick = "distcomp_task_pickup_delay_seconds_bucket"
    b.add(
        overlaid(
            "Pickup delay p50 / p99 — A and B",
            "Submit-to-start delay p50 (solid) and p99 (dashed), A blue, B orange. At saturation the delay is "
            "the backlog's length, not the protocol's: compare pickup at a load both variants keep up with.",
            "s",
            [(quantile(0.5, pick, sel("{v}")), "p50"), (quantile(0.99, pick, sel("{v}")), "p99")],
        ),
        w=14,
    )
    picks = over_range("distcomp_task_pickup_delay_seconds_count", "{v}")
    p50_range = f"histogram_quantile(0.5, sum by (le) (increase({pick}{{{sel('{v}')}}}[$__range])))"
    b.add(
        ratio_stat(
            "Pickup p50 B/A",
            "Median submit-to-start delay over the range, B/A (lower is better). Shown only when neither queue "
            f"was backlogged for more than {(1 - BACKLOGGED_SHARE) * 100:.0f} % of the range (a backlog makes it "
            "the queue's length; a p99 would sit in the 10 s-30 s bucket and be interpolated). " + not_enough,
            gated(f"({fill(p50_range, '$b')}) / ({fill(p50_range, '$a')})", picks, "$a", "$b", saturation="avoid"),
            LOWER_BETTER,
        ),
        w=4,
    )
    b.add(
        counts_stat("Pickups in range", "Tasks started in the range: the observations behind the pickup delay.", picks),
        w=6,
    )

    b.row("Cost")
    per_task(
        "process_cpu_seconds_total",
        "Worker CPU per finished task — A and B",
        "Worker process CPU seconds per finished task, A blue, B orange.",
        "s",
        "CPU s/task",
        "CPU per task B/A",
        "Worker CPU seconds per finished task over the range, B/A (lower is better).",
    )
    b.add(
        counts_stat(
            "Idle Redis commands/s per worker",
            "Redis commands per second per worker that finished no task over the rate interval: the price "
            "of polling when there is no work (0 when no worker of a side was idle).",
            f"(sum(sum by (instance) (rate(distcomp_redis_roundtrip_commands_sum{{{sel('{v}')}}}[{RI}])) "
            f"and on (instance) (sum by (instance) (rate(distcomp_tasks_completed_total{{{sel('{v}')}}}[{RI}])) == 0))"
            " or vector(0)) / "
            f"{workers('{v}')}",
        ),
        w=6,
    )

    b.row("Outcomes (each variant's queue got the same tasks)")
    attempts = over_range("distcomp_tasks_completed_total", "{v}")
    failed = over_range("distcomp_tasks_completed_total", "{v}", ', outcome="failed"')
    b.add(
        overlaid(
            "Failed for good and returned — A and B",
            "Attempts that failed for good (solid) and tasks returned to the queue unfinished (dashed), per "
            "second, A blue, B orange. Both queues got the same tasks, so failures follow the tasks; they differ "
            "when the variants have different numbers of workers, because a failed attempt is retried only on "
            "another worker, never on the one where it failed: fewer workers, sooner failed for good. "
            "Returns follow restarts, drains and lost leases.",
            TASKS_PER_S,
            [
                (f'sum(rate(distcomp_tasks_completed_total{{{sel("{v}")}, outcome="failed"}}[{RI}]))', "failed"),
                (f"sum(rate(distcomp_tasks_returned_total{{{sel('{v}')}}}[{RI}]))", "returned"),
            ],
        ),
        w=14,
    )
    b.add(
        ratio_stat(
            "Failed share B/A",
            "Share of attempts that failed for good over the range, B/A: close to 1 with equal worker counts "
            "(see the panel's description for why it moves otherwise). " + not_enough,
            gated(
                f"({fill(failed, '$b')} / {fill(attempts, '$b')}) / ({fill(failed, '$a')} / "
                f"{fill(attempts, '$a')} > 0)",
                attempts,
                "$a",
                "$b",
                zero_a=True,
            ),  # fmt: skip
            MUST_MATCH,
        ),
        w=4,
    )
    b.add(counts_stat("Attempts in range", "Task attempts ended by each side in the selected range.", attempts), w=6)

    variant_values = 'label_values(distcomp_worker_info{job=~"$job"}, variant)'
    variables = [
        query_var("job", "Worker job", "label_values(distcomp_worker_info, job)"),
        query_var("exporter_job", "Exporter job", "label_values(distcomp_build_info, job)"),
        query_var(
            "a",
            "A (reference)",
            variant_values,
            multi=False,
            include_all=False,
            current={"selected": True, "text": "baseline-nosleep", "value": "baseline-nosleep"},
        ),  # fmt: skip
        query_var(
            "b",
            "B (candidate)",
            variant_values,
            multi=False,
            include_all=False,
            current={"selected": True, "text": "optimized", "value": "optimized"},
        ),  # fmt: skip
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
        "Two worker variants, each on its own queue fed the same stream by `distcomp loadgen --prefix a,b,...`, "
        "compared over the selected time range. The top row gives one verdict per claim of the proposal "
        "(pipelining +30-50 %, adaptive polling +20-30 %, prefetching +20-40 %, overall +50-100 %) against "
        f"the reference A; a B/A number appears only with >= {MIN_SAMPLES} samples per side (and, for capacity, "
        "both queues backlogged), otherwise the panel says why. Ramp the load past both capacities for the "
        "throughput verdicts, keep it below both for pickup latency.",
        b,
        variables,
        time_from="now-15m",
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
            "Redis errors",
            "Redis errors per second by operation and kind (connection, timeout, response, script). "
            "Reconnect waits show on the sleep panels as reason redis_down.",
            "suffix: errors/s",
            targets((f"sum by (op, error) (rate(distcomp_redis_errors_total{{{i}}}[{RI}]))", "{{op}} {{error}}")),
            min_=0,
        ),
        w=12,
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
