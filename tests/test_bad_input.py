"""Bad input gets a clear message and loses nothing (research/reliability.md §6.2 B1-B8).

End to end through the CLI and real workers, plus hypothesis fuzzing of the task-line parser
(mutations of valid lines) and of the config loader (random mappings).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcomp_obs.config import FIELDS, load_settings, read_config_file
from distcomp_obs.errors import ConfigError, TaskLineError
from distcomp_obs.queue import Queue, manager
from distcomp_obs.records import LAYOUT
from distcomp_obs.task import MAX_LINE_BYTES, format_line, parse_line
from tests.conftest import WorkerProc, distcomp_argv, free_port, run_cli
from tests.fault_tools import assert_audit, wait_done

StartWorker = Callable[..., WorkerProc]


# ---------------------------------------------------------------- task files through `submit`


def test_submit_reports_each_bad_line_and_loads_the_rest(queue: Queue, redis_url: str, prefix: str,
                                                         tmp_path: Path) -> None:  # fmt: skip
    f = tmp_path / "tasks.txt"
    good = ["shell:1:0:0:echo a:b:c", "builtin:2:0:0:noop ünïcødé ✓", "python:3:0.5:1:-c 'print(1)'"]
    lines = [
        good[0].encode(),
        b"shell:1:0:0",  # 2: too few fields
        b"shell:x:0:0:echo",  # 3: priority not an integer
        b"shell:-1:0:0:echo",  # 4: negative
        b"rust:1:0:0:cargo run",  # 5: unknown type
        good[1].encode(),
        b"shell:1:0:0:echo caf\xe9",  # 7: Latin-1, not UTF-8
        b"shell:1:0:0:" + b"x" * (MAX_LINE_BYTES + 10),  # 8: oversized
        b"shell:1:0:0:   ",  # 9: empty params
        b"# a comment",
        b"",
        good[2].encode() + b"\r",  # 12: CRLF line end is fine
    ]
    f.write_bytes(b"\n".join(lines) + b"\n")
    r = run_cli("submit", str(f), "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 1, r.stderr
    errors = r.stderr.strip().splitlines()
    assert [e.split(":")[1] for e in errors] == ["2", "3", "4", "5", "7", "8", "9"], errors
    assert all(e.startswith(f"{f}:") and len(e) < 400 for e in errors)
    assert "not valid UTF-8" in errors[4] and "longer than" in errors[5]
    assert "invalid 7" in r.stdout and "added 3" in r.stdout
    assert set(queue.list_state("todo")) == {parse_line(g).line for g in good}
    # --skip-invalid: same report, exit 0, nothing added twice
    r = run_cli("submit", str(f), "--redis-url", redis_url, "--prefix", prefix, "--skip-invalid")
    assert r.returncode == 0 and "added 0" in r.stdout and "skipped 3" in r.stdout


def test_submit_file_with_nul_bytes_is_one_line_and_adds_nothing(queue: Queue, redis_url: str, prefix: str,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """A NUL byte means a binary file (or a corrupted one): one line naming it, exit 2, nothing
    submitted, rather than one error per chunk of a 50 MB blob."""
    f = tmp_path / "tasks.txt"
    f.write_bytes(b"builtin:1:0:0:noop fine\nshell:1:0:0:echo a\x00b\n" + bytes(range(256)) * 2000)
    r = run_cli("submit", str(f), "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"distcomp submit: {f} is not a text file (it contains NUL bytes)"]
    assert queue.counts()["todo"] == 0


def test_submit_missing_file_is_one_line(redis_url: str, prefix: str, tmp_path: Path) -> None:
    r = run_cli("submit", str(tmp_path / "nope.txt"), "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 2
    assert r.stderr.strip() == f"distcomp submit: no such file: {tmp_path / 'nope.txt'}"


def test_params_with_colons_unicode_and_odd_output_are_stored_safely(
    queue: Queue, start_worker: StartWorker, tmp_path: Path
) -> None:
    """B2/B4/B5: params with ':' and unicode run verbatim; huge output is bounded (head kept for
    stdout, tail for stderr) and worker memory stays bounded; invalid UTF-8, NULs and ANSI codes
    are stored with replacement characters."""
    tasks = {
        "colons": "shell:1:0:0:printf 'a:b:c ünï ✓'",
        "huge_out": "shell:1:0:0:head -c 50000000 /dev/zero | tr '\\0' 'y'",
        "huge_err": "shell:1:0:0:head -c 50000000 /dev/zero | tr '\\0' 'e' >&2; echo END >&2; exit 4",
        "binary": "shell:1:0:0:printf 'ok\\377\\376\\000nul\\033[31mred'",
        "bad_err": "shell:1:0:0:printf 'bad\\377' >&2; exit 2",
    }
    lines = [parse_line(t).line for t in tasks.values()]
    queue.submit(lines)
    w = start_worker("--concurrency", "2", "--max-retry-per-task", "0")
    wait_done(queue, len(lines), timeout=60)
    finished, failed = queue.list_state("finished"), queue.list_state("failed")
    assert finished[lines[0]] == "a:b:c ünï ✓"
    limit = 64 * 1024
    assert len(finished[lines[1]].encode()) < limit + 200 and "bytes kept" in finished[lines[1]]
    assert failed[lines[2]].startswith("exit code 4") and failed[lines[2]].rstrip().endswith("END")
    assert len(failed[lines[2]].encode()) < limit + 200
    assert finished[lines[3]].startswith("ok\ufffd\ufffd\x00nul\x1b[31mred")
    assert "bad\ufffd" in failed[lines[4]]
    assert w.stop() == 0
    assert_audit(queue, lines)


# ---------------------------------------------------------------- config and connection errors


def test_unknown_config_key_fails_before_redis(tmp_path: Path) -> None:
    cfg = tmp_path / "conf.yml"
    cfg.write_text("prefetch: 4\nprefech: 8\n")
    closed = f"redis://127.0.0.1:{free_port()}"
    for cmd in (["worker", "--name", "x"], ["status"], ["submit", str(cfg)]):
        r = run_cli(*cmd, "--config", str(cfg), "--redis-url", closed, timeout=30)
        assert r.returncode == 2, (cmd, r.stderr)
        assert "invalid config: prefech=8" in r.stderr and "cannot reach" not in r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("env", [{"DISTCOMP_PREFETCH": "-1"}, {"DISTCOMP_LEASE_S": "abc"},
                                 {"DISTCOMP_REDIS_URL": "http://x"}])  # fmt: skip
def test_bad_env_value_fails_before_redis(env: dict[str, str]) -> None:
    r = run_cli("worker", "--name", "x", env=env, timeout=30)
    assert r.returncode == 2 and "invalid config" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_redis_is_one_line_naming_the_host_without_password(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("builtin:1:0:0:noop\n")
    port = free_port()
    # `worker` waits for Redis instead (tests/test_worker.py)
    for cmd in (["submit", str(f)], ["status"], ["workers"]):
        r = run_cli(*cmd, "--redis-url", f"redis://alice:s3cr3t-pw@127.0.0.1:{port}/0", timeout=30)
        assert r.returncode == 2, (cmd, r.stderr)
        out = r.stdout + r.stderr
        assert "s3cr3t-pw" not in out and "Traceback" not in out
        assert f"cannot reach Redis at redis://alice:***@127.0.0.1:{port}/0" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_wrong_password_is_one_line(redis_url: str, queue: Queue, prefix: str) -> None:
    """Also for a worker, which waits for an unreachable Redis but not for a credential that will
    never work: it exits 2 at once and registers nothing."""
    user = f"u{free_port()}"
    queue.r.acl_setuser(user, enabled=True, passwords=["+right-pw"], commands=["+@all"], keys=["*"])
    try:
        host = redis_url.split("://", 1)[1]
        for cmd in (["status"], ["worker", "--name", "pw", "--prefix", prefix]):
            r = run_cli(*cmd, "--redis-url", f"redis://{user}:wrong-pw@{host}", timeout=30)
            assert r.returncode == 2, (cmd, r.stderr)
            assert "wrong-pw" not in r.stderr + r.stdout and "Traceback" not in r.stderr
            assert "refused the credentials" in r.stderr and host.split(":")[0] in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert queue.workers() == {}
    finally:
        queue.r.acl_deluser(user)


def test_metrics_port_in_use_is_one_line_and_registers_nothing(queue: Queue, redis_url: str, prefix: str,
                                                                tmp_path: Path) -> None:  # fmt: skip
    """The worker binds /metrics before it registers: a busy port leaves no worker listed (DEAD for
    an hour) and no lease; the exporter says the same in one line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        for cmd, name in ((["worker", "--name", "busy"], "worker"), (["exporter"], "exporter")):
            argv = distcomp_argv(*cmd, "--redis-url", redis_url, "--prefix", prefix, "--metrics-addr", addr)
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=dict(os.environ))
            assert r.returncode == 2, (cmd, r.stderr)
            assert "Traceback" not in r.stderr
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"distcomp {name}: cannot serve metrics on {addr}: "), lines
            assert "in use" in lines[0]
    assert queue.workers() == {}
    assert not queue.r.exists(queue.keys.lease("busy"), queue.keys.workers)


# ---------------------------------------------------------------- fuzzing

valid_lines = st.builds(
    lambda kind, prio, dram, cpu, params: f"{kind}:{prio}:{dram}:{cpu}:{params}",
    st.sampled_from(["shell", "python"]),
    st.integers(0, 10**6),
    st.integers(0, 512),
    st.integers(0, 64),
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs")), min_size=1, max_size=40),
)
garbage = st.one_of(
    st.just(""),
    st.just("-1"),
    st.just("nan"),
    st.just("inf"),
    st.just("1e400"),
    st.text(st.sampled_from("abcxyz!?\u00e9"), min_size=1, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(line=valid_lines, field=st.integers(0, 3), bad=garbage)
def test_parser_rejects_every_mutated_field_with_a_reason(line: str, field: int, bad: str) -> None:
    """Valid lines round-trip; corrupting any of the four fixed fields is rejected with a reason."""
    task = parse_line(line)
    assert format_line(parse_line(format_line(task))) == format_line(task)
    parts = line.split(":", 4)
    parts[field] = bad
    with pytest.raises(TaskLineError) as exc:
        parse_line(":".join(parts))
    assert exc.value.reason


@settings(max_examples=300, deadline=None)
@given(line=valid_lines, junk=st.sampled_from(["\n", "\r", "\x00"]), at=st.integers(0, 1000))
def test_parser_rejects_embedded_control_characters(line: str, junk: str, at: int) -> None:
    pos = len(line.split(":", 4)[0]) + 1 + at % max(1, len(line) - 1)
    mutated = line[:pos] + junk + "x" + line[pos:]
    with pytest.raises(TaskLineError):
        parse_line(mutated)


json_values: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(sorted(FIELDS) + ["redis_host", "redis_port", "redis_password", "sleep_time",
                                                     "num_slots"]), st.text(max_size=12))  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(keys, json_values, max_size=6))
def test_config_loader_never_crashes_with_anything_but_config_error(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "conf.json"
    path.write_text(json.dumps(data))
    try:
        settings_ = load_settings(path, env={})
    except ConfigError as exc:
        assert exc.expected
        return
    assert settings_.prefix and settings_.concurrency >= 1
    assert "s3" not in repr(settings_) or "s3" not in str(data.get("redis_password", ""))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_config_file_bytes_never_crash(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "conf.yml"
    path.write_bytes(raw)
    try:
        read_config_file(path)
    except ConfigError:
        pass


def test_settings_repr_never_shows_the_password() -> None:
    s = load_settings(env={}, flags={"redis_url": "redis://bob:hunter2@10.0.0.1:6379/0"})
    assert "hunter2" not in repr(s) and "hunter2" not in json.dumps(s.redacted())
    assert "bob:***@10.0.0.1" in repr(s)
    with pytest.raises(ConfigError) as exc:
        load_settings(env={}, flags={"redis_url": "http://bob:hunter2@10.0.0.1"})
    assert "hunter2" not in str(exc.value)


def test_redis_errors_do_not_leak_passwords() -> None:
    from distcomp_obs.errors import RedisUnavailable
    from distcomp_obs.redis_io import connect

    with pytest.raises(RedisUnavailable) as exc:
        connect(f"redis://carol:pa55word@127.0.0.1:{free_port()}/0", timeout_s=1)
    assert "pa55word" not in str(exc.value) and not isinstance(exc.value, redis.RedisError)


def test_a_queue_of_an_older_record_layout_is_refused_with_the_fix(redis_url: str, prefix: str, queue: Queue) -> None:
    """Issue 10: a queue written before the claim-by-class index (no `layout` key, tasks in it)
    would hide its waiting tasks from every claim: submit and worker refuse it in one line naming
    the fix, and touch nothing."""
    queue.submit(["shell:1:0:0:echo old"])
    queue.r.delete(queue.keys.layout)  # as the previous layout left it
    for argv in (("submit", "-"), ("worker", "--name", "w", "--metrics-addr", "127.0.0.1:0")):
        out = run_cli(*argv, "--redis-url", redis_url, "--prefix", prefix, input="shell:1:0:0:echo new\n", timeout=30)
        assert out.returncode == 2, out
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "older distcomp-obs" in lines[0] and "distcomp reset --yes" in lines[0], lines
        assert "Traceback" not in out.stderr
    assert queue.counts()["todo"] == 1 and queue.workers() == {}
    queue.r.set(queue.keys.layout, str(LAYOUT))  # the current layout: accepted again
    assert (
        run_cli("submit", "-", "--redis-url", redis_url, "--prefix", prefix, input="shell:1:0:0:echo new\n").returncode
        == 0
    )


def test_a_queue_of_layout_2_under_untagged_keys_is_refused_and_reset_clears_it(
    redis_url: str, prefix: str, queue: Queue
) -> None:
    """Layout 2 named keys `<prefix>:<record>` without the hash tag: the new keys look empty, so
    without a check its waiting tasks would be silently left behind. Refused in one line; `reset`
    deletes the old keys too, and the queue is usable again."""
    queue.r.hset(prefix + "task_meta", "shell:1:0:0:echo old", '{"seq":1}')
    queue.r.set(prefix + "layout", "2")
    out = run_cli("submit", "-", "--redis-url", redis_url, "--prefix", prefix, input="shell:1:0:0:echo new\n")
    assert out.returncode == 2 and "record layout 2" in out.stderr and "distcomp reset --yes" in out.stderr, out
    assert queue.counts()["known"] == 0
    manager.reset(queue)
    assert not queue.r.exists(prefix + "task_meta", prefix + "layout")
    out = run_cli("submit", "-", "--redis-url", redis_url, "--prefix", prefix, input="shell:1:0:0:echo new\n")
    assert out.returncode == 0 and queue.counts()["todo"] == 1, out
