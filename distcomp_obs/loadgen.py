"""`distcomp loadgen`: one seeded, mixed stream of unique tasks for dashboards and A/B experiments.

Submits at `--rate` tasks/s (batched per 100 ms tick, so the rate holds without one round trip
per task) for `--duration` seconds (0 = until SIGTERM/SIGINT). The mix is quick builtin noops and
short builtin sleeps by default (no failing task: a steady failing share keeps DistcompTasksFailing
firing for as long as it runs); failing and shell tasks are opt-in through `--mix`, to inject faults.
Every line carries a run tag and a counter, because identical lines are one task.

Fan-out, for a fair A/B experiment: given several key prefixes (`--prefix a,b,c`, or a
comma-separated `DISTCOMP_PREFIX`), every tick's batch goes to each of those queues, so each variant
works its own queue fed the very same stream: its throughput measures its capacity, not who grabs
tasks first. A ramp (`ramp_to`) raises the rate linearly over `ramp_s` to find each variant's capacity.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from distcomp_obs.config import parse_prefixes
from distcomp_obs.errors import ConfigError

if TYPE_CHECKING:
    from distcomp_obs.queue import Queue

KINDS = ("noop", "sleep", "fail", "shell")
#: The demo default: nothing fails, nothing needs a shell; the mean task takes ~0.1 s of a slot.
DEFAULT_MIX = {"noop": 0.90, "sleep": 0.10, "fail": 0.0, "shell": 0.0}
#: Sleep tasks last uniform(SLEEP_S) seconds.
SLEEP_S = (0.05, 1.0)
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


def split_prefixes(prefix: str) -> list[str]:
    """'ab-base:,ab-pipe' -> ['ab-base:', 'ab-pipe:'] (order kept, duplicates dropped), as the exporter splits them."""
    return parse_prefixes([prefix], prefix)


def fan_out(q: Queue) -> list[Queue]:
    """The queues a loadgen opened on `q` feeds: one per comma-separated prefix, on q's connection."""
    from distcomp_obs.queue import Queue

    prefixes = split_prefixes(q.keys.prefix)
    if prefixes == [q.keys.prefix]:
        return [q]
    return [Queue(q.r, p) for p in prefixes]


def make_line(kind: str, tag: str, i: int, rng: random.Random) -> str:
    prio = rng.choice((1, 1, 1, 2, 3))
    if kind == "sleep":
        return f"builtin:{prio}:0:0:sleep {rng.uniform(*SLEEP_S):.2f} lg-{tag}-{i}"
    if kind == "fail":
        return f"builtin:{prio}:0:0:fail loadgen lg-{tag}-{i}"
    if kind == "shell":
        return f"shell:{prio}:0:0:echo lg-{tag}-{i}"
    return f"builtin:{prio}:0:0:noop lg-{tag}-{i}"


def due_by(t: float, rate: float, ramp_to: float | None, ramp_s: float) -> int:
    """Tasks due by t seconds: the integral of the rate, which rises linearly from `rate` to
    `ramp_to` over `ramp_s` seconds and then stays there (no ramp: rate x t)."""
    if ramp_to is None or ramp_s <= 0:
        return int(rate * t)
    ramping = min(t, ramp_s)
    total = rate * ramping + (ramp_to - rate) * ramping * ramping / (2 * ramp_s)
    return int(total + ramp_to * max(0.0, t - ramp_s))


def generate(
    q: Queue | Sequence[Queue],
    rate: float,
    duration_s: float,
    mix: dict[str, float],
    stop: threading.Event,
    seed: int | None = None,
    submit: Callable[[Queue, list[str]], int] | None = None,
    ramp_to: float | None = None,
    ramp_s: float = 0.0,
) -> dict[str, Any]:
    """Submit until duration_s (0: until stop), every batch to each queue of `q`. Returns counts
    per kind, tasks added per queue and the achieved rate (per queue)."""
    queues = [q] if not isinstance(q, Sequence) else list(q)
    if ramp_to is not None and ramp_s <= 0:
        ramp_s = duration_s
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    kinds, weights = list(mix), [mix[k] for k in mix]
    counts = dict.fromkeys(KINDS, 0)
    added = {queue.keys.prefix: 0 for queue in queues}
    submitted = 0
    start = time.monotonic()
    send = submit or (lambda queue, lines: queue.submit(lines))

    def emit(n: int) -> None:
        nonlocal submitted
        if n <= 0:
            return
        lines: list[str] = []
        for _ in range(n):
            kind = rng.choices(kinds, weights)[0]
            counts[kind] += 1
            lines.append(make_line(kind, tag, submitted + len(lines), rng))
        for queue in queues:  # the same lines, in the same order, to every queue
            added[queue.keys.prefix] += send(queue, lines)
        submitted += n

    while not stop.is_set():
        elapsed = time.monotonic() - start
        if duration_s and elapsed >= duration_s:
            break
        emit(due_by(elapsed, rate, ramp_to, ramp_s) - submitted)
        stop.wait(TICK_S)
    if duration_s and not stop.is_set():  # the last partial tick: end on exactly the integral over duration
        emit(due_by(duration_s, rate, ramp_to, ramp_s) - submitted)
    elapsed = time.monotonic() - start
    return {
        "submitted": submitted,
        "added": sum(added.values()),
        "added_by_queue": added,
        "by_kind": counts,
        "elapsed_s": elapsed,
        "rate": submitted / elapsed if elapsed else 0.0,
    }


def loadgen_main(
    q: Queue,
    rate: float,
    duration_s: float,
    mix_text: str | None,
    seed: int | None,
    ramp_to: float | None = None,
    ramp_s: float = 0.0,
) -> int:
    if rate <= 0:
        raise ConfigError("rate", rate, "tasks per second > 0")
    if duration_s < 0:
        raise ConfigError("duration", duration_s, "seconds >= 0 (0: until stopped)")
    if ramp_to is not None and (ramp_to <= 0 or (ramp_s <= 0 and not duration_s)):
        raise ConfigError("ramp", ramp_to, "a rate > 0, with --ramp-seconds or --duration to ramp over")
    mix = parse_mix(mix_text)
    queues = fan_out(q)
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
    pace = f"{rate:g} tasks/s" + (f" rising to {ramp_to:g} over {ramp_s or duration_s:g} s" if ramp_to else "")
    to = f" to each of {', '.join(x.keys.prefix for x in queues)}" if len(queues) > 1 else ""
    print(
        f"loadgen: {pace}{to} for {'ever' if not duration_s else f'{duration_s:g} s'} ({shares})",
        file=sys.stderr,
        flush=True,
    )
    result = generate(queues, rate, duration_s, mix, stop, seed, traced_submit, ramp_to, ramp_s)
    print(
        f"loadgen: submitted {result['submitted']} ({result['added']} new) in {result['elapsed_s']:.1f} s "
        f"= {result['rate']:.1f} tasks/s{' per queue' if to else ''}; {result['by_kind']}",
        file=sys.stderr,
        flush=True,
    )
    return 0
