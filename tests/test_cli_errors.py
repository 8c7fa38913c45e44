"""An uncaught exception anywhere in the CLI is a bug (issue 13).

Every bad input of the issue that concerns the queue commands goes through the real `distcomp`
in a fresh directory, and must end with exit status 2, exactly one non-empty line on stderr that
names the command, and no traceback anywhere in the output. Nothing is written to Redis either.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from distcomp_obs.queue import Queue
from tests.conftest import distcomp_argv, free_port

#: builds the argv of one bad input from the test's directory, the Redis URL and the prefix
Case = Callable[[Path, str, str], list[str]]


def distcomp(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # a clean DISTCOMP_* environment: a stray variable would add its own warning line
    base = {k: v for k, v in os.environ.items() if not k.startswith("DISTCOMP_")}
    return subprocess.run(distcomp_argv(*args), capture_output=True, text=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL, env={**base, **(env or {})})  # fmt: skip


def assert_one_line_error(r: subprocess.CompletedProcess[str], command: str, *expected: str) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, out)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"distcomp {command}"), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _config(cwd: Path, text: str) -> str:
    return _write(cwd / "bad.yml", text.encode())


CASES: dict[str, tuple[Case, str, tuple[str, ...]]] = {
    "submit a directory": (
        lambda d, url, p: ["submit", str(d), "--redis-url", url, "--prefix", p],
        "submit", ("is a directory",),
    ),
    "submit a binary file": (
        lambda d, url, p: ["submit", _write(d / "blob.bin", b"\x7fELF\x00\x01" * 100_000), "--redis-url", url,
                           "--prefix", p],
        "submit", ("not a text file",),
    ),
    "submit a missing file": (
        lambda d, url, p: ["submit", str(d / "nope.txt"), "--redis-url", url, "--prefix", p],
        "submit", ("no such file",),
    ),
    "a prefix with a space": (
        lambda d, url, p: ["status", "--redis-url", url, "--prefix", "my jobs"], "status", ("prefix",),
    ),
    "an empty prefix": (lambda d, url, p: ["submit", "-", "--redis-url", url, "--prefix", ""], "submit", ("prefix",)),
    "an empty worker name": (
        lambda d, url, p: ["worker", "--redis-url", url, "--prefix", p, "--name", ""], "worker", ("name",),
    ),
    "a worker name with a space": (
        lambda d, url, p: ["worker", "--redis-url", url, "--prefix", p, "--name", "my node"], "worker", ("name",),
    ),
    "a misspelled flag value": (
        lambda d, url, p: ["worker", "--redis-url", url, "--prefix", p, "--polling", "adaptiv"],
        "worker", ("invalid choice: 'adaptiv'",),
    ),
    "a misspelled flag": (
        lambda d, url, p: ["status", "--redis-url", url, "--prefix", p, "--falied"], "status", ("--falied",),
    ),
    "a number flag given a word": (
        lambda d, url, p: ["worker", "--redis-url", url, "--prefix", p, "--concurrency", "four"],
        "worker", ("--concurrency",),
    ),
    "a missing config file": (
        lambda d, url, p: ["status", "--redis-url", url, "--prefix", p, "--config", str(d / "none.yml")],
        "status", ("none.yml",),
    ),
    "a misspelled config field": (
        lambda d, url, p: ["submit", "-", "--redis-url", url, "--prefix", p, "--config", _config(d, "prefech: 8\n")],
        "submit", ("prefech",),
    ),
    "a config field of the wrong type": (
        lambda d, url, p: ["worker", "--redis-url", url, "--prefix", p, "--config", _config(d, "lease_s: soon\n")],
        "worker", ("lease_s",),
    ),
    "config check on a directory": (lambda d, url, p: ["config", "check", str(d)], "config check", ("Is a directory",)),
    "config check on a binary file": (
        lambda d, url, p: ["config", "check", _write(d / "c.yml", b"\xff\xfe\x00bad")], "config check", ("c.yml",),
    ),
    "requeue-dead with a negative age": (
        lambda d, url, p: ["requeue-dead", "--redis-url", url, "--prefix", p, "--older-than", "-5"],
        "requeue-dead", ("older-than",),
    ),
    "an exporter address without a port": (
        lambda d, url, p: ["exporter", "--redis-url", url, "--prefix", p, "--metrics-addr", "localhost"],
        "exporter", ("metrics_addr",),
    ),
    "a loadgen rate of zero": (
        lambda d, url, p: ["loadgen", "--redis-url", url, "--prefix", p, "--rate", "0"], "loadgen", ("rate",),
    ),
    "a bench report without results": (
        lambda d, url, p: ["bench", "--report-only", "--out", str(d)], "bench", ("results.json",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path, redis_url: str, prefix: str,
                                          queue: Queue) -> None:  # fmt: skip
    build, command, expected = CASES[case]
    assert_one_line_error(distcomp(tmp_path, *build(tmp_path, redis_url, prefix)), command, *expected)
    assert queue.counts()["known"] == 0 and not queue.workers()  # nothing submitted, no worker registered


@pytest.mark.parametrize(
    "args",
    [["submit", "-"], ["status"], ["workers"], ["retry-failed"], ["purge-finished"], ["stop-workers"],
     ["requeue-dead"], ["reset", "--yes"], ["loadgen", "--duration", "1"], ["submit", "-", "--json"]],
)  # fmt: skip
def test_unreachable_redis_is_one_line_for_every_command(args: list[str], tmp_path: Path) -> None:
    """The manager commands (a worker waits for Redis instead: tests/test_worker.py)."""
    url = f"redis://user:pw-secret@127.0.0.1:{free_port()}/0"
    r = distcomp(tmp_path, *args, "--redis-url", url)
    assert_one_line_error(r, args[0], "cannot reach Redis at redis://user:***@127.0.0.1")
    assert "pw-secret" not in r.stdout + r.stderr


@pytest.mark.parametrize(("variable", "value"), [("DISTCOMP_LOG_FORMAT", "xml"), ("DISTCOMP_LOG_LEVEL", "loud")])
@pytest.mark.parametrize("command", ["status", "bench"])
def test_a_bad_log_variable_is_one_line(variable: str, value: str, command: str, tmp_path: Path) -> None:
    """Checked before any command runs, also for those (bench) that never build Settings."""
    args = ["--report-only", "--out", str(tmp_path)] if command == "bench" else ["--redis-url", "redis://127.0.0.1:1"]
    r = distcomp(tmp_path, command, *args, env={variable: value})
    assert_one_line_error(r, command, variable.removeprefix("DISTCOMP_").lower(), repr(value))


def test_a_byte_order_mark_is_not_an_error(tmp_path: Path, redis_url: str, prefix: str, queue: Queue) -> None:
    """Editors that write a UTF-8 BOM: line 1 is a task like any other."""
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfbuiltin:1:0:0:noop first\r\nbuiltin:1:0:0:noop second\r\n")
    r = distcomp(tmp_path, "submit", str(f), "--redis-url", redis_url, "--prefix", prefix)
    assert r.returncode == 0 and not r.stderr and "added 2" in r.stdout, r.stdout + r.stderr
    assert sorted(queue.list_state("todo")) == ["builtin:1:0:0:noop first", "builtin:1:0:0:noop second"]
