"""Every manager command through the real `distcomp` entry point against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

from distcomp_obs.queue import ClaimLimits, Queue
from tests.conftest import run_cli


def cli(redis_url: str, prefix: str, *args: str) -> tuple[int, str, str]:
    result = run_cli(*args, "--redis-url", redis_url, "--prefix", prefix)
    return result.returncode, result.stdout, result.stderr


def test_submit_reports_bad_lines_and_loads_the_rest(tmp_path: Path, redis_url: str, prefix: str,
                                                     queue: Queue) -> None:  # fmt: skip
    f = tmp_path / "t.txt"
    f.write_text("shell:1:0:0:echo a\nshell:x:0:0:bad\n\nshell:1:0:0:echo a\nbuiltin:2:0:0:noop\n")
    code, out, err = cli(redis_url, prefix, "submit", str(f))
    assert code == 1
    assert f"{f}:2: priority must be an integer" in err
    assert "read 4, added 2, skipped 1 (already known), invalid 1" in out
    code, out, _ = cli(redis_url, prefix, "submit", str(f), "--skip-invalid")
    assert code == 0 and "added 0, skipped 3" in out
    assert queue.counts()["todo"] == 2


def test_submit_missing_file(redis_url: str, prefix: str) -> None:
    code, _, err = cli(redis_url, prefix, "submit", "/nonexistent/tasks.txt")
    assert code == 2 and "no such file: /nonexistent/tasks.txt" in err


def test_status_lists_filters_json_and_check(redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["shell:1:0:0:alpha", "shell:1:0:0:beta", "shell:2:0:0:gamma"])
    code, out, _ = cli(redis_url, prefix, "status")
    assert code == 0 and "todo 3  in progress 0  finished 0  failed 0" in out
    code, out, _ = cli(redis_url, prefix, "status", "--todo", "--include", "a", "--exclude", "beta")
    assert "shell:1:0:0:alpha" in out and "gamma" in out and "beta" not in out
    code, out, _ = cli(redis_url, prefix, "status", "--json", "--check")
    data = json.loads(out)
    assert data["counts"]["todo"] == 3 and data["audit"]["ok"] is True
    code, out, _ = cli(redis_url, prefix, "status", "--check", "--drained")
    assert code == 1 and "still waiting" in out
    queue.r.hdel(queue.keys.todo_tasks, "shell:1:0:0:beta")  # corrupt a record: the audit must notice
    code, out, _ = cli(redis_url, prefix, "status", "--check")
    assert code == 1 and "todo index and todo hash disagree" in out


def test_workers_requeue_dead_and_forget(redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["shell:1:0:0:held"])
    assert queue.acquire_lease("ghost", "g", 60_000)
    queue.heartbeat("ghost", "g", 60_000, {"time": 1.0, "cores": 2, "variant": "baseline"})
    queue.claim("ghost", "g", 1, ClaimLimits(8, 8))
    code, out, _ = cli(redis_url, prefix, "workers")
    assert code == 0 and "ghost" in out and "live" in out and "baseline" in out
    code, out, _ = cli(redis_url, prefix, "workers", "--json")
    assert json.loads(out)["ghost"]["held"] == 1
    code, out, _ = cli(redis_url, prefix, "requeue-dead", "--older-than", "60")
    assert code == 0 and "ghost" in out and "returned 1 task(s)" in out
    assert queue.todo_in_order() == ["shell:1:0:0:held"]


def test_retry_failed_purge_finished_and_reset(redis_url: str, prefix: str, queue: Queue) -> None:
    from distcomp_obs.queue import Report

    queue.submit(["shell:1:0:0:ok", "shell:1:0:0:ko"])
    assert queue.acquire_lease("w", "i", 60_000)
    claimed = queue.claim("w", "i", 2, ClaimLimits(8, 8)).tasks
    reports = [Report(c.task, c.token, "finished" if "ok" in c.task else "failed", "r") for c in claimed]
    queue.settle("w", "i", reports, 0, ClaimLimits(8, 8), max_retry=0)
    assert "requeued 1 failed task(s)" in cli(redis_url, prefix, "retry-failed")[1]
    assert "purged 1 finished task(s)" in cli(redis_url, prefix, "purge-finished")[1]
    code, _, err = cli(redis_url, prefix, "reset")
    assert code == 2 and "--yes" in err and queue.counts()["todo"] == 1
    code, out, _ = cli(redis_url, prefix, "reset", "--yes")
    assert code == 0 and queue.counts()["todo"] == 0


def test_unreachable_redis_is_one_clear_line(prefix: str) -> None:
    from tests.conftest import free_port

    result = run_cli("status", "--redis-url", f"redis://user:hunter2@127.0.0.1:{free_port()}/0", "--prefix", prefix)
    assert result.returncode == 2
    assert "cannot reach Redis at redis://user:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
