"""Settings: file < environment < flags; invalid values name the field before Redis is touched."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

from distcomp_obs.config import load_settings, parse_prefixes, unknown_env
from distcomp_obs.errors import ConfigError
from distcomp_obs.exporter import queue_label
from distcomp_obs.keys import Keys
from distcomp_obs.logs import setup_logging
from distcomp_obs.queue import Queue
from tests.conftest import distcomp_argv, free_port, run_cli


def cli_in(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`distcomp ARGS` run in `cwd` (a fresh directory), with the test's environment plus `env`."""
    return subprocess.run(distcomp_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("prefetch: 8\nconcurrency: 3\npolling: fixed\n")
    s = load_settings(cfg, env={"DISTCOMP_PREFETCH": "16", "DISTCOMP_CONCURRENCY": "4"}, flags={"concurrency": 5})
    assert (s.prefetch, s.concurrency, s.polling) == (16, 5, "fixed")


def test_baseline_preset_can_be_refined_by_flags() -> None:
    s = load_settings(env={}, baseline=True)
    assert s.variant_name == "baseline" and not s.pipeline and s.prefetch == 0
    nosleep = load_settings(env={}, baseline=True, flags={"poll_interval_s": 0})
    assert nosleep.variant_name == "baseline-nosleep"
    assert load_settings(env={}).variant_name == "pipeline+prefetch32+adaptive"


def test_baseline_beats_file_and_environment_but_not_a_flag_given_with_it(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("prefetch: 8\npipeline: true\nconcurrency: 3\n")
    env = {"DISTCOMP_POLLING": "adaptive", "DISTCOMP_POLL_INTERVAL_S": "0.5"}
    s = load_settings(cfg, env=env, baseline=True)
    assert (s.variant_name, s.concurrency) == ("baseline", 3)  # fields --baseline does not set still come through
    s = load_settings(cfg, env=env, baseline=True, flags={"prefetch": 4})
    assert (s.prefetch, s.polling, s.pipeline) == (4, "fixed", False)


def test_baseline_precedence_through_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("prefetch: 8\npipeline: true\n")
    env = {"DISTCOMP_POLLING": "adaptive"}
    r = cli_in(tmp_path, "config", "check", str(cfg), "--baseline", env=env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["pipeline"], got["prefetch"], got["polling"], got["poll_interval_s"]) == (False, 0, "fixed", 2.0)
    r = cli_in(tmp_path, "config", "check", str(cfg), "--baseline", "--prefetch", "4", env=env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["pipeline"], got["prefetch"], got["polling"]) == (False, 4, "fixed")


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_empty_or_blank_worker_name_is_rejected(tmp_path: Path, redis_url: str, prefix: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, flags={"name": name})
    assert info.value.field == "name" and "non-empty" in str(info.value)
    r = cli_in(tmp_path, "worker", "--name", name, "--redis-url", redis_url, "--prefix", prefix, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"distcomp worker: invalid config: name={name!r}: expected a non-empty "
                                             "worker name (leave it out for this host's name)"]  # fmt: skip


def test_prefix_gets_its_colon_so_jobs_and_jobs_colon_are_one_queue(tmp_path: Path, queue: Queue, prefix: str,
                                                                    redis_url: str) -> None:  # fmt: skip
    bare = prefix.rstrip(":")
    assert load_settings(env={}, flags={"prefix": bare}).prefix == prefix
    assert load_settings(env={"DISTCOMP_PREFIX": bare}).prefix == prefix
    assert parse_prefixes([bare, f"{prefix},{bare}"], "distcomp") == [prefix]
    assert parse_prefixes(None, "distcomp") == ["distcomp:"] and queue_label(prefix) == bare
    f = tmp_path / "t.txt"
    f.write_text("builtin:1:0:0:noop a\n")
    r = cli_in(tmp_path, "submit", str(f), "--redis-url", redis_url, "--prefix", bare)
    assert r.returncode == 0, r.stderr
    assert queue.counts()["todo"] == 1  # `queue` is the fixture's `prefix` (with ':')
    assert queue.r.exists(f"{{{bare}}}:todo_tasks")  # keys are `{<prefix>}:<record>` either way
    assert Keys(prefix).todo_tasks == Keys(bare).todo_tasks
    r = cli_in(tmp_path, "submit", str(f), "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 0 and queue.counts()["todo"] == 1  # the same queue: already known


def test_a_misspelled_environment_variable_is_reported_once(tmp_path: Path, redis_url: str, prefix: str) -> None:
    assert unknown_env({"DISTCOMP_PREFECH": "8", "DISTCOMP_PREFETCH": "4", "HOME": "/"}) == [
        ("DISTCOMP_PREFECH", "DISTCOMP_PREFETCH")
    ]
    assert unknown_env({"DISTCOMP_WORKER_SETTINGS": "{}", "DISTCOMP_SOAK_SECONDS": "5"}) == []
    assert unknown_env({"DISTCOMP_ZZZZZZZZZZZZZZZZ": "1"}) == [("DISTCOMP_ZZZZZZZZZZZZZZZZ", "")]
    cfg = tmp_path / "c.yml"
    cfg.write_text("prefetch: 4\n")
    f = tmp_path / "t.txt"
    f.write_text("builtin:1:0:0:noop a\n")
    env = {"DISTCOMP_PREFECH": "8", "DISTCOMP_REDIS_URL": redis_url, "DISTCOMP_PREFIX": prefix}
    for cmd in (["config", "check", str(cfg)], ["status"], ["submit", str(f)], ["workers"]):
        r = cli_in(tmp_path, *cmd, env=env, timeout=30)
        assert r.returncode == 0, (cmd, r.stderr)
        warnings = [line for line in r.stderr.splitlines() if "DISTCOMP_PREFECH" in line]
        assert len(warnings) == 1 and "did you mean DISTCOMP_PREFETCH?" in warnings[0], (cmd, r.stderr)
    assert json.loads(cli_in(tmp_path, "config", "check", str(cfg), env=env).stdout)["prefetch"] == 4  # ignored


def test_log_format_setting_is_validated(tmp_path: Path) -> None:
    assert load_settings(env={}).log_format == "text"
    assert load_settings(env={"DISTCOMP_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"DISTCOMP_LOG_FORMAT": "xml"})
    assert info.value.field == "log_format" and "'text' or 'json'" in str(info.value)
    cfg = tmp_path / "c.yml"
    cfg.write_text("log_format: yaml\n")
    r = cli_in(tmp_path, "config", "check", str(cfg))
    assert r.returncode == 2 and "log_format='yaml'" in r.stderr and "'text' or 'json'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_json_log_lines_carry_time_level_logger_message_and_exc_info(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("info", "json")
        logging.getLogger("distcomp_obs.test").debug("not shown")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("distcomp_obs.test").exception("failed %s", "here")
        setup_logging("WARNING", "text")
        logging.getLogger("distcomp_obs.test").warning("plain")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    record = json.loads(lines[0])
    assert set(record) == {"time", "level", "logger", "message", "exc_info"}
    assert (record["level"], record["logger"], record["message"]) == ("ERROR", "distcomp_obs.test", "failed here")
    assert record["time"].endswith("+00:00") and "T" in record["time"]
    assert "ValueError: boom" in record["exc_info"]
    assert len(lines) == 2 and lines[1].endswith(" WARNING distcomp_obs.test: plain")


def test_distcomp_conf_json_keys_are_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "conf.json"
    cfg.write_text(json.dumps({"redis_host": "10.0.0.5", "redis_port": 6380, "redis_password": "s3cr:t",
                               "max_retry_per_task": 4, "poll_interval": 1.5}))  # fmt: skip
    s = load_settings(cfg, env={})
    assert s.redis_url == "redis://:s3cr%3At@10.0.0.5:6380/0"
    assert (s.max_retry_per_task, s.poll_interval_s) == (4, 1.5)
    assert "s3cr" not in repr(s)


@pytest.mark.parametrize(
    ("content", "field", "expected"),
    [
        ("prefetch: -1\n", "prefetch", "0 to 10000"),
        ("polling: sometimes\n", "polling", "'adaptive' or 'fixed'"),
        ("pipeline: maybe\n", "pipeline", "true or false"),
        ("lease_s: 1\nheartbeat_interval_s: 5\n", "lease_s", "at least twice"),
        ("redis_url: http://x\n", "redis_url", "redis://"),
        ("colour: blue\n", "colour", "a known setting"),
        ("- a list\n", "config", "mapping"),
    ],
)
def test_invalid_values_name_the_field_and_the_expectation(tmp_path: Path, content: str, field: str,
                                                           expected: str) -> None:  # fmt: skip
    cfg = tmp_path / "bad.yml"
    cfg.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert info.value.field == field and expected in str(info.value)


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("prefetch: 4\nredis_url: redis://user:hunter2@127.0.0.1:1/0\n")
    result = run_cli("config", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prefetch"] == 4 and "hunter2" not in result.stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("concurrency: lots\n")
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 2 and "concurrency='lots'" in result.stderr and "an integer" in result.stderr


def test_bad_config_fails_before_redis_is_touched(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("prefetch: many\n")
    closed = f"redis://127.0.0.1:{free_port()}"
    result = run_cli("worker", "--config", str(bad), "--redis-url", closed, timeout=30)
    assert result.returncode == 2 and "prefetch" in result.stderr and "cannot reach" not in result.stderr
