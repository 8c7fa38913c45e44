"""Workers under a real single-node Slurm (tests/slurm_tools.py) on loopback: a sweep submitted with
`distcomp slurm submit` drains and its array of workers exits by itself; the walltime signal
(sbatch --signal=B:TERM@LEAD with the shipped template) stops a worker mid-sweep, what it held comes
back and a second allocation finishes it; scancel returns everything a worker held. Every run ends
with the audit exact and no failed attempt.

Slurm's time-limit checks are coarse (its --signal may come tens of seconds early or late), so the
walltime test keeps much more work than one allocation can do and bounds every wait generously.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from distcomp_obs.audit import audit
from distcomp_obs.cli.slurm import SBATCH_TEMPLATE, apply_slurm_defaults, sbatch_argv
from distcomp_obs.queue import Queue
from tests.conftest import REPO, require, run_cli, wait_until
from tests.slurm_tools import BINARIES, SEARCH_PATH, SlurmCluster

TEMPLATE = REPO / "deploy" / "slurm" / "distcomp-worker.sbatch"


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    missing = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
    require(not missing, f"Slurm and munge binaries {missing} (Debian: apt-get install slurm-wlm munge)")
    require(os.geteuid() == 0, "root: the test cluster runs with SlurmUser=root")
    cluster = SlurmCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def job_env(slurm: SlurmCluster, redis_url: str, prefix: str, tmp_path: Path) -> dict[str, str]:
    """What the jobs inherit from sbatch: `distcomp` on PATH (this checkout), the queue, quick leases."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "distcomp"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m distcomp_obs "$@"\n')
    wrapper.chmod(0o755)
    return {**slurm.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
            "DISTCOMP_REDIS_URL": redis_url, "DISTCOMP_PREFIX": prefix, "DISTCOMP_HEARTBEAT_INTERVAL_S": "0.5",
            "DISTCOMP_LEASE_S": "3", "DISTCOMP_REAP_INTERVAL_S": "1"}  # fmt: skip


def outputs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(tmp_path.glob("*.out")))


def assert_exact(queue: Queue, lines: list[str]) -> None:
    """Every line finished exactly once, nothing failed, not even one attempt, nothing held."""
    report = audit(queue, submitted=lines, expect_done=True)
    assert report.ok, report.summary()
    counts = queue.counts()
    assert (counts["finished"], counts["failed"], counts["in_progress"]) == (len(lines), 0, 0), counts
    assert queue.stats().get("failed", 0) == 0, queue.stats()


def scancel(slurm: SlurmCluster, job: str, tmp_path: Path, *flags: str) -> tuple[dict[str, str], str]:
    """`scancel [flags] JOB`, then wait until the job ended: its record, and the jobs' logs."""
    slurm.client("scancel", *flags, job)
    (record,) = slurm.wait_ended(job, timeout_s=60)
    return record, outputs(tmp_path)


def ran_by(queue: Queue) -> set[object]:
    """The workers named in the finished tasks' records."""
    return {record.header.get("worker") for record in queue.records("finished").values()}


def assert_clean_exit(log: str) -> None:
    assert " stopped: " in log, log
    assert "Traceback" not in log, log


def test_template_is_the_shipped_one() -> None:
    assert TEMPLATE.read_text() == SBATCH_TEMPLATE, "regenerate: distcomp slurm script > " + str(TEMPLATE)
    assert os.access(TEMPLATE, os.X_OK)
    assert "#SBATCH --signal=B:TERM@120" in SBATCH_TEMPLATE and "DISTCOMP_GRACE_PERIOD_S:-90" in SBATCH_TEMPLATE


def test_worker_name_and_concurrency_come_from_the_job() -> None:
    def defaults(env: dict[str, str], **given: object) -> tuple[object, object]:
        args = argparse.Namespace(**{"name": None, "concurrency": None, **given})
        apply_slurm_defaults(args, env)
        return args.name, args.concurrency

    array = {"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "5", "SLURM_CPUS_ON_NODE": "8"}
    assert defaults(array) == ("slurm-12-5", 8)
    assert defaults({**array, "SLURM_CPUS_PER_TASK": "3"}) == ("slurm-12-5", 3)
    assert defaults({"SLURM_JOB_ID": "40"}) == ("slurm-40", None)  # None: the Settings default (cores)
    assert defaults(array, name="mine", concurrency=2) == ("mine", 2)  # flags win
    # the workers srun starts in a job of several tasks (one per node) are told apart by their rank
    several = {"SLURM_JOB_ID": "41", "SLURM_NTASKS": "3", "SLURM_PROCID": "2", "SLURM_CPUS_PER_TASK": "6"}
    assert defaults(several) == ("slurm-41-2", 6)
    assert defaults({**array, "SLURM_NTASKS": "2", "SLURM_PROCID": "1"})[0] == "slurm-12-5-1"
    assert defaults({**several, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"})[0] == "slurm-41"
    assert defaults({**array, "DISTCOMP_NAME": "env", "DISTCOMP_CONCURRENCY": "1"}) == (None, None)  # so does env
    with pytest.raises(Exception, match="Slurm job"):
        defaults({})


def test_submit_passes_the_walltime_signal_above_the_grace_period() -> None:
    args = argparse.Namespace(workers=3, nodes=1, time="2:00:00", grace_period=100.0, cpus_per_task=8,
                              partition="long", sbatch_arg=["--account=lab"], exit_idle_after=5.0)  # fmt: skip
    assert sbatch_argv(args, "sbatch", "w.sbatch") == [
        "sbatch", "--parsable", "--export=ALL", "--array=0-2", "--time=2:00:00", "--signal=B:TERM@130",
        "--cpus-per-task=8", "--partition=long", "--account=lab", "w.sbatch", "--exit-idle-after", "5",
    ]  # fmt: skip
    args.nodes = 4  # each array task a job of 4 nodes, a worker on each
    assert "--nodes=4" in sbatch_argv(args, "sbatch", "w.sbatch")
    args.nodes = 0
    with pytest.raises(Exception, match="nodes"):
        sbatch_argv(args, "sbatch", "w.sbatch")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_command_sweep_drains_and_the_array_exits(
    slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path
) -> None:
    lines = [f"shell:1:0:0:echo sweep {i}" for i in range(200)]
    (tmp_path / "sweep.txt").write_text("\n".join(lines) + "\n")
    done = run_cli("slurm", "submit", str(tmp_path / "sweep.txt"), "--workers", "2", "--time", "5",
                   "--cpus-per-task", "1", "--grace-period", "5", "--exit-idle-after", "3", "--json",
                   f"--sbatch-arg=--output={tmp_path}/%x-%A_%a.out", f"--sbatch-arg=--chdir={tmp_path}",
                   env=job_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = re.search(r'"slurm_job": "(\d+)"', done.stdout)
    assert job, done.stdout
    records = slurm.wait_ended(job[1], timeout_s=180)
    log = outputs(tmp_path)
    assert [(r["ArrayTaskId"], r["JobState"], r["ExitCode"]) for r in sorted(records, key=lambda r: r["ArrayTaskId"])
            ] == [("0", "COMPLETED", "0:0"), ("1", "COMPLETED", "0:0")], log  # fmt: skip
    names = {f"slurm-{job[1]}-0", f"slurm-{job[1]}-1"}
    for name in names:  # named from the job, sized from the allocation (--cpus-per-task 1), left when drained
        assert re.search(rf"worker {name} started: .*concurrency=1 ", log), log
        assert "queue drained" in log
    assert_clean_exit(log)
    assert_exact(queue, lines)
    assert ran_by(queue) <= names, ran_by(queue)
    assert not any(w["live"] for w in queue.workers().values()), queue.workers()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_walltime_returns_what_is_held_and_a_second_allocation_finishes(
    slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path
) -> None:
    # 60 tasks of 2 s on 2 slots: 60 s of work, more than one minute's allocation can do
    lines = [f"shell:1:0:0:sleep 2; echo wall {i}" for i in range(60)]
    queue.submit(lines)
    env = {**job_env, "DISTCOMP_GRACE_PERIOD_S": "10"}
    common = [f"--output={tmp_path}/%x-%j.out", f"--chdir={tmp_path}", "--cpus-per-task=1"]
    first = slurm.sbatch(*common, "--job-name=first", "--time=1", "--signal=B:TERM@40", str(TEMPLATE),
                         "--concurrency", "2", env=env)  # fmt: skip
    (record,) = slurm.wait_ended(first, timeout_s=150)
    log = outputs(tmp_path)
    # ended by the worker after the walltime signal, before the walltime: not TIMEOUT
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "SIGTERM: no more claims" in log, log
    assert_clean_exit(log)
    counts = queue.counts()
    assert counts["in_progress"] == 0 and counts["failed"] == 0, counts
    assert counts["todo"] > 0 and counts["finished"] > 0 and counts["todo"] + counts["finished"] == 60, counts
    assert not queue.holdings(), queue.holdings()

    second = slurm.sbatch(*common, "--job-name=second", "--time=5", str(TEMPLATE), "--concurrency", "2",
                          "--exit-idle-after", "2", env=env)  # fmt: skip
    (record,) = slurm.wait_ended(second, timeout_s=150)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), outputs(tmp_path)
    assert_exact(queue, lines)


def _wait_running(queue: Queue, n: int) -> str:
    """The name of the worker once it runs `n` tasks (its heartbeat says so)."""

    def running() -> str | None:
        return next((name for name, w in queue.workers().items() if w.get("running", 0) >= n), None)

    return str(wait_until(running, timeout=60, interval=0.2, what=f"a worker running {n} tasks"))


def _two_running(slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path, lines: list[str]) -> str:
    """Submit `lines`, sbatch the template with two slots (no idle exit), wait until both run: the job id."""
    queue.submit(lines)
    job = slurm.sbatch(f"--output={tmp_path}/%x-%j.out", f"--chdir={tmp_path}", "--cpus-per-task=1", "--time=5",
                       str(TEMPLATE), "--concurrency", "2", "--exit-idle-after", "0", env=job_env)  # fmt: skip
    _wait_running(queue, 2)
    return job


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scancel_returns_everything_the_worker_held(
    slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path
) -> None:
    # `&&`: a shell that outlives its killed sleep must not go on to finish the task
    lines = [f"shell:1:0:0:sleep 120 && echo long {i}" for i in range(8)]
    job = _two_running(slurm, job_env, queue, tmp_path, lines)
    # plain scancel: SIGTERM to the worker and, Slurm signalling every process of the job, its tasks
    record, log = scancel(slurm, job, tmp_path)
    assert record["JobState"] == "CANCELLED", log
    assert_clean_exit(log)
    counts = queue.counts()
    assert (counts["todo"], counts["in_progress"], counts["failed"]) == (8, 0, 0), counts
    assert queue.stats().get("failed", 0) == 0, "a cancelled job's tasks are returned, not failed attempts"
    assert audit(queue, submitted=lines).ok


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scancel_batch_signal_drains_running_tasks(
    slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path
) -> None:
    lines = [f"shell:1:0:0:sleep 4; echo drained {i}" for i in range(6)]
    job = _two_running(slurm, job_env, queue, tmp_path, lines)
    # the graceful stop: SIGTERM to the batch shell (the worker) only, as the walltime signal does
    record, log = scancel(slurm, job, tmp_path, "--batch", "--signal=TERM")
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert_clean_exit(log)
    counts = queue.counts()
    # the two running tasks finished within the grace period; the rest went back unstarted
    assert (counts["finished"], counts["todo"], counts["in_progress"], counts["failed"]) == (2, 4, 0, 0), counts
    assert audit(queue, submitted=lines).ok


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_job_of_several_tasks_runs_a_worker_each_and_drains_on_the_walltime_signal(
    slurm: SlurmCluster, job_env: dict[str, str], queue: Queue, tmp_path: Path
) -> None:
    """`sbatch --nodes=N` runs a worker per node through srun; here, on one node, two tasks stand for
    two nodes. The walltime signal reaches the batch script, which hands it to both workers (a
    SIGTERM to srun itself would kill them): each lets its running task finish and exits."""
    lines = [f"shell:1:0:0:sleep 4; echo node {i}" for i in range(6)]
    queue.submit(lines)
    job = slurm.sbatch(f"--output={tmp_path}/%x-%j.out", f"--chdir={tmp_path}", "--ntasks-per-node=2",
                       "--cpus-per-task=1", "--time=5", str(TEMPLATE), "--prefetch", "0", "--exit-idle-after", "0",
                       env=job_env)  # fmt: skip
    names = {f"slurm-{job}-0", f"slurm-{job}-1"}

    def both_running() -> bool:
        workers = queue.workers()
        return all(workers.get(n, {}).get("running", 0) >= 1 for n in names)

    wait_until(both_running, timeout=60, interval=0.2, what=f"{names} each running a task")
    record, log = scancel(slurm, job, tmp_path, "--batch", "--signal=TERM")  # what --signal=B:TERM@LEAD sends
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log
    for name in names:  # one task per allocated CPU each
        assert re.search(rf"worker {name} started: .*concurrency=1 ", log), log
    assert_clean_exit(log)
    counts = queue.counts()
    # each worker's running task finished within the grace period; the rest went back unstarted
    assert (counts["finished"], counts["todo"], counts["in_progress"], counts["failed"]) == (2, 4, 0, 0), (counts, log)
    assert ran_by(queue) == names, ran_by(queue)
    assert audit(queue, submitted=lines).ok
