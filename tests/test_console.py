"""`distcomp console` as a real process on a free port, against the session's real redis-server,
with real workers: every page and endpoint, search, escaping, paging, the auth model, retry, jobs, cancel."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue, views
from distcomp_obs.records import ClaimLimits, Report
from tests.conftest import REPO, distcomp_argv, run_cli, terminate, wait_until

TOKEN = "console-test-token-3f9a"


@dataclass
class Console:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        return request(self.url + path, headers=headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def post(self, path: str, headers: dict[str, str] | None = None, data: bytes = b"") -> tuple[int, Any]:
        status, body, _ = request(self.url + path, method="POST", headers=headers, data=data)
        return status, json.loads(body) if body.startswith("{") else body


def request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def start_console(redis_url: str, prefix: str, tmp_path: Path, token: str | None = TOKEN, *extra: str) -> Console:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DISTCOMP_CONSOLE_TOKEN"}
    if token:
        env["DISTCOMP_CONSOLE_TOKEN"] = token
    log_path = tmp_path / f"console-{port}.log"
    argv = distcomp_argv("console", "--redis-url", redis_url, "--prefix", prefix, "--addr", f"127.0.0.1:{port}", *extra)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    console = Console(f"http://127.0.0.1:{port}", proc, log_path)

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return request(console.url + "/healthz")[0] == 200
        except OSError:
            return False

    wait_until(up, timeout=30, interval=0.1, what="the console answers")
    return console


def stop(console: Console) -> None:
    terminate(console.proc)


@pytest.fixture
def console(redis_url: str, prefix: str, tmp_path: Path, queue: Queue) -> Iterator[Console]:
    c = start_console(redis_url, prefix, tmp_path)
    yield c
    stop(c)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAILING = "shell:1:0:0:test -e {flag} || {{ echo 'zorglub-{tag} exploded' >&2; exit 3; }}"
SCRIPT = 'shell:2:0:0:echo "<script>alert(1)</script>"'


def failed_task(queue: Queue, start_worker: Callable[..., Any], tmp_path: Path, tag: str = "a") -> str:
    """A task that fails for good on a real worker (with a unique error text) until its flag file exists."""
    line = FAILING.format(flag=tmp_path / f"flag-{tag}", tag=tag)
    queue.submit([line])
    start_worker("--max-retry-per-task", "0")
    wait_until(lambda: line in queue.list_state("failed"), what="the task failed")
    return line


def task_url(queue: Queue, line: str) -> str:
    meta = queue.meta(line)
    assert meta is not None
    return f"/tasks/{meta[0]}"


def test_every_page_and_endpoint_answers(
    console: Console, queue: Queue, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    line = failed_task(queue, start_worker, tmp_path)
    queue.submit(["builtin:1:0:0:noop hello"])
    wait_until(lambda: queue.counts()["finished"] == 1, what="noop finished")
    for path in [
        "/",
        "/tasks",
        "/workers",
        "/login",
        task_url(queue, line),
        "/static/console.js",
        "/static/console.css",
        "/fragments/overview",
        "/fragments/workers",
        "/fragments/tasks?state=failed",
    ]:
        status, body, headers = console.get(path)
        assert status == 200, (path, status, body)
    for state in ("todo", "in_progress", "finished", "failed"):
        status, body, _ = console.get(f"/tasks?state={state}")
        assert status == 200 and "distcomp console" in body
    overview = console.json("/api/overview")
    assert overview["counts"]["failed"] == 1 and overview["counts"]["finished"] == 1
    assert overview["words"]["todo"] == "waiting" and "w1" in overview["workers"]
    assert overview["workers"]["w1"]["live"] is True and overview["problems"] == []
    workers = console.json("/api/workers")
    assert workers["w1"]["live"] is True
    [row] = console.json("/api/tasks?state=failed")["tasks"]
    assert row["line"] == line and row["state"] == "failed" and "zorglub-a" in row["detail"]
    assert row["id"] == queue.meta(line)[0]  # type: ignore[index]
    task = console.json(f"/api/tasks/{row['id']}")
    assert task["state"] == "failed" and task["worker"] == "w1" and "zorglub-a exploded" in task["reason"]
    assert task["priority"] == 1  # FAILING's
    assert task["attempts"] and task["attempts"][-1]["exit"] == 3
    status, body, _ = console.get(task_url(queue, line))
    assert "zorglub-a exploded" in body and 'id="task-state" class="state-failed"' in body
    frag = console.json(f"/fragments/task?id={row['id']}")
    assert "zorglub-a exploded" in frag["fragments"]["live"]


def test_unknown_ids_and_states_are_404(console: Console, queue: Queue) -> None:
    for path in ["/api/tasks?state=bogus", "/api/tasks/999999", "/api/nothing", "/fragments/nothing"]:
        status, body, _ = console.get(path)
        assert status == 404 and "error" in json.loads(body), (path, body)
    for path in ["/tasks?state=bogus", "/tasks/999999", "/tasks/abc", "/nothing"]:
        status, body, _ = console.get(path)
        assert status == 404 and "<h1>404</h1>" in body, (path, body)
    status, body, _ = console.get("/api/tasks?cursor=xyz")
    assert status == 400 and "cursor" in json.loads(body)["error"]


def test_search_finds_a_failed_task_by_its_error_text(
    console: Console, queue: Queue, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    line = failed_task(queue, start_worker, tmp_path, tag="needle")
    queue.submit([f"builtin:1:0:0:noop other {i}" for i in range(30)])
    wait_until(lambda: queue.counts()["finished"] == 30, what="the others finished")
    found = console.json("/api/tasks?state=failed&q=ZORGLUB-NEEDLE")["tasks"]
    assert [t["line"] for t in found] == [line]
    assert console.json("/api/tasks?state=failed&q=nomatch-anywhere")["tasks"] == []
    by_text = console.json("/api/tasks?state=finished&q=other%201")["tasks"]  # the task text, case-insensitive
    assert {t["line"] for t in by_text} == {"builtin:1:0:0:noop other 1"} | {
        f"builtin:1:0:0:noop other {i}" for i in range(10, 20)
    }
    status, body, _ = console.get("/tasks?state=failed&q=zorglub-needle")
    assert status == 200 and "zorglub-needle exploded" in body


def test_task_text_is_escaped(console: Console, queue: Queue, start_worker: Callable[..., Any]) -> None:
    queue.submit([SCRIPT])
    start_worker()
    wait_until(lambda: queue.counts()["finished"] == 1, what="the task ran")
    for path in ["/tasks?state=finished", task_url(queue, SCRIPT)]:
        status, body, headers = console.get(path)
        assert status == 200 and "<script>alert(1)</script>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "script-src 'self'" in headers["content-security-policy"]
    frag = console.json("/fragments/tasks?state=finished")["fragments"]["live"]
    assert "<script>alert" not in frag and "&lt;script&gt;" in frag


def test_pages_follow_scan_cursors(console: Console, queue: Queue) -> None:
    lines = [f"shell:{i % 3}:0:0:echo page {i:04d}" for i in range(260)]
    queue.submit(lines)
    seen: list[str] = []
    cursor: str | None = "0"
    pages = 0
    while cursor is not None:
        page = console.json(f"/api/tasks?state=todo&cursor={cursor}")
        seen += [t["line"] for t in page["tasks"]]
        assert all(t["detail"] == f"priority {int(t['line'][-4:]) % 3}" for t in page["tasks"])
        assert all(t["id"] is not None for t in page["tasks"])
        cursor, pages = page["cursor"], pages + 1
        assert pages < 50
    assert sorted(seen) == sorted(lines) and pages >= 2
    status, body, _ = console.get("/tasks?state=todo")
    assert 'id="next-page"' in body


def test_actions_need_the_token_and_the_same_origin(
    console: Console, queue: Queue, redis_url: str, prefix: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    line = failed_task(queue, start_worker, tmp_path)
    retry = api_url(queue, line, "retry")
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {**AUTH, "Origin": "http://evil.example"},
        {**AUTH, "Sec-Fetch-Site": "cross-site"},
        {**AUTH, "Origin": "null"},
    ]:
        for path in [retry, "/api/retry-failed", "/api/purge-finished"]:
            status, body = console.post(path, headers=headers)
            assert status == 403 and "error" in body, (path, headers, body)
    assert line in queue.list_state("failed")
    read_only = start_console(redis_url, prefix, tmp_path, None)
    try:
        status, body = read_only.post(retry, headers=AUTH)
        assert status == 403 and "read-only" in body["error"]
        assert "read-only" in read_only.get("/")[1]
    finally:
        stop(read_only)
    status, body = console.post(retry, headers={**AUTH, "Origin": console.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body["retried"] == 1 and body["line"] == line


def test_login_form_sets_a_strict_httponly_cookie(console: Console, queue: Queue) -> None:
    status, body, _ = request(console.url + "/login", "POST", {"Origin": console.url}, b"token=wrong")
    assert status == 403 and "wrong token" in body
    status, body, _ = request(
        console.url + "/login", "POST", {"Origin": "http://evil.example"}, f"token={TOKEN}".encode()
    )
    assert status == 403
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    req = urllib.request.Request(console.url + "/login", data=f"token={TOKEN}".encode(), method="POST")
    with opener.open(req, timeout=10) as resp:  # follows the 303 to /
        assert resp.status == 200 and "log out" in resp.read().decode()
        cookie = resp.headers.get("set-cookie") or ""
    queue.submit(["builtin:1:0:0:noop x"])
    with opener.open(urllib.request.Request(console.url + "/api/purge-finished", method="POST"), timeout=10) as resp:
        assert json.loads(resp.read()) == {"purged": 0}
    raw = urllib.request.Request(console.url + "/login", data=f"token={TOKEN}".encode(), method="POST")
    no_redirect = urllib.request.build_opener(NoRedirect())
    try:
        no_redirect.open(raw, timeout=10)
    except urllib.error.HTTPError as exc:
        cookie = exc.headers.get("set-cookie") or cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_retry_runs_the_task_again_and_status_agrees(
    console: Console, queue: Queue, redis_url: str, prefix: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    line = failed_task(queue, start_worker, tmp_path, tag="retry")
    (tmp_path / "flag-retry").write_text("now it passes")
    retry = api_url(queue, line, "retry")
    status, body = console.post(retry, headers=AUTH)
    assert status == 200 and body["retried"] == 1 and body["url"] == f"/tasks/{body['id']}"
    wait_until(lambda: line in queue.list_state("finished"), what="the retried task finished")
    task = console.json(f"/api/tasks/{body['id']}")
    status_json = json.loads(
        run_cli("status", "--json", "--finished", "--failed", "--redis-url", redis_url, "--prefix", prefix).stdout
    )
    assert task["state"] == "finished" and line in status_json["lists"]["finished"]
    assert line not in status_json["lists"]["failed"]
    counts = console.json("/api/overview")["counts"]
    assert counts == status_json["counts"]
    assert console.get(retry.replace("/api/tasks/", "/tasks/").removesuffix("/retry"))[0] == 404  # the old id is gone
    delete = api_url(queue, line, "delete")
    status, body = console.post(delete, headers=AUTH)
    assert status == 200 and body["deleted"] == 1 and queue.meta(line) is None
    status, body = console.post(delete, headers=AUTH)
    assert status == 404


def test_a_running_task_cannot_be_deleted_or_retried(
    console: Console, queue: Queue, start_worker: Callable[..., Any]
) -> None:
    queue.submit(["builtin:1:0:0:sleep 30"])
    start_worker()
    wait_until(lambda: queue.counts()["in_progress"] == 1, what="the task was claimed")
    url = task_url(queue, "builtin:1:0:0:sleep 30").replace("/tasks/", "/api/tasks/")
    for action in ("/retry", "/delete"):
        status, body = console.post(url + action, headers=AUTH)
        assert status == 409 and "in_progress" in body["error"]


def test_behind_a_reverse_proxy(redis_url: str, prefix: str, tmp_path: Path, queue: Queue) -> None:
    c = start_console(redis_url, prefix, tmp_path, TOKEN, "--root-path", "/console/")
    try:
        status, body, _ = c.get("/console/tasks")
        assert status == 200 and 'href="/console/workers"' in body and 'data-base="/console"' in body
        status, body, _ = c.get("/workers", headers={"X-Forwarded-Prefix": "/ops/queue"})
        assert status == 200 and 'href="/ops/queue/tasks"' in body
        status, body, _ = c.get("/workers", headers={"X-Forwarded-Prefix": '/"><script>'})
        assert status == 200 and "<script>" not in body.split("</head>", 1)[1]
    finally:
        stop(c)


def test_overview_names_problems(console: Console, queue: Queue, start_worker: Callable[..., Any]) -> None:
    start_worker()
    wait_until(lambda: console.json("/api/workers").get("w1", {}).get("live"), what="the worker is live")
    queue.submit(["shell:1:100000:0:echo too big"])
    problems = wait_until(lambda: console.json("/api/overview")["problems"], what="a problem shows")
    assert problems[0]["kind"] == "unrunnable" and "100000 GB" in problems[0]["text"]
    assert "100000 GB" in console.get("/")[1]


def test_a_page_stays_fast_with_a_big_queue(console: Console, queue: Queue) -> None:
    queue.submit([f"shell:1:0:0:echo big {i}" for i in range(20_000)])
    started = time.monotonic()
    for path in ["/", "/tasks?state=todo", "/tasks?state=todo&q=big%2019999", "/api/overview"]:
        assert console.get(path)[0] == 200
    assert time.monotonic() - started < 5


def test_a_cancelled_task_shows_as_cancelled(console: Console, queue: Queue, redis_url: str, prefix: str) -> None:
    queue.submit(["shell:1:0:0:echo never"])
    if not hasattr(queue.keys, "cancelled_tasks"):
        pytest.skip("this queue has no cancel")
    result = run_cli("cancel", "shell:1:0:0:echo never", "--redis-url", redis_url, "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    url = task_url(queue, "shell:1:0:0:echo never")
    assert console.json("/api" + url)["state"] == "cancelled"
    status, body, _ = console.get(url)
    assert status == 200 and 'class="state-cancelled">cancelled<' in body


def cli_json(redis_url: str, prefix: str, *args: str) -> Any:
    result = run_cli(*args, "--json", "--redis-url", redis_url, "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def api_url(queue: Queue, line: str, action: str) -> str:
    return f"/api{task_url(queue, line)}/{action}"


def test_jobs_pages_agree_with_the_cli_and_retry_keeps_the_job(
    console: Console, queue: Queue, redis_url: str, prefix: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    bad = [FAILING.format(flag=tmp_path / f"flag-{tag}", tag=tag) for tag in ("j1", "j2")]
    queue.submit([*bad, "builtin:1:0:0:noop sweep a"], job="sweep-a")
    queue.submit(["builtin:1:0:0:noop sweep b1", "builtin:1:0:0:noop sweep b2"], job="sweep-b")
    start_worker("--max-retry-per-task", "0")
    wait_until(lambda: all(j["pending"] == 0 for j in views.jobs(queue).values()), what="both jobs done")

    def agree() -> dict[str, Any]:
        jobs, cli_jobs = console.json("/api/jobs"), cli_json(redis_url, prefix, "jobs")
        assert {name: {k: j[k] for k in cli_jobs[name]} for name, j in jobs.items()} == cli_jobs
        job, cli_job = console.json("/api/jobs/sweep-a"), cli_json(redis_url, prefix, "job", "sweep-a")
        assert {k: job[k] for k in cli_job} == cli_job
        return dict(job)

    job = agree()
    assert job["submitted"] == 3 and job["failed"] == 2 and job["done"] == 3 and job["percent"] == 100.0
    assert set(job["failures"]) == set(bad) and "zorglub-j1 exploded" in job["failures"][bad[0]]
    status, body, _ = console.get("/jobs")
    assert status == 200 and 'href="/jobs/sweep-a"' in body and "<progress" in body and 'class="here">jobs<' in body
    status, body, _ = console.get("/jobs/sweep-a")
    assert status == 200 and "zorglub-j2 exploded" in body and f'href="/tasks/{queue.meta(bad[1])[0]}"' in body  # type: ignore[index]
    assert 'id="job-failed">2<' in body
    assert "sweep-b" in console.json("/fragments/jobs")["fragments"]["live"]
    assert 'id="job-done">2/2 done' in console.json("/fragments/job?name=sweep-b")["fragments"]["live"]
    for path in ["/jobs/nope", "/api/jobs/nope", "/fragments/job?name=nope"]:
        assert console.get(path)[0] == 404, path
    for path in ["/api/jobs/nope/cancel", "/api/jobs/nope/retry-failed"]:
        assert console.post(path, headers=AUTH)[0] == 404, path
    for tag in ("j1", "j2"):
        (tmp_path / f"flag-{tag}").write_text("passes now")
    status, body = console.post(api_url(queue, bad[0], "retry"), headers=AUTH)  # one task: back into its job
    assert status == 200 and body["job"] == "sweep-a" and views.job_of(queue, bad[0]) == "sweep-a"
    assert console.post("/api/jobs/sweep-a/retry-failed", headers={"Origin": "http://evil.example", **AUTH})[0] == 403
    status, body = console.post("/api/jobs/sweep-a/retry-failed", headers=AUTH)
    assert status == 200 and body == {"job": "sweep-a", "retried": 1} and views.job_of(queue, bad[1]) == "sweep-a"
    wait_until(lambda: all(t in queue.list_state("finished") for t in bad), what="the retried tasks finished")
    job = agree()
    assert job["failed"] == 0 and job["failures"] == {} and job["pending"] == 0
    assert console.json("/api/jobs/sweep-b")["finished"] == 2


def test_cancel_a_waiting_task_needs_the_token_and_the_same_origin(
    console: Console, queue: Queue, redis_url: str, prefix: str
) -> None:
    line = "shell:1:0:0:echo cancel me"
    queue.submit([line], job="waiting")
    status, body, _ = console.get(task_url(queue, line))
    assert status == 200 and 'id="cancel"' in body
    cancel = api_url(queue, line, "cancel")
    for headers in [{}, {"Authorization": "Bearer wrong"}, {**AUTH, "Origin": "http://evil.example"},
                    {**AUTH, "Sec-Fetch-Site": "cross-site"}]:  # fmt: skip
        status, body = console.post(cancel, headers=headers)
        assert status == 403 and "error" in body, headers
    assert line in queue.list_state("todo")
    status, body = console.post(cancel, headers={**AUTH, "Origin": console.url})
    assert status == 200 and body == {"cancel": "cancelled", "line": line}
    assert console.json("/api" + task_url(queue, line))["state"] == "cancelled"
    status, body, _ = console.get(task_url(queue, line))
    assert 'class="state-cancelled">cancelled<' in body and 'id="cancel"' not in body
    assert console.json("/api/overview")["counts"]["cancelled"] == 1
    assert [t["line"] for t in console.json("/api/tasks?state=cancelled")["tasks"]] == [line]
    assert "cancelled (1)" in console.get("/tasks?state=cancelled")[1]
    assert console.post(cancel, headers=AUTH) == (200, {"cancel": "already_cancelled", "line": line})
    assert console.json("/api/jobs/waiting")["cancelled"] == 1
    assert cli_json(redis_url, prefix, "job", "waiting")["cancelled"] == 1


def test_job_cancel_stops_its_waiting_and_running_tasks(
    console: Console, queue: Queue, start_worker: Callable[..., Any]
) -> None:
    queue.submit(["builtin:1:0:0:sleep 30"], job="long")
    start_worker()
    wait_until(lambda: queue.counts()["in_progress"] == 1, what="the sleep was claimed")
    queue.submit([f"shell:1:999:0:echo never {i}" for i in range(4)], job="long")  # too big: they stay waiting
    queue.submit(["shell:1:999:0:echo other"], job="other")
    assert console.post("/api/jobs/long/cancel")[0] == 403
    status, body = console.post("/api/jobs/long/cancel", headers=AUTH)
    assert status == 200 and body == {"job": "long", "tasks": 5, "result": {"cancelled": 4, "stopping": 1}}
    stopped = lambda: (j := console.json("/api/jobs/long"))["cancelled"] == 5 and j  # noqa: E731
    job = wait_until(stopped, what="the worker stopped it")
    assert job["pending"] == 0 and job["percent"] == 100.0
    other = console.json("/api/jobs/other")
    assert (other["pending"], other["todo"], other["in_progress"]) == (1, 1, 0) and queue.counts()["todo"] == 1


def test_job_eta_from_recent_finishes(console: Console, queue: Queue, start_worker: Callable[..., Any]) -> None:
    queue.submit([f"builtin:1:0:0:sleep 0.2 eta-{i}" for i in range(40)], job="slow")
    queue.submit(["shell:1:999:0:echo never"], job="stuck")  # no worker can take it: no rate, ever
    queue.submit(["builtin:1:0:0:noop quick"], job="quick")
    assert console.json("/api/jobs/slow")["eta"] == "unknown"  # nothing finished yet
    start_worker("--concurrency", "2")
    known = lambda: (j := console.json("/api/jobs/slow"))["eta_s"] and j["pending"] and j  # noqa: E731
    job = wait_until(known, what="an ETA for the running job")
    assert job["remaining"] == job["pending"] and 0 < job["rate_per_s"] < 100
    assert job["eta_s"] == pytest.approx(job["remaining"] / job["rate_per_s"])
    assert job["eta"] not in ("unknown", "done") and job["eta"].endswith("s")
    page = console.get("/jobs/slow")[1]
    assert 'id="job-eta">' in page and 'id="job-eta">unknown<' not in page and "tasks/s" in page
    stuck = console.json("/api/jobs/stuck")
    assert (stuck["eta"], stuck["eta_s"], stuck["remaining"]) == ("unknown", None, 1)
    wait_until(lambda: views.job(queue, "slow")["pending"] == 0, what="the job finished")  # type: ignore[index]
    jobs = console.json("/api/jobs")
    assert (jobs["slow"]["eta"], jobs["slow"]["eta_s"], jobs["quick"]["eta"]) == ("done", 0.0, "done")
    assert jobs["stuck"]["eta"] == "unknown" and ">ETA<" in console.get("/jobs")[1]
    assert views.job_eta(queue, "nope") is None and views.job_eta(queue, "stuck") == {
        "remaining": 1, "rate_per_s": None, "eta_s": None}  # fmt: skip


def test_recent_rates_count_each_task_of_a_batch(queue: Queue) -> None:
    """A settle of N tasks is one event listing N tasks: each is counted, for its own job."""
    queue.submit([f"builtin:1:0:0:noop r{i}" for i in range(6)], job="a")
    queue.submit(["builtin:1:0:0:noop other"], job="b")
    assert queue.acquire_lease("w", "i", 60_000)
    held = {c.line: c.token for c in queue.claim("w", "i", 10, ClaimLimits(8, 8)).tasks}
    for batch in (["r0"], ["r1", "r2", "other"], ["r3", "r4"]):  # three settles: three events
        reports = [Report(f"builtin:1:0:0:noop {t}", held[f"builtin:1:0:0:noop {t}"], "finished", "") for t in batch]
        queue.settle("w", "i", reports, 0, ClaimLimits(8, 8), max_retry=0)
        time.sleep(0.05)
    rates = views.recent_rates(queue)
    assert set(rates) == {"a"}  # b has one batch: no rate yet
    span_s = 4 / rates["a"]  # a's 4 tasks after its first batch, over that batch's age
    assert 0.1 <= span_s < 10
    eta = views.job_eta(queue, "a")  # a moment later: a slightly lower rate
    assert eta is not None and eta["remaining"] == 1 and 0 < eta["rate_per_s"] <= rates["a"]
    assert eta["eta_s"] == pytest.approx(1 / eta["rate_per_s"])


def json_post(console: Console, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return console.post(path, headers={"Content-Type": "application/json", **(headers or {})},
                        data=json.dumps(body).encode())  # fmt: skip


def test_task_list_filters_by_job(
    console: Console, queue: Queue, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    queue.submit([f"shell:1:999:0:echo a{i}" for i in range(70)], job="ja")  # too big: they stay waiting
    queue.submit([f"shell:1:999:0:echo b{i}" for i in range(70)], job="jb")
    seen, cursor = [], "0"
    while cursor is not None:  # follows the scan across pages, only ja's tasks
        page = console.json(f"/api/tasks?state=todo&job=ja&cursor={cursor}")
        assert page["job"] == "ja" and all(t["id"] is not None for t in page["tasks"])
        seen, cursor = seen + [t["line"] for t in page["tasks"]], page["cursor"]
    assert sorted(seen) == sorted(f"shell:1:999:0:echo a{i}" for i in range(70))
    found = console.json("/api/tasks?state=todo&job=jb&q=B7")["tasks"]
    assert {t["line"] for t in found} == {"shell:1:999:0:echo b7"}
    status, body, _ = console.get("/tasks?state=todo&job=jb")
    assert status == 200 and 'id="job-filter"' in body and 'name="job" value="jb"' in body
    assert "echo b1<" in body and "echo a1<" not in body and "state=failed&amp;job=jb" in body
    for path in ["/tasks?state=todo&job=nope", "/api/tasks?job=nope", "/fragments/tasks?job=nope"]:
        assert console.get(path)[0] == 404, path
    assert 'href="/tasks?state=failed&amp;job=ja"' in console.get("/jobs/ja")[1]


def test_bulk_retry_delete_and_cancel(
    console: Console, queue: Queue, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    bad = [FAILING.format(flag=tmp_path / f"flag-{tag}", tag=tag) for tag in ("b1", "b2", "b3")]
    other = FAILING.format(flag=tmp_path / "flag-o1", tag="o1")
    queue.submit([*bad, "builtin:1:0:0:noop bulk ok"], job="bulk")
    queue.submit([other], job="other")
    start_worker("--max-retry-per-task", "0")
    wait_until(lambda: queue.counts()["failed"] == 4 and queue.counts()["finished"] == 1, what="the jobs ran")
    ids = {line: str(queue.meta(line)[0]) for line in [*bad, other, "builtin:1:0:0:noop bulk ok"]}  # type: ignore[index]
    retry = {"state": "failed", "q": "ZORGLUB-B", "job": "bulk"}
    for headers in [{}, {"Authorization": "Bearer wrong"}, {**AUTH, "Origin": "http://evil.example"}]:
        status, body = json_post(console, "/api/tasks/retry", retry, headers)
        assert status == 403 and "error" in body, headers
    assert queue.counts()["failed"] == 4
    status, body, _ = console.get("/tasks?state=failed", headers=AUTH)
    assert 'id="bulk-retry"' in body and 'id="bulk-delete"' in body and 'id="bulk-cancel"' not in body
    for path in ("flag-b1", "flag-b2", "flag-b3", "flag-o1"):
        (tmp_path / path).write_text("passes now")
    status, body = json_post(console, "/api/tasks/retry", retry, AUTH)  # the selection form
    assert status == 200 and body == {"action": "retry", "tasks": 3, "result": {"retried": 3}, "unknown_ids": []}
    assert other in queue.list_state("failed") and all(views.job_of(queue, t) == "bulk" for t in bad)
    wait_until(lambda: all(t in queue.list_state("finished") for t in bad), what="the retried tasks finished")
    delete = {"ids": [ids[other], ids["builtin:1:0:0:noop bulk ok"], 999999]}  # the ids form
    status, body = json_post(console, "/api/tasks/delete", delete, AUTH)
    assert status == 200 and body["result"] == {"deleted": 2} and body["unknown_ids"] == [999999]
    assert queue.meta(other) is None and queue.counts()["finished"] == 3
    queue.submit([f"shell:1:999:0:echo wait {i}" for i in range(3)], job="waits")
    waiting = [str(queue.meta(f"shell:1:999:0:echo wait {i}")[0]) for i in range(3)]  # type: ignore[index]
    finished_id = str(queue.meta(bad[0])[0])  # type: ignore[index]
    status, body = json_post(console, "/api/tasks/cancel", {"ids": [*waiting[:2], finished_id]}, AUTH)
    assert status == 200 and body["result"] == {"cancelled": 2, "finished": 1}  # the finished one: said, unchanged
    assert bad[0] in queue.list_state("finished") and views.job(queue, "bulk")["cancelled"] == 0  # type: ignore[index]
    status, body = console.post("/api/tasks/cancel?state=todo&job=waits", headers=AUTH)  # a query string, no body
    assert status == 200 and body["result"] == {"cancelled": 1} and queue.counts()["todo"] == 0
    status, body = console.post("/api/tasks/delete?state=cancelled&q=wait", headers=AUTH)
    assert status == 200 and body["result"] == {"unchanged": 3}  # delete applies to finished or failed only
    for path, data, code in [("/api/tasks/retry", {}, 400), ("/api/tasks/retry", {"ids": "1"}, 400),
                             ("/api/tasks/retry", {"state": "bogus"}, 404),
                             ("/api/tasks/retry", {"state": "failed", "job": "nope"}, 404)]:  # fmt: skip
        status, body = json_post(console, path, data, AUTH)
        assert status == code and "error" in body, (data, body)
    status, body = console.post("/api/tasks/retry", headers={**AUTH, "Content-Type": "application/json"}, data=b"{")
    assert status == 400 and "JSON object" in body["error"]


def test_cancel_of_a_task_that_just_finished_changes_nothing(
    console: Console, queue: Queue, start_worker: Callable[..., Any]
) -> None:
    line = "builtin:1:0:0:noop done already"
    queue.submit([line], job="quick")
    start_worker()
    wait_until(lambda: line in queue.list_state("finished"), what="it finished")
    before = console.json("/api" + task_url(queue, line))
    status, body = console.post(api_url(queue, line, "cancel"), headers=AUTH)
    assert status == 409 and "this one is finished" in body["error"]
    assert console.json("/api" + task_url(queue, line)) == before
    assert console.json("/api/jobs/quick")["cancelled"] == 0 and queue.counts()["cancelled"] == 0


def test_overview_names_stranded_tasks_and_dead_workers_and_agrees_with_status_and_audit(
    console: Console, queue: Queue, redis_url: str, prefix: str, start_worker: Callable[..., Any]
) -> None:
    from distcomp_obs.audit import audit

    queue.submit(["builtin:1:0:0:noop first", "builtin:1:0:0:sleep 60"])
    worker = start_worker("--concurrency", "2")
    wait_until(lambda: queue.counts()["in_progress"] == 1 and queue.counts()["finished"] == 1, what="one runs")
    worker.kill9()  # no worker left to reap: its task stays held by a dead worker
    queue.submit(["shell:1:0:0:echo cancelled", "shell:1:0:0:echo waits"])
    assert queue.cancel(["shell:1:0:0:echo cancelled"], who="test") == ["cancelled"]
    three = lambda: len(found := console.json("/api/overview")["problems"]) == 3 and found  # noqa: E731
    problems = wait_until(three, timeout=30, what="the lease expired")
    assert {p["kind"] for p in problems} == {"no_live_worker", "stranded", "dead_worker"}
    assert "dead worker w1 holds 1 task(s)" in console.get("/")[1]
    overview = console.json("/api/overview")
    status_json = cli_json(redis_url, prefix, "status")
    assert {k: overview["counts"][k] for k in status_json["counts"]} == status_json["counts"]
    report = audit(queue)
    assert {k: overview["counts"].get(k, 0) for k in report.counts if k != "submitted"} == {
        k: n for k, n in report.counts.items() if k != "submitted"}  # fmt: skip
    assert overview["counts"] == {"todo": 1, "in_progress": 1, "finished": 1, "failed": 0, "cancelled": 1}
    for state in reads_states():
        rows = console.json(f"/api/tasks?state={state}")["tasks"]
        assert len(rows) == overview["counts"][state], state


def reads_states() -> tuple[str, ...]:
    from distcomp_obs.console.reads import STATES

    return STATES
