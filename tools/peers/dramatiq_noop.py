"""The Dramatiq side of tools/peers/bench_peers.py: a Redis broker and one no-op actor.

Runs in a throwaway virtual environment outside the repository (Dramatiq is no dependency of
distcomp-obs). The broker URL comes from PEER_REDIS_URL: the harness points the worker at the
latency proxy and the enqueue straight at Redis.

    python dramatiq_noop.py N           # enqueue N messages (one Lua call each, Dramatiq's own path)
    dramatiq dramatiq_noop --processes 1 --path tools/peers   # the worker
"""

from __future__ import annotations

import os
import sys

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor
def noop(index: int) -> None:
    """Takes its index (so every message is distinct) and does nothing."""


def main(argv: list[str]) -> None:
    for i in range(int(argv[0])):
        noop.send(i)


if __name__ == "__main__":
    main(sys.argv[1:])
