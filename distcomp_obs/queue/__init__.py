"""Every Redis command of the queue lives in this package.

- `core.Queue`: the claim protocol's Lua scripts (claim, settle, requeue, heartbeat, reap,
  submit, leave) and the read models, typed at the boundary (records.py);
- `distcomp`: DistComp's own protocol, one command per round trip (the `--no-pipeline` worker);
- `manager`: operator actions (retry-failed, purge-finished, requeue-dead, stop-workers, reset);
- `scripts`: the Lua sources, with a preamble generated from keys.py and records.py.
"""

from distcomp_obs.queue.core import Queue

__all__ = ["Queue"]
