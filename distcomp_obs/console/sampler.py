"""Throughput for the overview's sparkline: the `stats` counters sampled every few seconds by a
thread of the console, kept in memory (a restart of the console starts the line afresh)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

SAMPLE_S = 2.0
KEEP = 180  # samples: six minutes at 2 s


class Throughput:
    """(time, finished + failed) samples; `rates()` gives tasks per second between samples."""

    def __init__(self, read: Callable[[], dict[str, int]], every_s: float = SAMPLE_S, keep: int = KEEP) -> None:
        self._read = read
        self.every_s = every_s
        self._samples: deque[tuple[float, int]] = deque(maxlen=keep + 1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        stats = self._read()
        done = int(stats.get("finished", 0)) + int(stats.get("failed", 0))
        with self._lock:
            self._samples.append((time.monotonic(), done))

    def rates(self) -> list[float]:
        with self._lock:
            samples = list(self._samples)
        return [
            max(0.0, (b_done - a_done) / (b_t - a_t)) if b_t > a_t else 0.0
            for (a_t, a_done), (b_t, b_done) in zip(samples, samples[1:], strict=False)
        ]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # Redis away: a gap in the line, not a dead thread
                log.warning("console: stats sample failed: %s", exc)
            self._stop.wait(self.every_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="console-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def sparkline(rates: list[float], width: int = 240, height: int = 40) -> dict[str, object]:
    """The SVG polyline points of a sparkline (server-rendered: no chart library)."""
    if not rates:
        return {"points": "", "last": 0.0, "peak": 0.0, "width": width, "height": height}
    peak = max(rates) or 1.0
    step = width / max(1, len(rates) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (r / peak) * (height - 4):.1f}" for i, r in enumerate(rates))
    return {"points": points, "last": rates[-1], "peak": max(rates), "width": width, "height": height}
