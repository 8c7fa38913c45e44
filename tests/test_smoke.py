"""The main job end to end: `distcomp run` on the example file with an embedded Redis."""

from __future__ import annotations

import os
import time
from pathlib import Path

from distcomp_obs.runstate import state_name
from distcomp_obs.task import load_task_file
from tests.conftest import REPO, run_cli


def test_run_examples_every_task_finishes(tmp_path: Path) -> None:
    result = run_cli("run", "examples/tasks.txt", "--workers", "2", "--data-dir", str(tmp_path / "data"),
                     timeout=120)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr  # the quick start's main command succeeds
    n = len(load_task_file(REPO / "examples" / "tasks.txt").tasks)
    assert n >= 10 and f"summary: {n} finished, 0 failed, 0 waiting" in out
    assert "FAILED" not in out and "audit OK" in out


def test_run_failing_example_reports_the_failure_with_its_reason(tmp_path: Path) -> None:
    result = run_cli("run", "examples/failing.txt", "--data-dir", str(tmp_path / "data"), timeout=120)
    out = result.stdout
    assert result.returncode == 1, result.stderr  # one task fails on purpose
    assert "1 finished, 1 failed, 0 waiting" in out
    assert 'FAILED shell:1:0:0:echo "disk full" >&2; exit 3' in out
    assert "disk full" in out and "exit code 3" in out
    assert "audit OK" in out


def test_run_interrupted_loses_nothing_and_resumes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from tests.conftest import wait_until

    tasks = tmp_path / "slow.txt"
    tasks.write_text("".join(f"builtin:1:0:0:sleep 0.3 {i}\n" for i in range(40)))
    data = str(tmp_path / "data")
    argv = [sys.executable, "-m", "distcomp_obs", "run", str(tasks), "--workers", "2", "--data-dir", data,
            "--concurrency", "1", "--prefetch", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    wait_until(lambda: (Path(data) / state_name(tasks) / "redis" / "redis.log").exists(), timeout=30)
    time.sleep(2.0)  # let some tasks finish, others run or wait in buffers
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group: run drains its workers
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "audit OK" in out and "interrupted" in err
    again = run_cli("run", str(tasks), "--workers", "2", "--data-dir", data, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "40 finished, 0 failed, 0 waiting" in again.stdout and "audit OK" in again.stdout


def test_run_workers_get_the_runs_settings_and_tasks_do_not_see_them(tmp_path: Path) -> None:
    """The workers of `run` get the run's Settings as JSON in their environment, then drop it."""
    import json
    import sys

    data = tmp_path / "data"
    env_out, workers_out = tmp_path / "env.txt", tmp_path / "workers.json"
    tasks = tmp_path / "t.txt"
    socket = data / state_name(tasks) / "redis" / "redis.sock"
    show_workers = f"{sys.executable} -m distcomp_obs workers --json --redis-url unix://{socket}"
    tasks.write_text(f"shell:1:0:0:env > {env_out}\nshell:1:0:0:{show_workers} > {workers_out}\n")
    result = run_cli("run", str(tasks), "--workers", "2", "--data-dir", str(data), "--baseline", "--concurrency", "1",
                     timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    env = env_out.read_text()
    assert "DISTCOMP_WORKER_SETTINGS" not in env and "DISTCOMP_LOG_LEVEL=" in env
    workers = json.loads(workers_out.read_text())
    assert workers and set(workers) <= {"local-1", "local-2"}
    for w in workers.values():
        assert (w["variant"], w["concurrency"], w["prefetch"], w["pipeline"]) == ("baseline", 1, 0, False)
        assert w["metrics_url"].startswith("http://127.0.0.1:")
