"""The console's reads: pages of tasks by SCAN cursor, jobs, the problems (one task's record is
`queue.views.task_view`, shared with `distcomp task`).

Read-only, through `Queue`'s read methods and `queue.views`. A page never walks a whole hash: it
follows a SCAN cursor (`Queue.scan_state`) until it has `PAGE` rows, the cursor ends or its time
budget is spent, and hands back the cursor to continue from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from distcomp_obs.queue import Queue, views
from distcomp_obs.records import DoneRecord, Holding, meta_job, parse_meta, unrunnable
from distcomp_obs.runprogress import format_duration
from distcomp_obs.task import priority_of

PAGE = 50
STATES = ("todo", "in_progress", "finished", "failed", "cancelled")
#: what each state is called on the pages
WORDS = {"todo": "waiting", "in_progress": "running", "finished": "finished", "failed": "failed",
         "cancelled": "cancelled", "unknown": "lost (in no state)"}  # fmt: skip
#: HSCAN COUNT when the failed reasons are searched client-side
VALUE_SCAN_COUNT = 500
#: a search page stops scanning after this long and hands back its cursor: pages answer in < 200 ms
SEARCH_BUDGET_S = 0.15
BRIEF = 160
#: a job page lists at most this many of its failed tasks
JOB_FAILURES = 100


@dataclass
class Row:
    id: int | None
    line: str
    state: str
    detail: str

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "line": self.line, "state": self.state, "detail": self.detail}


@dataclass
class Page:
    rows: list[Row]
    cursor: str | None  # where the next page starts; None: the scan is complete
    scanned: int = 0


def brief(text: str, limit: int = BRIEF) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def glob_pattern(text: str) -> str:
    """`*TEXT*` as a Redis glob matching TEXT anywhere, case-insensitively, its specials escaped."""
    out = []
    for ch in text:
        if ch.isalpha() and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        elif ch in "*?[]\\^":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "*" + "".join(out) + "*"


def _metas(q: Queue, lines: list[str]) -> list[tuple[int, str] | None]:
    """Each line's (submit seq: its id, job), None if forgotten meanwhile (`Queue.metas`)."""
    metas = q.metas(lines)
    return [(parse_meta(metas[line])[0], meta_job(metas[line])) if line in metas else None for line in lines]


def _ids(q: Queue, lines: list[str]) -> list[int | None]:
    """Each line's submit seq (its id): one HMGET for the page."""
    return [None if m is None else m[0] for m in _metas(q, lines)]


def _detail(state: str, value: str) -> str:
    if state == "in_progress":
        held = Holding.parse(value)
        return f"{held.worker} ({'running' if held.started else 'buffered'})"
    if state in ("finished", "failed", "cancelled"):
        return brief(DoneRecord.parse(value).body)
    return ""


def page_tasks(q: Queue, state: str, text: str = "", cursor: str = "0", limit: int = PAGE,
               budget_s: float = SEARCH_BUDGET_S, job: str = "") -> Page:  # fmt: skip
    """One page of a state's tasks, optionally those whose line (or, failed, reason) holds `text`,
    and those of one `job` (their jobs by HMGET, with their ids)."""
    if state not in STATES:
        raise KeyError(state)
    deadline = time.monotonic() + budget_s
    found: list[tuple[str, str, int | None]] = []
    scanned = 0
    pos = int(cursor or 0)
    value_search = bool(text) and state == "failed"
    needle = text.lower()
    match = glob_pattern(text) if text and not value_search else None
    count = VALUE_SCAN_COUNT if text or job else limit
    while True:
        pos, batch = q.scan_state(state, pos, match, count)
        if state == "todo":
            batch = [(line, f"priority {priority_of(line)}") for line, _ in batch if needle in line.lower()]
        else:
            if value_search:
                batch = [(k, v) for k, v in batch if needle in k.lower() or needle in v.lower()]
            batch = [(k, _detail(state, v)) for k, v in batch]
        metas = _metas(q, [line for line, _ in batch])
        found += [(line, detail, meta[0] if meta else None) for (line, detail), meta in zip(batch, metas, strict=True)
                  if not job or (meta is not None and meta[1] == job)]  # fmt: skip
        scanned += 1
        if pos == 0 or len(found) >= limit or time.monotonic() > deadline:
            break
    found.sort(key=lambda row: row[0])
    return Page([Row(i, line, state, detail) for line, detail, i in found], None if pos == 0 else str(pos), scanned)


def overview(q: Queue) -> dict[str, Any]:
    """Counts, workers (with the tasks Redis says each holds) and the problems, in a few round trips
    (`Queue.snapshot` plus one walk of the claimed tasks, bounded by the workers' buffers)."""
    snap = q.snapshot()
    counts = snap.counts
    holdings = q.holdings()
    held: dict[str, int] = {}
    for holding in holdings.values():
        held[holding.worker] = held.get(holding.worker, 0) + 1
    workers = {name: {**info, "held": held.get(name, 0)} for name, info in snap.workers.items()}
    return {
        "counts": counts,
        "stats": snap.stats,
        "oldest_age_s": snap.oldest_age_s,
        "server_time_s": snap.server_time_s,
        "workers": workers,
        "problems": problems(snap.classes, workers, holdings, counts),
    }


def problems(classes: dict[str, int], workers: dict[str, dict[str, Any]], holdings: dict[str, Holding],
             counts: dict[str, int]) -> list[dict[str, Any]]:  # fmt: skip
    """What needs an operator: tasks no live worker can take, tasks held by no live worker
    (stranded: the reaper returns them once their holder's lease is gone), dead workers holding tasks."""
    out: list[dict[str, Any]] = []
    for cls, (n, why) in sorted(unrunnable(classes, workers).items()):
        text = f"{n} waiting task(s) of class {cls}: {why}"
        out.append({"kind": "unrunnable", "class": cls, "tasks": n, "text": text})
    if counts.get("todo") and not any(w.get("live") for w in workers.values()):
        text = f"{counts['todo']} waiting task(s) and no live worker"
        out.append({"kind": "no_live_worker", "tasks": counts["todo"], "text": text})
    live = {name for name, w in workers.items() if w.get("live")}
    stranded = sorted(task for task, h in holdings.items() if h.worker not in live)
    if stranded:
        text = f"{len(stranded)} claimed task(s) held by no live worker (the reaper returns them)"
        out.append({"kind": "stranded", "tasks": len(stranded), "examples": stranded[:5], "text": text})
    for name, w in sorted(workers.items()):
        if not w.get("live") and w.get("held"):
            out.append({"kind": "dead_worker", "worker": name, "tasks": w["held"],
                        "text": f"dead worker {name} holds {w['held']} task(s)"})  # fmt: skip
    return out


def progress(counts: dict[str, int], rate_per_s: float | None = None) -> dict[str, Any]:
    """A job's counters plus `done` (finished + failed + cancelled), `percent` of those submitted,
    and its ETA (`views.eta`): `remaining`, `rate_per_s`, `eta_s`, and `eta` in words."""
    done = counts["finished"] + counts["failed"] + counts["cancelled"]
    pct = 100.0 * done / counts["submitted"] if counts["submitted"] else 100.0
    eta = views.eta(counts, rate_per_s)
    return {**counts, "done": done, "percent": round(pct, 1), **eta, "eta": eta_words(eta["eta_s"])}


def eta_words(eta_s: float | None) -> str:
    if eta_s is None:
        return "unknown"
    return "done" if eta_s == 0 else format_duration(eta_s)


def job_list(q: Queue) -> dict[str, dict[str, Any]]:
    """Every job's counters (one HGETALL of the per-job counters) and ETA (one bounded read of
    the recent terminal transitions, only while a job has tasks left), by name."""
    jobs = views.jobs(q)
    rates = views.recent_rates(q) if any(c["pending"] for c in jobs.values()) else {}
    return {name: progress(c, rates.get(name)) for name, c in sorted(jobs.items())}


def job_failures(q: Queue, name: str, expected: int, limit: int = JOB_FAILURES) -> list[Row]:
    """Up to `limit` of a job's failed tasks, with their reasons: an HSCAN of the failed tasks that
    stops once it has found as many as the job's counter says it has (or `limit`)."""
    want = min(expected, limit)
    found: list[tuple[str, str]] = []
    pos = 0
    while want:
        pos, pairs = q.scan_state("failed", pos, None, VALUE_SCAN_COUNT)
        batch = dict(pairs)
        jobs = views.jobs_of(q, list(batch))
        found += [(t, DoneRecord.parse(v).body) for t, v in batch.items() if jobs.get(t) == name]
        if pos == 0 or len(found) >= want:
            break
    found = sorted(found)[:limit]
    ids = _ids(q, [line for line, _ in found])
    return [Row(i, line, "failed", reason) for (line, reason), i in zip(found, ids, strict=True)]


def job_detail(q: Queue, name: str) -> dict[str, Any] | None:
    """One job: its counters in O(1), and its failed tasks; None if no task was ever submitted to it."""
    counts = views.job(q, name)
    if counts is None:
        return None
    rate = views.recent_rates(q).get(name) if counts["pending"] else None
    return {"job": name, **progress(counts, rate), "failures": job_failures(q, name, counts["failed"])}


def select_all(q: Queue, state: str, text: str = "", job: str = "") -> list[str]:
    """Every task of a state (whose line, or failed reason, holds `text`; of `job`): the page scan
    followed to its end, for a bulk action."""
    lines: list[str] = []
    cursor: str | None = "0"
    while cursor is not None:
        page = page_tasks(q, state, text, cursor, limit=1000, budget_s=1.0, job=job)
        lines += [row.line for row in page.rows]
        cursor = page.cursor
    return lines
