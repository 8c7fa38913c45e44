"""`distcomp slurm`: workers in Slurm allocations, one per array task and node (docs/SLURM.md).

slurm worker       what the sbatch template execs inside an allocation: a worker named from the job
                   and array task ids, --concurrency from the CPUs allocated, that exits once the
                   queue is drained; SIGTERM (--signal=B:TERM@LEAD before the walltime, scancel) drains
slurm submit FILE  one command from a task file to a running sweep: load the tasks, then sbatch an
                   array of workers with the template
slurm script       print the template (deploy/slurm/distcomp-worker.sbatch is this text)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from distcomp_obs.cli.common import _common, _worker_flags, print_json, setting_flag, settings_from
from distcomp_obs.errors import ConfigError, DistcompError

if TYPE_CHECKING:
    from distcomp_obs.cli.common import Subparsers
    from distcomp_obs.queue import Queue

log = logging.getLogger(__name__)

#: seconds the queue must stay drained (nothing waiting or running) before a Slurm worker exits
EXIT_IDLE_S = 60.0
#: seconds between the walltime SIGTERM and the walltime itself beyond the grace period: the
#: worker returns what it still holds in that margin, before Slurm kills the job
SIGNAL_MARGIN_S = 30
DEFAULT_GRACE_S = 90

SBATCH_TEMPLATE = """\
#!/bin/bash
# distcomp workers in Slurm: one worker per array task, and one per node of a multi-node job.
#   distcomp submit tasks.txt && sbatch --array=0-3 distcomp-worker.sbatch   # 4 workers
#   distcomp submit tasks.txt && sbatch --nodes=4 distcomp-worker.sbatch     # 4 workers, one job
#   distcomp slurm submit tasks.txt --workers 4 --time 1:00:00               # the first, one command
# The job needs DISTCOMP_REDIS_URL (sbatch exports the submitting shell's environment) and
# `distcomp` on its PATH. Each worker is named slurm-JOB-TASK (JOB_TASK in squeue), -RANK added
# when a job runs several, runs one task per allocated CPU, and exits once nothing is left to
# run. A worker's extra flags go after the script's name:
#   sbatch --array=0-3 distcomp-worker.sbatch --prefetch 8 --exit-idle-after 300
#
#SBATCH --job-name=distcomp-worker
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --output=distcomp-worker-%A_%a.out

set -eu
: "${DISTCOMP_REDIS_URL:?export DISTCOMP_REDIS_URL (the Redis of the queue) before sbatch}"
# --signal=B:TERM@120 sends SIGTERM to this script 120 s before the walltime. The worker then stops
# claiming, returns its buffer at once and lets running tasks finish for the grace period; what is
# still running then is killed and returned. Keep the grace period below that lead.
export DISTCOMP_GRACE_PERIOD_S="${DISTCOMP_GRACE_PERIOD_S:-90}"
# source /path/to/venv/bin/activate   # if `distcomp` is not on the job's PATH
if [ "${SLURM_NTASKS:-1}" -le 1 ]; then
    # exec: the worker is this script's process, so the walltime SIGTERM and scancel's reach it.
    exec distcomp slurm worker "$@"
fi
# Several tasks (--nodes=N, or --ntasks-per-node): srun starts a worker per task. A SIGTERM to
# srun would abort the step and kill the workers, so this script catches the walltime SIGTERM and
# hands it on as SIGURG, which drains a worker and which everything else ignores (Slurm signals
# every process of the step, running tasks included), then waits while the workers drain.
trap 'scancel --signal=URG "${SLURM_JOB_ID}.0"' TERM
srun --kill-on-bad-exit=0 distcomp slurm worker "$@" &
wait $! || wait $!
"""


def add_parsers(sub: Subparsers) -> None:
    text = "workers in Slurm allocations: sbatch template, one-command sweeps (docs/SLURM.md)"
    p = sub.add_parser("slurm", help=text, description=f"Run {text[0].lower()}{text[1:]}.")
    commands = p.add_subparsers(dest="slurm_command", required=True, metavar="SLURM_COMMAND")

    w = commands.add_parser(
        "worker",
        help="a worker inside a Slurm job (the template runs it)",
        description="Run a worker inside a Slurm job: named slurm-JOB-TASK (array) or slurm-JOB, "
        "--concurrency from SLURM_CPUS_PER_TASK or SLURM_CPUS_ON_NODE (a flag or DISTCOMP_* variable "
        "beats both); exits once the queue is drained. SIGTERM drains it, as for `distcomp worker`.",
    )
    _common(w)
    _worker_flags(w)
    setting_flag(w, "--name", field="name", help="worker name (default here: from the Slurm job)")
    w.add_argument("--exit-idle-after", type=float, default=EXIT_IDLE_S, metavar="SECONDS",
                   help="exit once nothing has been waiting or running in the queue this long "
                   "(0: stay until the walltime or scancel)")  # fmt: skip

    s = commands.add_parser(
        "submit",
        help="load a task file and sbatch an array of workers",
        description="Load FILE into the queue (as `distcomp submit`), then sbatch --array the worker "
        "template: one worker per array task, each exiting when the sweep is done.",
    )
    _common(s)
    s.add_argument("file", metavar="FILE", help="task file, one task line per line")
    s.add_argument("--workers", type=int, default=1, metavar="N", help="array tasks, one worker each")
    s.add_argument("--nodes", type=int, default=1, metavar="N",
                   help="nodes per array task, a worker on each (sbatch --nodes; default 1)")  # fmt: skip
    s.add_argument("--time", default="1:00:00", help="walltime of each worker (sbatch --time)")
    s.add_argument("--cpus-per-task", type=int, metavar="N", help="CPUs per worker = its --concurrency "
                   "(default: the template's, 4)")  # fmt: skip
    s.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                   help=f"at the walltime signal, how long running tasks may finish; the signal comes "
                   f"this + {SIGNAL_MARGIN_S} s before the walltime")  # fmt: skip
    s.add_argument("--partition", help="sbatch --partition (default: the cluster's)")
    s.add_argument("--exit-idle-after", type=float, metavar="SECONDS", help="passed to `slurm worker`")
    s.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch argument, e.g. --sbatch-arg=--account=lab (repeatable; default: none)",
                   )  # fmt: skip
    s.add_argument("--script", metavar="FILE", help="your own copy of the template (default: `slurm script`'s)")
    s.add_argument("--job", metavar="NAME", help="the job (sweep) these tasks belong to (default: the file's name)")
    s.add_argument("--skip-invalid", action="store_true", help="submit the valid lines of a file with bad ones")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    commands.add_parser("script", help="print the sbatch template", description="Print the sbatch template.")


# --- slurm worker ----------------------------------------------------------------------------------
def slurm_name(env: Mapping[str, str]) -> str | None:
    """slurm-JOB-TASK in an array job (squeue shows it as JOB_TASK), slurm-JOB otherwise; with
    -N added for the Nth worker (srun task) of a job that runs several."""
    array_job, array_task, job = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_JOB_ID")
    if array_job and array_task:
        name = f"slurm-{array_job}-{array_task}"
    elif job:
        name = f"slurm-{job}"
    else:
        return None
    ntasks, rank = env.get("SLURM_NTASKS", "1"), env.get("SLURM_PROCID", "")
    return f"{name}-{rank}" if ntasks.isdigit() and int(ntasks) > 1 and rank.isdigit() else name


def slurm_cpus(env: Mapping[str, str]) -> int | None:
    """The CPUs the job asked for per task, else those allocated on this node."""
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if env.get(key, "").isdigit() and int(env[key]) > 0:
            return int(env[key])
    return None


def apply_slurm_defaults(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Name and concurrency from the Slurm job unless a flag or DISTCOMP_* variable gives them."""
    if args.name is None and "DISTCOMP_NAME" not in env:
        args.name = slurm_name(env)
        if args.name is None:
            raise ConfigError("name", "", "a Slurm job (SLURM_JOB_ID set), or give --name")
    if args.concurrency is None and "DISTCOMP_CONCURRENCY" not in env:
        args.concurrency = slurm_cpus(env)


class DrainedExit(threading.Thread):
    """Stops the worker once nothing has been waiting or running in the whole queue for `after_s`,
    so an allocation is released when the sweep is done instead of idling to its walltime. The
    whole queue, not this worker: a task another worker returns later still finds one to run it."""

    def __init__(self, q: Queue, after_s: float, stop: Callable[[], None], stopping: threading.Event) -> None:
        super().__init__(name="drained-exit", daemon=True)
        self.q, self.after_s, self.stop, self.stopping = q, after_s, stop, stopping
        self.interval_s = min(5.0, max(0.2, after_s / 4))

    def run(self) -> None:
        import redis

        drained_since: float | None = None
        while not self.stopping.wait(self.interval_s):
            try:
                counts = self.q.counts()
            except (redis.RedisError, OSError):  # Redis away: the worker says so; not drained
                drained_since = None
                continue
            if counts["todo"] or counts["in_progress"]:
                drained_since = None
                continue
            drained_since = drained_since or time.monotonic()
            if time.monotonic() - drained_since >= self.after_s:
                log.info("queue drained for %gs: nothing waiting or running; the worker exits", self.after_s)
                self.stop()
                return


def cmd_worker(args: argparse.Namespace) -> int:
    from distcomp_obs import tracing
    from distcomp_obs.queue import Queue
    from distcomp_obs.redis_io import connect
    from distcomp_obs.worker import Worker

    apply_slurm_defaults(args, os.environ)
    settings = settings_from(args)
    tracing.setup("distcomp-worker")
    worker = Worker(settings)
    if args.exit_idle_after > 0:
        q = Queue(connect(settings.redis_url, check=False), settings.prefix)
        DrainedExit(q, args.exit_idle_after, worker.request_stop, worker.stopping).start()
    # SIGURG, whose default action is to do nothing, drains the worker like SIGTERM: the template
    # hands the walltime signal to the workers of a several-task job with it, because Slurm signals
    # every process of a step and a SIGTERM would kill the running tasks too.
    return worker.run(drain_signals=(signal.SIGURG,))


# --- slurm submit ----------------------------------------------------------------------------------
def sbatch_argv(args: argparse.Namespace, sbatch: str, script: str) -> list[str]:
    if args.workers < 1:
        raise ConfigError("workers", args.workers, "at least 1")
    lead = int(args.grace_period) + SIGNAL_MARGIN_S
    argv = [sbatch, "--parsable", "--export=ALL", f"--array=0-{args.workers - 1}", f"--time={args.time}",
            f"--signal=B:TERM@{lead}"]  # fmt: skip
    if args.nodes != 1:
        if args.nodes < 1:
            raise ConfigError("nodes", args.nodes, "at least 1")
        argv.append(f"--nodes={args.nodes}")
    if args.cpus_per_task:
        argv.append(f"--cpus-per-task={args.cpus_per_task}")
    if args.partition:
        argv.append(f"--partition={args.partition}")
    argv += [*args.sbatch_arg, script]
    if args.exit_idle_after is not None:
        argv += ["--exit-idle-after", f"{args.exit_idle_after:g}"]
    return argv


def _job_name(given: str | None, file: str) -> str:
    """--job, or the task file's name, as `distcomp submit` names a job (command modules share only common)."""
    name = given if given is not None else os.path.basename(file)
    if not name or len(name) > 100 or any(c.isspace() for c in name):
        raise ConfigError("job", name, "a name of 1 to 100 characters without spaces")
    return name


def _local_only(url: str) -> bool:
    """A Redis URL that only this machine can reach (loopback or a Unix socket)."""
    parts = urlsplit(url)
    host = (parts.hostname or "") if parts.scheme in ("redis", "rediss") else ""
    return parts.scheme == "unix" or host == "localhost" or host.startswith("127.") or host == "::1"


def cmd_submit(args: argparse.Namespace) -> int:
    from distcomp_obs.queue import Queue
    from distcomp_obs.redis_io import connect, redact_url
    from distcomp_obs.task import load_task_file

    settings = settings_from(args)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise DistcompError("sbatch not found on PATH: run this on a Slurm login node")
    loaded = load_task_file(args.file)
    for line in loaded.error_lines():
        print(line, file=sys.stderr)
    if loaded.error_count and not args.skip_invalid:
        print(f"{args.file}: {loaded.error_count} malformed line(s): nothing submitted (--skip-invalid to "
              "submit the rest)", file=sys.stderr)  # fmt: skip
        return 1
    q = Queue(connect(settings.redis_url), settings.prefix)
    added = q.submit([t.line for t in loaded.tasks], job=_job_name(args.job, args.file))
    if _local_only(settings.redis_url):
        print(f"note: workers on other nodes cannot reach {redact_url(settings.redis_url)}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="distcomp-slurm-") as tmp:
        script = args.script
        if script is None:  # sbatch copies the script when it submits: a temporary file is enough
            script = os.path.join(tmp, "distcomp-worker.sbatch")
            with open(script, "w") as f:
                f.write(SBATCH_TEMPLATE)
        env = {**os.environ, "DISTCOMP_REDIS_URL": settings.redis_url, "DISTCOMP_PREFIX": settings.prefix,
               "DISTCOMP_GRACE_PERIOD_S": f"{args.grace_period:g}"}  # fmt: skip
        done = subprocess.run(sbatch_argv(args, sbatch, script), env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        print(f"sbatch failed ({done.returncode}): {done.stderr.strip()}", file=sys.stderr)
        return 1
    job = done.stdout.strip().split(";")[0]
    workers = args.workers * args.nodes
    out = {"file": args.file, "added": added, "waiting": q.counts()["todo"], "slurm_job": job, "workers": workers}
    if args.json:
        print_json(out)
    else:
        print(f"{args.file}: added {added} task(s), {out['waiting']} waiting; Slurm job {job}: {workers} "
              f"worker(s) (squeue -j {job}; distcomp status; scancel {job} returns what they hold)")  # fmt: skip
    return 0


def cmd_slurm(args: argparse.Namespace) -> int:
    if args.slurm_command == "script":
        sys.stdout.write(SBATCH_TEMPLATE)
        return 0
    return cmd_worker(args) if args.slurm_command == "worker" else cmd_submit(args)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"slurm": cmd_slurm}
