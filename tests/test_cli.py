"""Every manager command through the real `distcomp` entry point against a real Redis."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distcomp_obs.audit import audit
from distcomp_obs.queue import Queue
from distcomp_obs.records import ClaimLimits, Report
from distcomp_obs.task import MAX_REPORTED_ERRORS
from tests.conftest import distcomp_argv, run_cli


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
    # a line repeated in the file is a duplicate, not "already known" (that is: already in the queue)
    assert "read 4, added 2, skipped 0 (already known), duplicates 1 (repeated lines), invalid 1" in out
    code, out, _ = cli(redis_url, prefix, "submit", str(f), "--skip-invalid")
    assert code == 0 and "added 0, skipped 2 (already known), duplicates 1" in out
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
    [beta] = [m for m in queue.r.zrange(queue.keys.todo_tasks, 0, -1) if m.endswith("|shell:1:0:0:beta")]
    queue.r.zrem(queue.keys.todo_tasks, beta)  # corrupt a record: the audit must notice
    code, out, _ = cli(redis_url, prefix, "status", "--check")
    assert code == 1 and "lost: submitted but in no state: 'shell:1:0:0:beta'" in out, out


def silent_since_1970(queue: Queue, name: str) -> None:
    """Make a worker's last heartbeat old by the server's clock (`seen_ms`, what requeue-dead reads)."""
    status = json.loads(queue.r.hget(queue.keys.worker_status, name))
    queue.r.hset(queue.keys.worker_status, name, json.dumps({**status, "seen_ms": 1000}))


def test_a_worker_with_a_slow_clock_is_not_silent(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 11 case 6: a live worker whose own clock is 10 minutes slow heartbeats now by the
    server's clock: requeue-dead must not declare it dead (it did: 12 duplicates)."""
    queue.submit(["shell:1:0:0:held"])
    assert queue.acquire_lease("slow", "s", 60_000)
    queue.heartbeat("slow", "s", 60_000, {"time": time.time() - 600})
    queue.claim("slow", "s", 1, ClaimLimits(8, 8))
    code, out, _ = cli(redis_url, prefix, "requeue-dead", "--older-than", "60")
    assert code == 0 and "slow" not in out and queue.counts()["in_progress"] == 1, out


def test_workers_requeue_dead_and_forget(redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["shell:1:0:0:held"])
    assert queue.acquire_lease("ghost", "g", 60_000)
    queue.heartbeat("ghost", "g", 60_000, {"time": 1.0, "cores": 2, "variant": "baseline"})
    queue.claim("ghost", "g", 1, ClaimLimits(8, 8))
    silent_since_1970(queue, "ghost")
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


# --- issue 13: submit (item 7), help and docs (item 9), output, --json, logs, reset, start-up (item 10) ----------


def cli_in(cwd: Path, *args: str, input: str | None = None, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The real `distcomp` run in a fresh directory (the test's tmp_path)."""
    return subprocess.run(distcomp_argv(*args), capture_output=True, text=True, timeout=60, input=input,
                          env={**os.environ, **(env or {})}, cwd=cwd)  # fmt: skip


def test_submit_stdin_json_duplicates_and_capped_errors(tmp_path: Path, redis_url: str, prefix: str,
                                                        queue: Queue) -> None:  # fmt: skip
    bad = "".join(f"shell:x{i}:0:0:bad\n" for i in range(50))
    good = "builtin:1:0:0:noop a\nbuiltin:1:0:0:noop a\nbuiltin:1:0:0:noop b\n"
    lines = good + bad
    r = cli_in(tmp_path, "submit", "-", "--redis-url", redis_url, "--prefix", prefix, "--json", input=lines)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    assert (data["file"], data["read"], data["added"], data["already_known"], data["duplicates"], data["invalid"]) == (
        "<stdin>", 53, 2, 0, 1, 50)  # fmt: skip
    err = r.stderr.strip().splitlines()
    assert len(err) == MAX_REPORTED_ERRORS + 1 and err[0].startswith("-:4: priority must be an integer")
    assert err[-1] == f"-: ... and {50 - MAX_REPORTED_ERRORS} more malformed line(s)"
    assert data["errors"] == err
    assert sorted(queue.list_state("todo")) == ["builtin:1:0:0:noop a", "builtin:1:0:0:noop b"]
    # again: the two tasks are now already known, the repeated line is still a duplicate
    r = cli_in(tmp_path, "submit", "-", "--redis-url", redis_url, "--prefix", prefix, input=good)
    assert "<stdin>: read 3, added 0, skipped 2 (already known), duplicates 1 (repeated lines), invalid 0" in r.stdout
    assert r.returncode == 0


def _settle(queue: Queue, outcomes: dict[str, tuple[str, str]]) -> None:
    """Record each task's outcome (state, output or reason) through the real claim and settle scripts."""
    queue.submit(list(outcomes))
    assert queue.acquire_lease("w", "i", 60_000)
    claimed = queue.claim("w", "i", len(outcomes), ClaimLimits(64, 64)).tasks
    reports = [Report(c.line, c.token, *outcomes[c.line]) for c in claimed]
    queue.settle("w", "i", reports, 0, ClaimLimits(8, 8), max_retry=0)


def test_status_shows_finished_output_and_failure_reasons_on_one_line(tmp_path: Path, redis_url: str, prefix: str,
                                                                      queue: Queue) -> None:  # fmt: skip
    _settle(queue, {"shell:1:0:0:two": ("finished", "first line\n\n  second line\n"),
                    "shell:1:0:0:long": ("finished", "x" * 500),
                    "shell:1:0:0:ko": ("failed", "exit code 3\nboom")})  # fmt: skip
    r = cli_in(tmp_path, "status", "--finished", "--failed", "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    ids = queue.ids(["shell:1:0:0:two", "shell:1:0:0:long", "shell:1:0:0:ko"])
    assert f"  {ids['shell:1:0:0:two']:>6}  shell:1:0:0:two\tfirst line | second line" in out, out
    assert f"  {ids['shell:1:0:0:long']:>6}  shell:1:0:0:long\t{'x' * 200}…" in out
    assert f"  {ids['shell:1:0:0:ko']:>6}  shell:1:0:0:ko\texit code 3 | boom" in out
    r = cli_in(tmp_path, "status", "--finished", "--json", "--redis-url", redis_url, "--prefix", prefix)
    data = json.loads(r.stdout)
    assert data["lists"]["finished"]["shell:1:0:0:long"] == "x" * 500  # JSON: the full text
    assert data["ids"]["shell:1:0:0:long"] == ids["shell:1:0:0:long"]  # the id `distcomp task` takes


def test_manager_commands_print_one_json_object(tmp_path: Path, redis_url: str, prefix: str, queue: Queue) -> None:
    _settle(queue, {"shell:1:0:0:ok": ("finished", "out"), "shell:1:0:0:ko": ("failed", "r")})

    def js(*args: str) -> Any:
        r = cli_in(tmp_path, *args, "--json", "--redis-url", redis_url, "--prefix", prefix)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert js("retry-failed") == {"requeued": 1}
    assert js("purge-finished") == {"purged": 1}
    assert js("stop-workers") == {"stop_requested": True}
    assert queue.r.exists(queue.keys.stop_requested)
    queue.heartbeat("w", "i", 60_000, {"time": 1.0})
    assert len(queue.claim("w", "i", 1, ClaimLimits(8, 8)).tasks) == 1
    silent_since_1970(queue, "w")  # holding the retried task
    assert js("requeue-dead", "--older-than", "60") == {"dead": ["w"], "returned": 1}
    assert queue.counts()["todo"] == 1
    data = js("reset", "--yes")
    assert data["prefix"] == prefix and data["deleted"] > 0
    assert queue.counts()["known"] == 0


def _reset_on_a_terminal(cwd: Path, redis_url: str, prefix: str, answer: str) -> tuple[int, str, str]:
    """`distcomp reset` with its standard input on a pseudo-terminal, as a person at a shell."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(distcomp_argv("reset", "--redis-url", redis_url, "--prefix", prefix), stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)  # fmt: skip
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out, err


def test_reset_asks_for_the_prefix_on_a_terminal(tmp_path: Path, redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["builtin:1:0:0:noop keep"])
    code, _, err = _reset_on_a_terminal(tmp_path, redis_url, prefix, "distcomp:")
    assert code == 1 and "type the prefix to confirm" in err and "nothing deleted" in err
    assert queue.counts()["todo"] == 1
    r = cli_in(tmp_path, "reset", "--redis-url", redis_url, "--prefix", prefix, input="")  # no terminal
    assert r.returncode == 2 and "--yes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert queue.counts()["todo"] == 1
    code, out, err = _reset_on_a_terminal(tmp_path, redis_url, prefix, prefix)
    assert code == 0 and f"of queue {prefix!r}" in out, err
    assert queue.counts()["known"] == 0


def test_log_format_json_from_the_flag_and_the_environment(tmp_path: Path, start_worker: Callable[..., Any],
                                                           redis_url: str, prefix: str) -> None:  # fmt: skip
    w = start_worker("--log-format", "json")
    assert w.stop() == 0
    records = [json.loads(line) for line in w.log().splitlines() if line.strip()]
    assert any(" started: " in rec["message"] for rec in records), records
    assert all({"time", "level", "logger", "message"} <= set(rec) for rec in records)
    cfg = tmp_path / "w.yml"
    cfg.write_text("log_format: text\nlog_level: warning\n")
    r = cli_in(tmp_path, "config", "check", str(cfg), env={"DISTCOMP_LOG_FORMAT": "JSON"})
    assert r.returncode == 0 and json.loads(r.stdout)["log_format"] == "json"
    r = cli_in(tmp_path, "config", "check", str(cfg), "--log-format", "text", env={"DISTCOMP_LOG_FORMAT": "json"})
    assert json.loads(r.stdout)["log_format"] == "text" and json.loads(r.stdout)["log_level"] == "WARNING"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its words ("worker", "config check"), nested ones included."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[" ".join((*path, name))] = sub
                found.update(_commands(sub, (*path, name)))
    return found


def test_help_describes_the_tool_and_every_flag_with_its_default(tmp_path: Path) -> None:
    from distcomp_obs.cli import build_parser

    r = cli_in(tmp_path, "--help")
    assert r.returncode == 0
    description = r.stdout.split("\n\n")[1]
    assert description.startswith("Run shell, python and builtin tasks") and "thin" not in r.stdout
    assert "distcomp COMMAND --help" in r.stdout and "README.md" in r.stdout
    commands = _commands(build_parser())
    assert {"run", "submit", "worker", "status", "config check", "bench"} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"distcomp {name} {action.option_strings or action.dest}: no help text"
            shows_default = action.default not in (None, False) and action.nargs != 0 and action.option_strings
            if shows_default or getattr(action, "distcomp_setting", None):
                helped = parser._get_formatter()._expand_help(action)  # what --help prints for this flag
                assert "default" in helped, f"distcomp {name} {action.option_strings}: default not shown"
        r = cli_in(tmp_path, *name.split(), "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: distcomp {name} ") and not r.stderr
    worker = commands["worker"].format_help()
    assert "(default: 32)" in " ".join(worker.split())  # --prefetch: the Settings default, not argparse's None
    assert "(default: this host's name)" in " ".join(worker.split())


def test_a_usage_error_is_one_line_naming_the_command(tmp_path: Path) -> None:
    for args, expected in [
        (["worker", "--polling", "adaptiv"], "distcomp worker: argument --polling: invalid choice: 'adaptiv'"),
        (["worker", "--prefech", "3"], "distcomp worker: unrecognized arguments: --prefech 3"),
        (["config", "check"], "distcomp config check: the following arguments are required: FILE"),
        (["submti"], "distcomp: argument COMMAND: invalid choice: 'submti'"),
    ]:
        r = cli_in(tmp_path, *args)
        assert r.returncode == 2 and r.stderr.startswith(expected) and len(r.stderr.splitlines()) == 1, r.stderr


HEAVY = ("redis", "hiredis", "yaml", "prometheus_client", "opentelemetry", "psutil", "distcomp_obs.queue",
         "distcomp_obs.worker", "distcomp_obs.exporter", "distcomp_obs.bench", "distcomp_obs.tracing",
         "distcomp_obs.localrun", "distcomp_obs.config")  # fmt: skip


def test_help_imports_no_heavy_module(tmp_path: Path) -> None:
    """`distcomp --help` must start fast: the handlers import redis, yaml, the queue, ... (deterministic:
    the modules Python imported, not a timing)."""
    argv = [*distcomp_argv("--help")[:1], "-X", "importtime", *distcomp_argv("--help")[1:]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "usage: distcomp" in r.stdout
    loaded = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "distcomp_obs.cli" in loaded
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"distcomp --help imported {heavy}"
    code = "import sys; from distcomp_obs.cli import build_parser; build_parser(); print(' '.join(sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    modules = set(r.stdout.split())
    assert "distcomp_obs.cli.common" in modules
    assert not [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_names_the_cli_keeps_to_stay_light_match_the_modules() -> None:
    from distcomp_obs.bench.runner import DEFAULT_WORKLOADS, WORKLOADS
    from distcomp_obs.bench.workers import DEFAULT_VARIANTS
    from distcomp_obs.cli import bench
    from distcomp_obs.cli.common import LOG_FORMATS
    from distcomp_obs.exporter import DEFAULT_ADDR
    from distcomp_obs.logs import LOG_FORMATS as FORMATS

    assert list(bench.BENCH_WORKLOADS) == list(WORKLOADS)
    assert list(bench.BENCH_DEFAULT_WORKLOADS) == list(DEFAULT_WORKLOADS)
    assert list(bench.BENCH_VARIANTS) == list(DEFAULT_VARIANTS)
    assert bench.EXPORTER_ADDR == DEFAULT_ADDR
    assert tuple(LOG_FORMATS) == tuple(FORMATS)


def test_readme_says_exactly_which_commands_take_which_common_flags() -> None:
    import re

    from distcomp_obs.cli import build_parser
    from tests.conftest import REPO

    text = " ".join((REPO / "README.md").read_text().split())
    commands = _commands(build_parser())
    flags = {name: {o for a in p._actions for o in a.option_strings} for name, p in commands.items()}

    def named(pattern: str) -> set[str]:
        match = re.search(pattern, text)
        assert match, pattern
        return set(re.findall(r"`([a-z][a-z -]*)`", match.group(1)))

    queue_commands = named(r"The commands that work on a queue \((.*?)\) take `--redis-url`")
    for name in queue_commands:
        assert {"--redis-url", "--prefix", "--config"} <= flags[name], name
    assert flags["config check"] >= {"--redis-url", "--prefix"} and "--config" not in flags["config check"]
    assert "--redis-url" in flags["bench"] and not {"--prefix", "--config"} & flags["bench"]
    assert queue_commands | {"config check", "bench", "config", "slurm", "slurm script"} == set(commands)
    for name in named(r"\)\. (`run`.*?) print one JSON object with `--json`"):
        assert "--json" in flags[name], name
    for name in named(r"The commands that log \((.*?)\) take `--log-level`"):
        assert {"--log-level", "--log-format"} <= flags[name], name


def test_task_shows_one_task_by_id_or_line(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 12: every task has a short stable id (its submit number); `distcomp task ID` shows
    its whole record; an unknown id is one line and exit 2; a forgotten task's id goes with it."""
    _settle(queue, {"shell:1:0:0:ok": ("finished", "the output\n"), "shell:1:0:0:ko": ("failed", "exit code 3")})
    ok_id = str(queue.meta("shell:1:0:0:ok")[0])  # type: ignore[index]
    code, out, _ = cli(redis_url, prefix, "task", ok_id)
    assert code == 0 and f"task {ok_id}: shell:1:0:0:ok" in out and "state finished" in out, out
    assert "the output" in out
    code, out, _ = cli(redis_url, prefix, "task", "shell:1:0:0:ko", "--json")
    data = json.loads(out)
    assert data["state"] == "failed" and data["attempts"][-1]["reason"].startswith("exit code 3"), data
    assert data["id"] == queue.meta("shell:1:0:0:ko")[0]  # type: ignore[index]
    code, _, err = cli(redis_url, prefix, "task", "99999")
    assert code == 2 and "no task with id or line '99999'" in err, err
    assert audit(queue).ok
    queue.forget("finished", ["shell:1:0:0:ok"])
    code, _, err = cli(redis_url, prefix, "task", ok_id)
    assert code == 2, err
    assert audit(queue).ok


def test_cancel_takes_waiting_tasks_out_and_leaves_done_ones(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 12: `distcomp cancel` by id or line: waiting tasks are recorded cancelled (a terminal
    state the audit knows); a claimed, a finished and an unknown task say why and change nothing."""
    _settle(queue, {"shell:1:0:0:done": ("finished", "out")})
    queue.submit(["shell:1:0:0:a", "shell:1:0:0:b", "shell:1:0:0:c"])
    queue.heartbeat("w", "i", 60_000, {"time": 0})
    assert [c.line for c in queue.claim("w", "i", 1, ClaimLimits(8, 8)).tasks] == ["shell:1:0:0:a"]
    b_id = queue.ids(["shell:1:0:0:b"])["shell:1:0:0:b"]
    code, out, _ = cli(redis_url, prefix, "cancel", b_id, "shell:1:0:0:c", "shell:1:0:0:a", "shell:1:0:0:done",
                       "12345", "--json")  # fmt: skip
    assert code == 1 and json.loads(out) == {b_id: "cancelled", "shell:1:0:0:c": "cancelled",
                                             "shell:1:0:0:a": "stopping", "shell:1:0:0:done": "finished",
                                             "12345": "unknown"}, out  # fmt: skip
    counts = queue.counts()
    assert counts["todo"] == 0 and counts["cancelled"] == 2 and counts["in_progress"] == 1, counts
    assert queue.stats()["cancelled"] == 2
    assert audit(queue).ok
    code, out, _ = cli(redis_url, prefix, "cancel", b_id)
    assert code == 0 and "was already cancelled" in out
    code, out, _ = cli(redis_url, prefix, "task", b_id, "--json")
    assert json.loads(out)["state"] == "cancelled"


def test_retry_one_task_keeps_it_in_its_job(redis_url: str, prefix: str, queue: Queue) -> None:
    """`retry ID` resubmits the task into its own job, as retry-failed and the console do."""
    queue.submit(["shell:1:0:0:s1"], job="sweep")
    assert queue.acquire_lease("w", "i", 60_000)
    queue.heartbeat("w", "i", 60_000, {"time": 0})
    (held,) = queue.claim("w", "i", 1, ClaimLimits(8, 8)).tasks
    queue.settle("w", "i", [Report(held.line, held.token, "failed", "boom")], 0, ClaimLimits(8, 8), 0)
    code, out, _ = cli(redis_url, prefix, "retry", queue.ids([held.line])[held.line], "--json")
    assert code == 0, out
    sweep = json.loads(cli(redis_url, prefix, "job", "sweep", "--json")[1])
    assert (sweep["submitted"], sweep["failed"], sweep["pending"]) == (1, 0, 1), sweep


def test_retry_and_delete_act_on_one_task_by_id(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 12: `retry ID` runs a failed (or cancelled) task again under a new id; `delete ID`
    forgets a done task; a task in another state says so and nothing changes (exit 1)."""
    _settle(queue, {"shell:1:0:0:ok": ("finished", "out"), "shell:1:0:0:ko": ("failed", "boom")})
    queue.submit(["shell:1:0:0:waiting"])
    ids = queue.ids(["shell:1:0:0:ok", "shell:1:0:0:ko", "shell:1:0:0:waiting"])
    code, out, _ = cli(redis_url, prefix, "retry", ids["shell:1:0:0:ko"], ids["shell:1:0:0:ok"], "--json")
    data = json.loads(out)
    assert code == 1 and data[ids["shell:1:0:0:ok"]] == "finished: nothing changed", data
    new_id = queue.ids(["shell:1:0:0:ko"])["shell:1:0:0:ko"]
    assert data[ids["shell:1:0:0:ko"]] == f"queued again as task {new_id}" and new_id != ids["shell:1:0:0:ko"]
    assert queue.counts()["todo"] == 2 and queue.counts()["failed"] == 0
    code, out, _ = cli(redis_url, prefix, "delete", ids["shell:1:0:0:ok"], ids["shell:1:0:0:waiting"])
    assert code == 1 and f"{ids['shell:1:0:0:ok']}: deleted" in out and "todo: nothing changed" in out, out
    assert queue.counts()["finished"] == 0 and queue.meta("shell:1:0:0:ok") is None
    assert audit(queue).ok


def test_retry_failed_and_purge_finished_take_include(redis_url: str, prefix: str, queue: Queue) -> None:
    _settle(queue, {"shell:1:0:0:a": ("failed", "disk full"), "shell:1:0:0:b": ("failed", "timeout"),
                    "shell:1:0:0:c": ("finished", "x"), "shell:1:0:0:d": ("finished", "y")})  # fmt: skip
    code, out, _ = cli(redis_url, prefix, "retry-failed", "--include", "disk", "--json")
    assert code == 0 and json.loads(out) == {"requeued": 1} and set(queue.list_state("failed")) == {"shell:1:0:0:b"}
    code, out, _ = cli(redis_url, prefix, "purge-finished", "--include", ":d", "--json")
    assert code == 0 and json.loads(out) == {"purged": 1} and set(queue.list_state("finished")) == {"shell:1:0:0:c"}


def test_jobs_count_each_state_in_o1(tmp_path: Path, redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 12: submit --job NAME (default: the file's name); `jobs` and `job NAME` show progress
    from per-job counters the scripts keep, and a job's failures with their reasons."""
    f = tmp_path / "sweep.txt"
    f.write_text("shell:1:0:0:a\nshell:1:0:0:b\nshell:1:0:0:c\n")
    assert cli_in(tmp_path, "submit", str(f), "--redis-url", redis_url, "--prefix", prefix).returncode == 0
    assert cli(redis_url, prefix, "jobs", "--json")[1] and queue.submit(["shell:1:0:0:other"], job="other") == 1
    assert queue.acquire_lease("w", "i", 60_000)
    queue.heartbeat("w", "i", 60_000, {"time": 0})
    held = {c.line: c for c in queue.claim("w", "i", 4, ClaimLimits(8, 8)).tasks}
    reports = [Report("shell:1:0:0:a", held["shell:1:0:0:a"].token, "finished", "ok"),
               Report("shell:1:0:0:b", held["shell:1:0:0:b"].token, "failed", "disk full")]  # fmt: skip
    queue.settle("w", "i", reports, 0, ClaimLimits(8, 8), max_retry=0)
    code, out, _ = cli(redis_url, prefix, "job", "sweep.txt", "--json")
    data = json.loads(out)
    assert code == 0 and (data["submitted"], data["finished"], data["failed"], data["pending"]) == (3, 1, 1, 1), data
    assert (data["todo"], data["in_progress"]) == (0, 1), data  # c: claimed above, not reported
    assert data["failures"] == {"shell:1:0:0:b": "disk full"}
    assert data["remaining"] == 1 and data["eta_s"] == pytest.approx(1 / data["rate_per_s"]), data
    code, out, _ = cli(redis_url, prefix, "job", "sweep.txt")
    assert code == 0 and out.startswith("sweep.txt: 2/3 done") and ", ETA " in out and "ETA unknown" not in out, out
    code, out, _ = cli(redis_url, prefix, "jobs")
    assert "sweep.txt: 2/3 done (67 %): 1 finished, 1 failed, 0 cancelled, 0 waiting, 1 claimed by workers" in out, out
    assert "other: 0/1 done" in out
    code, _, err = cli(redis_url, prefix, "job", "nope")
    assert code == 2 and "no job 'nope'" in err
    assert audit(queue).ok


def test_cancel_a_whole_job(redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["shell:1:0:0:j1", "shell:1:0:0:j2"], job="sweep")
    queue.submit(["shell:1:0:0:keep"], job="other")
    code, out, _ = cli(redis_url, prefix, "cancel", "--job", "sweep", "--json")
    assert code == 0 and json.loads(out) == {"shell:1:0:0:j1": "cancelled", "shell:1:0:0:j2": "cancelled"}, out
    assert queue.list_state("todo") == {"shell:1:0:0:keep": ""}
    code, out, _ = cli(redis_url, prefix, "job", "sweep", "--json")
    assert json.loads(out)["cancelled"] == 2 and json.loads(out)["pending"] == 0
    assert audit(queue).ok


def test_cancel_by_state_and_text(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 12: `cancel --state todo --include TEXT` takes out only the waiting tasks holding TEXT;
    with --job, only that job's; a claimed task is not touched by --state todo."""
    queue.submit(["shell:1:0:0:alpha 1", "shell:1:0:0:beta 1"], job="a")
    queue.submit(["shell:1:0:0:alpha 2"], job="b")
    code, out, _ = cli(redis_url, prefix, "cancel", "--state", "todo", "--include", "alpha", "--job", "a", "--json")
    assert code == 0 and json.loads(out) == {"shell:1:0:0:alpha 1": "cancelled"}, out
    assert queue.acquire_lease("w", "i", 60_000)
    queue.heartbeat("w", "i", 60_000, {"time": 0})
    held = queue.claim("w", "i", 1, ClaimLimits(8, 8)).tasks  # the oldest waiting: beta 1
    assert [c.line for c in held] == ["shell:1:0:0:beta 1"]
    code, out, _ = cli(redis_url, prefix, "cancel", "--state", "todo", "--json")
    assert code == 0 and json.loads(out) == {"shell:1:0:0:alpha 2": "cancelled"}, out
    code, out, _ = cli(redis_url, prefix, "cancel", "--state", "in_progress", "--include", "beta", "--json")
    assert code == 0 and json.loads(out) == {"shell:1:0:0:beta 1": "stopping"}, out
    code, _, err = cli(redis_url, prefix, "cancel", "--state", "finished")
    assert code == 2 and "invalid choice" in err
    assert queue.counts()["cancelled"] == 2


def test_retry_failed_keeps_each_task_in_its_job(redis_url: str, prefix: str, queue: Queue) -> None:
    queue.submit(["shell:1:0:0:s1"], job="sweep")
    queue.submit(["shell:1:0:0:o1"], job="other")
    assert queue.acquire_lease("w", "i", 60_000)
    queue.heartbeat("w", "i", 60_000, {"time": 0})
    held = queue.claim("w", "i", 2, ClaimLimits(8, 8)).tasks
    queue.settle("w", "i", [Report(c.line, c.token, "failed", "boom") for c in held], 0, ClaimLimits(8, 8), 0)
    code, out, _ = cli(redis_url, prefix, "retry-failed", "--job", "sweep", "--json")
    assert code == 0 and json.loads(out) == {"requeued": 1}
    sweep = json.loads(cli(redis_url, prefix, "job", "sweep", "--json")[1])
    assert (sweep["submitted"], sweep["failed"], sweep["pending"]) == (1, 0, 1), sweep
    assert set(queue.list_state("failed")) == {"shell:1:0:0:o1"}
    assert cli(redis_url, prefix, "retry-failed", "--json")[0] == 0
    other = json.loads(cli(redis_url, prefix, "job", "other", "--json")[1])
    assert (other["submitted"], other["failed"], other["pending"]) == (1, 0, 1), other
    assert audit(queue).ok
