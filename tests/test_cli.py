"""Every manager command through the real `distcomp` entry point against a real Redis."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distcomp_obs.queue import Queue
from distcomp_obs.records import ClaimLimits, Report
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
    queue.submit(["shell:1:0:0:ok", "shell:1:0:0:ko"])
    assert queue.acquire_lease("w", "i", 60_000)
    claimed = queue.claim("w", "i", 2, ClaimLimits(8, 8)).tasks
    reports = [Report(c.line, c.token, "finished" if "ok" in c.line else "failed", "r") for c in claimed]
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


# --- the CLI package: settings to the workers of `distcomp run`, no import circle ------------------


def test_settings_json_round_trips() -> None:
    from distcomp_obs.config import Settings, load_settings, settings_from_json

    flags = {"name": "w-1", "redis_url": "redis://u:p%40ss@h:1/2", "task_timeout_s": 2.5, "metrics": False,
             "concurrency": 3}  # fmt: skip
    s = load_settings(env={}, baseline=True, flags=flags)
    text = s.to_json()
    assert settings_from_json(text) == s
    assert "p%40ss" in text  # unredacted: the worker must be able to connect
    assert settings_from_json(Settings().to_json()) == Settings()


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"prefetch": "8"}, "prefetch", "an integer"),
        ({"concurrency": 2.5}, "concurrency", "an integer"),
        ({"pipeline": 1}, "pipeline", "true or false"),
        ({"poll_interval_s": "2"}, "poll_interval_s", "a number"),
        ({"variant": 7}, "variant", "a string"),
        ({"lease_s": 1.0}, "lease_s", "at least twice"),
        ({"redis_url": "http://x"}, "redis_url", "redis://"),
        ({"colour": "blue"}, "colour", "a known setting"),
    ],
)
def test_settings_json_bad_field_is_named(change: dict[str, object], field: str, expected: str) -> None:
    from distcomp_obs.config import Settings, settings_from_json
    from distcomp_obs.errors import ConfigError

    data = {**json.loads(Settings().to_json()), **change}
    with pytest.raises(ConfigError) as info:
        settings_from_json(json.dumps(data))
    assert info.value.field == field and expected in str(info.value)


def test_settings_json_not_an_object_missing_field_or_not_json() -> None:
    from distcomp_obs.config import Settings, settings_from_json
    from distcomp_obs.errors import ConfigError

    data = json.loads(Settings().to_json())
    del data["prefetch"]
    with pytest.raises(ConfigError, match="prefetch"):
        settings_from_json(json.dumps(data))
    with pytest.raises(ConfigError, match="an object"):
        settings_from_json("[1, 2]")
    with pytest.raises(ConfigError, match="valid JSON"):
        settings_from_json("{not json")


def test_run_worker_settings_are_the_runs_with_name_url_metrics_and_log_level(monkeypatch: pytest.MonkeyPatch,
                                                                             ) -> None:  # fmt: skip
    import dataclasses

    from distcomp_obs.config import load_settings
    from distcomp_obs.localrun import RunOptions, worker_settings

    monkeypatch.delenv("DISTCOMP_LOG_LEVEL", raising=False)
    run = load_settings(env={}, baseline=True, flags={"concurrency": 1, "metrics_addr": "0.0.0.0:9000",
                                                      "log_level": "debug", "task_timeout_s": 50})  # fmt: skip
    child = worker_settings(run, RunOptions("t.txt"), "unix:///tmp/r.sock", 2)
    assert (child.name, child.redis_url, child.metrics_addr, child.log_level) == (
        "local-2", "unix:///tmp/r.sock", "127.0.0.1:0", "WARNING")  # fmt: skip
    same = dataclasses.replace(child, name=run.name, redis_url=run.redis_url, metrics_addr=run.metrics_addr,
                               log_level=run.log_level)  # fmt: skip
    assert same == run and child.variant_name == "baseline"
    monkeypatch.setenv("DISTCOMP_LOG_LEVEL", "info")
    child = worker_settings(run, RunOptions("t.txt", worker_metrics_addr="127.0.0.1:9100"), "redis://h:1/0", 1)
    assert (child.name, child.metrics_addr, child.log_level) == ("local-1", "127.0.0.1:9100", "INFO")


def test_worker_module_rejects_missing_or_bad_settings() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if k != "DISTCOMP_WORKER_SETTINGS"}
    argv = [sys.executable, "-m", "distcomp_obs.worker"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 2 and "DISTCOMP_WORKER_SETTINGS is not set" in result.stderr
    env["DISTCOMP_WORKER_SETTINGS"] = json.dumps({"prefetch": -1})
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 2 and "invalid config: " in result.stderr and "Traceback" not in result.stderr


CLI_MODULES = ["distcomp_obs.cli", "distcomp_obs.cli.common", "distcomp_obs.cli.queue_commands",
               "distcomp_obs.cli.run", "distcomp_obs.cli.bench"]  # fmt: skip


@pytest.mark.parametrize(
    "module",
    ["distcomp_obs.localrun", "distcomp_obs.config", "distcomp_obs.worker", "distcomp_obs.worker.__main__",
     "distcomp_obs.queue", "distcomp_obs.exporter", "distcomp_obs.loadgen", "distcomp_obs.bench.runner"],
)  # fmt: skip
def test_library_modules_do_not_load_the_cli(module: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('distcomp_obs.cli')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", CLI_MODULES)
def test_each_cli_module_imports_first(module: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = f"import {module}; import distcomp_obs.cli as c; c.build_parser()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_no_import_of_the_cli_below_it_even_inside_functions() -> None:
    """The old circle went through imports inside functions, so read every import statement."""
    import ast

    from tests.conftest import REPO

    package = REPO / "distcomp_obs"
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.update([node.module] + [f"{node.module}.{alias.name}" for alias in node.names])
        cli = {m for m in imported if m == "distcomp_obs.cli" or m.startswith("distcomp_obs.cli.")}
        if rel in ("__main__.py", "cli/__init__.py"):  # the entry points: above the CLI's modules
            continue
        if rel.startswith("cli/") and rel != "cli/common.py":  # the command modules share only cli/common.py
            assert all(m.startswith("distcomp_obs.cli.common") for m in cli), f"{rel} imports {cli}"
        else:  # cli/common.py and everything outside the CLI
            assert not cli, f"{rel} imports {cli}"
