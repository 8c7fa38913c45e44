"""`python -m distcomp_obs.worker`: one worker of `distcomp run`, its Settings given as JSON.

`distcomp run` (distcomp_obs.localrun) starts each local worker this way with the validated
Settings in the environment variable config.WORKER_SETTINGS_ENV, so nothing is turned back into
flags. The variable is removed before any task starts, so tasks do not inherit it (it may carry a
Redis password). Logging, tracing and exit statuses are those of `distcomp worker`.
"""

from __future__ import annotations

import os
import sys

from distcomp_obs.config import WORKER_SETTINGS_ENV, settings_from_json
from distcomp_obs.errors import DistcompError, run_command
from distcomp_obs.logs import setup_logging


def main() -> int:
    text = os.environ.pop(WORKER_SETTINGS_ENV, None)
    if text is None:
        print(f"distcomp worker: {WORKER_SETTINGS_ENV} is not set (use `distcomp worker`)", file=sys.stderr)
        return 2
    try:
        settings = settings_from_json(text)
    except DistcompError as exc:
        print(f"distcomp worker: {WORKER_SETTINGS_ENV}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    from distcomp_obs import tracing
    from distcomp_obs.worker import Worker

    tracing.setup("distcomp-worker")
    return run_command("worker", lambda: Worker(settings).run())


if __name__ == "__main__":
    raise SystemExit(main())
