"""`distcomp loadgen`: a steady, mixed stream of unique tasks for dashboards and A/B demos.

Submits at `--rate` tasks/s (batched per 100 ms tick, so the rate holds without one round trip
per task) for `--duration` seconds (0 = until SIGTERM/SIGINT). The mix is quick builtin noops,
short builtin sleeps, a few failing tasks and a few shell tasks; every line carries a run tag
and a counter, because identical lines are one task.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from distcomp_obs.errors import ConfigError
from distcomp_obs.queue import Queue

KINDS = ("noop", "sleep", "fail", "shell")
DEFAULT_MIX = {"noop": 0.70, "sleep": 0.20, "fail": 0.03, "shell": 0.07}
TICK_S = 0.1


def parse_mix(text: str | None) -> dict[str, float]:
    """'noop=7,sleep=2,fail=0.5,shell=0.5' -> normalised shares (kinds left out get 0)."""
    if not text:
        return dict(DEFAULT_MIX)
    mix = dict.fromkeys(KINDS, 0.0)
    for part in text.split(","):
        kind, _, share = part.partition("=")
        kind = kind.strip()
        try:
            value = float(share)
        except ValueError:
            raise ConfigError("mix", text, "kind=share pairs, e.g. noop=7,sleep=2,fail=0.5,shell=0.5") from None
        if kind not in mix or value < 0:
            raise ConfigError("mix", text, f"shares >= 0 for kinds among {', '.join(KINDS)}")
        mix[kind] = value
    total = sum(mix.values())
    if total <= 0:
        raise ConfigError("mix", text, "at least one share > 0")
    return {k: v / total for k, v in mix.items()}


def make_line(kind: str, tag: str, i: int, rng: random.Random) -> str:
    prio = rng.choice((1, 1, 1, 2, 3))
    if kind == "sleep":
        return f"builtin:{prio}:0:0:sleep {rng.uniform(0.05, 2.0):.2f} lg-{tag}-{i}"
    if kind == "fail":
        return f"builtin:{prio}:0:0:fail loadgen lg-{tag}-{i}"
    if kind == "shell":
        return f"shell:{prio}:0:0:echo lg-{tag}-{i}"
    return f"builtin:{prio}:0:0:noop lg-{tag}-{i}"


def generate(
    q: Queue,
    rate: float,
    duration_s: float,
    mix: dict[str, float],
    stop: threading.Event,
    seed: int | None = None,
    submit: Callable[[Queue, list[str]], int] | None = None,
) -> dict[str, Any]:
    """Submit until duration_s (0: until stop). Returns counts per kind and the achieved rate."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    kinds, weights = list(mix), [mix[k] for k in mix]
    counts = dict.fromkeys(KINDS, 0)
    submitted = added = 0
    start = time.monotonic()
    send = submit or (lambda queue, lines: queue.submit(lines))
    while not stop.is_set():
        elapsed = time.monotonic() - start
        if duration_s and elapsed >= duration_s:
            break
        due = int(rate * (min(elapsed, duration_s) if duration_s else elapsed)) - submitted
        if due > 0:
            lines: list[str] = []
            for _ in range(due):
                kind = rng.choices(kinds, weights)[0]
                counts[kind] += 1
                lines.append(make_line(kind, tag, submitted + len(lines), rng))
            added += send(q, lines)
            submitted += len(lines)
        stop.wait(TICK_S)
    if duration_s and not stop.is_set():  # the last partial tick: end on exactly rate x duration
        lines = [
            make_line(rng.choices(kinds, weights)[0], tag, submitted + j, rng)
            for j in range(max(0, int(rate * duration_s) - submitted))
        ]
        for line in lines:
            counts[line.split(":", 4)[4].split()[0] if line.startswith("builtin") else "shell"] += 1
        if lines:
            added += send(q, lines)
            submitted += len(lines)
    elapsed = time.monotonic() - start
    return {
        "submitted": submitted,
        "added": added,
        "by_kind": counts,
        "elapsed_s": elapsed,
        "rate": submitted / elapsed if elapsed else 0.0,
    }


def loadgen_main(q: Queue, rate: float, duration_s: float, mix_text: str | None, seed: int | None) -> int:
    if rate <= 0:
        raise ConfigError("rate", rate, "tasks per second > 0")
    if duration_s < 0:
        raise ConfigError("duration", duration_s, "seconds >= 0 (0: until stopped)")
    mix = parse_mix(mix_text)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()  # finish the current batch, then report and exit 0

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from distcomp_obs import tracing

    tracing.setup("distcomp-loadgen")

    def traced_submit(queue: Queue, lines: list[str]) -> int:
        with tracing.send_span(queue.keys.prefix, len(lines)) as context:
            return queue.submit(lines, trace=context)

    shares = ", ".join(f"{k} {v * 100:.0f} %" for k, v in mix.items() if v)
    print(
        f"loadgen: {rate:g} tasks/s for {'ever' if not duration_s else f'{duration_s:g} s'} ({shares})",
        file=sys.stderr,
        flush=True,
    )
    result = generate(q, rate, duration_s, mix, stop, seed, traced_submit)
    print(
        f"loadgen: submitted {result['submitted']} ({result['added']} new) in {result['elapsed_s']:.1f} s "
        f"= {result['rate']:.1f} tasks/s; {result['by_kind']}",
        file=sys.stderr,
        flush=True,
    )
    return 0
