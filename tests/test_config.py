"""Settings: file < environment < flags; invalid values name the field before Redis is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distcomp_obs.config import load_settings
from distcomp_obs.errors import ConfigError
from tests.conftest import free_port, run_cli


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
