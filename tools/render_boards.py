#!/usr/bin/env python3
"""Render a Grafana board's panels to a PNG from real Prometheus query results, with matplotlib.

No Grafana server exists where this project is built and tested, so the screenshots in
docs/MONITORING.md are made this way: every panel of the board JSON is laid out on Grafana's
24-column grid, its queries (variables substituted, ``$__range`` = the rendered range,
``$__rate_interval`` = ``--rate-interval``) are run against a live Prometheus, time series are drawn
as lines (the panel's fixed colours), stats as the number or the text the board's value mappings give,
coloured by its thresholds, and heatmaps as bucket increases over time. It is an approximation of what
Grafana draws, from the same queries and the same data.

    python tools/render_boards.py --prometheus http://127.0.0.1:9090 --board grafana/dashboards/ab-compare.json \\
        --var a=baseline-nosleep --var b=pipeline --minutes 5 --out docs/ab-board.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROW_PX = 30  # one grid row, in figure pixels at 100 dpi
GRID_W = 24


def http_query(base: str, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    body = urllib.parse.urlencode(params).encode()
    with urllib.request.urlopen(f"{base}/api/v1/{path}", data=body, timeout=30) as resp:
        res = json.loads(resp.read())
    if res.get("status") != "success":
        raise RuntimeError(f"{params.get('query')}: {res.get('error')}")
    return list(res["data"]["result"])


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def stat_text(value: float, panel: dict[str, Any]) -> tuple[str, str]:
    """(text, background colour) as the board's mappings and thresholds give them."""
    defaults = panel["fieldConfig"]["defaults"]
    for mapping in defaults.get("mappings", []):
        opts = mapping.get("options", {})
        if mapping.get("type") == "range" and opts["from"] <= value <= opts["to"]:
            return opts["result"]["text"], "#555555"
    colour = "#3274D9"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            colour = {"green": "#56A64B", "yellow": "#E0B400", "red": "#E02F44", "blue": "#3274D9"}.get(
                step["color"], step["color"]
            )
    unit = defaults.get("unit", "")
    if unit == "percentunit":
        return f"{value * 100:.0f} %", colour
    decimals = defaults.get("decimals")
    text = f"{value:.{decimals}f}" if decimals is not None else f"{value:.3g}"
    return text, colour


def draw_stat(ax: Any, p: dict[str, Any], q: Query) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    texts, colour = [], "#3274D9"
    for t in p["targets"]:
        for s in q.instant(t["expr"]):
            text, colour = stat_text(float(s["value"][1]), p)
            texts.append(f"{t['legendFormat']}: {text}" if len(p["targets"]) > 1 else text)
    if not texts:
        texts, colour = ["no data"], "#555555"
    ax.set_facecolor(colour if p["options"].get("colorMode") == "background" else "#181b1f")
    size = 16 if max(len(x) for x in texts) < 14 else 8
    ax.text(0.5, 0.45, "\n".join(texts), ha="center", va="center", fontsize=size, color="white", wrap=True)


def draw_timeseries(ax: Any, p: dict[str, Any], q: Query) -> None:
    colours = {
        o["matcher"]["options"]: prop["value"]["fixedColor"]
        for o in p["fieldConfig"].get("overrides", [])
        for prop in o["properties"]
        if prop["id"] == "color"
    }
    ax.set_facecolor("#181b1f")
    for t in p["targets"]:
        for s in q.range(t["expr"]):
            xs = [float(v[0]) - q.end for v in s["values"]]
            ys = [y if math.isfinite(y) else float("nan") for y in (float(v[1]) for v in s["values"])]
            dashed = t["refId"] in colours and not t["refId"].endswith("0")  # the overlaid panels' 2nd series
            label = substitute(legend(t["legendFormat"], s["metric"]), q.values)
            ax.plot(xs, ys, label=label, color=colours.get(t["refId"]), linestyle="--" if dashed else "-", lw=1.2)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=7, colors="#cccccc")
    ax.set_xlabel("seconds before the end", fontsize=7, color="#cccccc")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")


def draw_heatmap(ax: Any, p: dict[str, Any], q: Query) -> None:
    rows = sorted(q.range(p["targets"][0]["expr"]), key=lambda s: float(s["metric"].get("le", "inf")))
    if rows:
        grid = [[float(v[1]) for v in s["values"]] for s in rows]
        width = min(len(r) for r in grid)
        ax.imshow([r[:width] for r in grid], aspect="auto", origin="lower", cmap="Oranges")
        ax.set_yticks(range(len(rows)), [s["metric"].get("le", "") for s in rows], fontsize=5)
    ax.set_xticks([])


class Query:
    """The board's queries against one Prometheus, variables substituted, over one range."""

    def __init__(self, base: str, values: dict[str, str], start: float, end: float) -> None:
        self.base, self.values, self.start, self.end = base, values, start, end
        self.step = max(1.0, (end - start) / 200)

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return http_query(self.base, "query", {"query": substitute(expr, self.values), "time": str(self.end)})

    def range(self, expr: str) -> list[dict[str, Any]]:
        params = {"query": substitute(expr, self.values), "start": str(self.start), "end": str(self.end)}
        return http_query(self.base, "query_range", {**params, "step": str(self.step)})


DRAW = {"stat": draw_stat, "timeseries": draw_timeseries, "heatmap": draw_heatmap}


def render(base: str, board: dict[str, Any], values: dict[str, str], start: float, end: float, out: Path) -> int:
    """Draw every panel of `board` into `out`; returns the number of panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = Query(base, values, start, end)
    panels = board["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, height * ROW_PX / 100 + 0.6), dpi=100)
    fig.suptitle(
        f"{board['title']}  ({substitute('A = $a, B = $b', values)}; {values['__range']})", fontsize=14, color="#d8d9da"
    )
    drawn = 0
    for p in panels:
        g = p["gridPos"]
        top = 1 - (g["y"] / height) * 0.97 - 0.02
        title = substitute(p.get("title", ""), values)
        if p["type"] == "row":
            fig.text(0.005, top - 0.005, title, fontsize=11, weight="bold", color="#d8d9da")
            continue
        h = g["h"] / height * 0.97
        ax = fig.add_axes((g["x"] / GRID_W + 0.004, top - h + 0.012, g["w"] / GRID_W - 0.008, h - 0.03))
        ax.set_title(title, fontsize=8, loc="left", color="#d8d9da")
        if p["type"] in DRAW:
            DRAW[p["type"]](ax, p, q)
            drawn += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="#111217")
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--board", type=Path, required=True, help="a board JSON from grafana/dashboards/")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a board variable")
    parser.add_argument("--minutes", type=float, default=15, help="the range rendered, ending now")
    parser.add_argument("--rate-interval", default="20s", help="$__rate_interval (Grafana: 4 x scrape interval)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    end = time.time()
    start = end - args.minutes * 60
    values = {"job": "distcomp-worker", "exporter_job": "distcomp-exporter", "op": "claim|report", "queue": ".+",
              "variant": ".+", "instance": ".+", "__rate_interval": args.rate_interval, "__interval": "5s",
              "__range": f"{round(end - start)}s"}  # fmt: skip
    values.update(dict(v.split("=", 1) for v in args.var))
    n = render(args.prometheus, json.loads(args.board.read_text()), values, start, end, args.out)
    print(f"wrote {args.out} ({n} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
