"""Redis connections from URLs (one server or a Redis Cluster) and instrumented round trips."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.retry import Retry

from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.metrics import ROUNDTRIP_OPS, WorkerMetrics, classify_redis_error
from distcomp_obs.netutil import parse_host_list_url
from distcomp_obs.redis_sentinel import connect_sentinel, is_sentinel_url
from distcomp_obs.redis_url import client_url
from distcomp_obs.redis_url import redact_url as redact_url  # re-exported: callers import it from here

T = TypeVar("T")


#: URL schemes of a Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]/`
#: (rediss+cluster: TLS). The hosts are startup nodes: any one that answers is enough.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: What `connect` returns: one Redis server, or a Redis Cluster (redis-py's RedisCluster is no
#: redis.Redis subclass, but has the same command methods; see docs/RELIABILITY.md, Redis Cluster).
Client: TypeAlias = "redis.Redis | RedisCluster"


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL -> (the URL of its first node with the plain scheme, for redis-py to read
    credentials, TLS and query options from; every startup node as (host, port)).
    ValueError if it is not a cluster URL, names no host, has a malformed host or port, or selects
    a database other than 0 (a cluster has only db 0)."""
    parts = parse_host_list_url(url, CLUSTER_SCHEMES, 6379, "cluster", "no host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    host, port = parts.hosts[0]
    first = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.plain}://{parts.userinfo}{first}/{query}", parts.hosts


def connect(url: str, *, timeout_s: float | None = 5.0, check: bool = True) -> Client:
    """A client for redis://, rediss:// (TLS) or unix:// URLs, with ACL user/password
    (`connect_server`), or for redis+cluster:// and rediss+cluster:// URLs a Redis Cluster client
    (`connect_cluster`), or for redis+sentinel:// and rediss+sentinel:// URLs a client of a
    Sentinel service's master that follows failovers (`redis_sentinel.connect_sentinel`).

    Every form takes a `password_file=PATH` query option (what the redis_password_file setting
    adds): the password is read from that file here (`client_url`), never from argv or the URL.
    An unencoded / ? or # in a URL's password is refused (ConfigError), not guessed at.

    redis-py's own retry is off: a re-sent claim or report could be executed twice without us
    knowing. The worker retries itself, with backoff, and reconciles after a connection error.
    """
    if is_cluster_url(url):
        return connect_cluster(url, timeout_s=timeout_s, check=check)
    if is_sentinel_url(url):
        try:
            client = connect_sentinel(client_url(url), timeout_s=timeout_s)
        except ValueError as exc:
            raise RedisUnavailable(f"bad Redis Sentinel URL {redact_url(url)}: {exc}") from None
        if check:
            _check(client, url)
        return client
    return connect_server(url, timeout_s=timeout_s, check=check)


def connect_server(url: str, *, timeout_s: float | None = 5.0, check: bool = True) -> redis.Redis:
    """A client of one Redis server (what needs one server's INFO: the bench, `distcomp run`)."""
    if is_cluster_url(url):
        raise RedisUnavailable(f"{redact_url(url)} is a Redis Cluster: this needs one Redis server's URL")
    client = redis.Redis.from_url(
        client_url(url),
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s or 5.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    if check:
        _check(client, url)
    return client


def _check(client: Client, url: str) -> None:
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError) as exc:
        raise _unavailable(exc, url) from None


def _unavailable(exc: Exception, url: str) -> RedisUnavailable:
    """RedisUnavailable naming the (redacted) URL and what went wrong."""
    if isinstance(exc, redis.AuthenticationError):  # a ConnectionError subclass: test it first
        return RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}")
    if isinstance(exc, redis.ResponseError):
        return RedisUnavailable(f"Redis at {redact_url(url)} answered with an error: {exc}")
    if isinstance(exc, RedisClusterException):  # e.g. "Cluster mode is not enabled on this node"
        return RedisUnavailable(f"Redis Cluster at {redact_url(url)}: {exc}")
    return RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}")


def _as_redis_error(exc: RedisClusterException) -> Exception:
    """The error a single Redis would have raised where the cluster client found no node: the
    Redis error behind it (AuthenticationError, ConnectionError, NOPERM...); a ResponseError when
    the node is no cluster node (a wrong URL: waiting will not heal it); a ConnectionError when
    no node answers or slots are uncovered. A usage error (keys of several slots in one script or
    transaction) is returned as it is."""
    inner: BaseException | None = exc.__cause__ or exc.__context__
    while isinstance(inner, RedisClusterException) and (inner.__cause__ or inner.__context__):
        inner = inner.__cause__ or inner.__context__  # redis-py wraps e.g. NOPERM in "not enabled"
    text = str(inner or exc)
    if "cluster support disabled" in text or "not enabled" in text:  # a single Redis
        return redis.ResponseError(f"{text} (for a single Redis use a redis:// or rediss:// URL)")
    if isinstance(inner, redis.RedisError | OSError):
        return inner
    if isinstance(exc, SlotNotCoveredError) or "cannot be connected" in text or "not covered" in text:
        return redis.ConnectionError(text)
    return exc


def _redis_error_of(exc: Exception) -> Exception:
    """What a single Redis would have raised instead of a cluster-only error (see ClusterClient)."""
    if isinstance(exc, RedisClusterException):
        return _as_redis_error(exc)
    if isinstance(exc, ClusterDownError):  # CLUSTERDOWN: the command did not run; wait as for a down server
        return redis.ConnectionError(f"Redis Cluster is down: {exc}")
    return exc


def _reraise(exc: Exception) -> NoReturn:
    error = _redis_error_of(exc)
    if error is exc:
        raise exc
    raise error from exc


class ClusterClient(RedisCluster):
    """redis-py's RedisCluster, failing as a single Redis does.

    - When no node answers, or the cluster is down (CLUSTERDOWN: a slot has no master), a
      command, script or pipeline raises redis.ConnectionError (or the AuthenticationError behind
      it), never a RedisClusterException or a ResponseError: the worker waits and reconnects as
      for one server, and reconciles as after any connection error.
    - With lazy=True it is built even when no node answers (RedisCluster reads the slot map in
      its constructor): the first command tries again, and raises what it meets. So the worker
      and the exporter start while the cluster is down, as they do for one server.
    - ping() is true only when the cluster serves (every master: cluster_state:ok), not when
      one node answers.
    - Keyless commands (CLUSTER INFO, TIME, CONFIG GET) go to a "default" master; one that fails is
      replaced, so the next goes to another master (redis-py replaces it only when it retries,
      and retries are off).
    """

    def __init__(self, *, lazy: bool = False, **kwargs: Any) -> None:
        self._init_kwargs = kwargs
        self._init_lock = threading.Lock()
        self._init_thread: int | None = None  # the thread inside RedisCluster.__init__ (it sends COMMAND)
        self._ready = False
        try:
            self._initialise()
        except (redis.RedisError, OSError):
            if not lazy:
                raise

    def _initialise(self) -> None:
        kwargs = dict(self._init_kwargs)
        kwargs["startup_nodes"] = list(kwargs.get("startup_nodes") or [])  # RedisCluster appends to it
        self._init_thread = threading.get_ident()
        try:
            super().__init__(**kwargs)
        except RedisClusterException as exc:
            _reraise(exc)
        finally:
            self._init_thread = None
        self._ready = True

    def _ensure_ready(self) -> None:
        if self._ready or self._init_thread == threading.get_ident():
            return
        with self._init_lock:
            if not self._ready:
                self._initialise()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_ready()
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError):
            self.replace_default_node()
            raise
        except (RedisClusterException, ClusterDownError) as exc:
            _reraise(exc)

    def ping(self, **kwargs: Any) -> bool:
        """Whether the cluster serves: every master answers and reports cluster_state:ok, else
        ConnectionError. (Nodes answer PING before the cluster is formed and after it lost a
        master, while commands fail CLUSTERDOWN.) CLUSTER INFO to each master: one command per
        master, only where Redis is waited for (worker start, after an outage; /healthz)."""
        infos = self.execute_command("CLUSTER INFO", target_nodes=self.PRIMARIES)
        if isinstance(infos, dict) and "cluster_state" in infos:  # one master: its reply as it is
            infos = {"master": infos}
        states = {str(infos[n].get("cluster_state")) for n in infos} if isinstance(infos, dict) else {"?"}
        if states != {"ok"}:
            raise redis.ConnectionError(f"Redis Cluster is down: cluster_state {', '.join(sorted(states))}")
        return True

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        self._ensure_ready()
        pipe: ClusterPipeline = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        pipe.__class__ = _ClusterClientPipeline  # adds no state: only execute() differs
        return pipe

    def pubsub(self, node: Any = None, host: Any = None, port: Any = None, **kwargs: Any) -> ClusterPubSub:
        self._ensure_ready()
        return ClusterPubSub(self, node=node, host=host, port=port, **kwargs)

    def close(self) -> None:
        if self._ready:
            super().close()


class _ClusterClientPipeline(ClusterPipeline):
    """A ClusterPipeline whose execute() fails as ClusterClient's commands do, and that may carry
    TIME (redis-py blocks it in cluster pipelines: it has no key): it goes to the default master,
    in parallel with the commands for the queue's master (Queue.snapshot reads the server clock).
    (redis-py re-sends, one by one, the commands of a non-transactional pipeline that met a
    connection error: such pipelines must hold only reads or idempotent writes; the queue's do.)"""

    def time(self, **kwargs: Any) -> Any:
        return self.execute_command("TIME", **kwargs)  # type: ignore[no-untyped-call]

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)
        except (RedisClusterException, ClusterDownError) as exc:
            _reraise(exc)


def server_time(client: Client, key: str) -> tuple[int, int]:
    """TIME (seconds, microseconds) of the server holding `key`: on a cluster, the master of the
    queue whose key it is, so a time compared with what that queue's scripts wrote (their
    redis.call('TIME')) comes from the same clock. On one server, plain TIME."""
    if isinstance(client, RedisCluster):
        sec, usec = client.execute_command("TIME", target_nodes=client.get_node_from_key(key))  # type: ignore[no-untyped-call]
        return int(sec), int(usec)
    return client.time()


def server_run_id(client: Client, key: str) -> str:
    """The run_id of the server holding `key` (it changes when that server restarts, or when a
    failover makes another server the master): what a worker compares to notice a rollback.
    "" when an ACL user may not run INFO (then no rollback is noticed this way; docs/SECURITY.md)."""
    try:
        if isinstance(client, RedisCluster):
            info: Any = client.execute_command("INFO", "server", target_nodes=client.get_node_from_key(key))  # type: ignore[no-untyped-call]
        else:
            info = client.info("server")
    except redis.exceptions.NoPermissionError:
        return ""
    if isinstance(info, dict) and len(info) == 1 and isinstance(next(iter(info.values())), dict):
        info = next(iter(info.values()))  # one node's reply keyed by the node
    return str(info.get("run_id", "")) if isinstance(info, dict) else ""


def connect_cluster(url: str, *, timeout_s: float | None = 5.0, check: bool = True) -> ClusterClient:
    """A Redis Cluster client: every key of one queue shares one hash slot (keys.Keys.tag), so
    each script, transaction and pipeline of a queue goes to the one master serving it.

    The client reads the slot map from the first startup node that answers. check=True: that and
    a PING must succeed, else RedisUnavailable naming the URL; check=False: it never fails here
    (see ClusterClient's lazy). Retries are off as for one server (Retry(NoBackoff(), 0));
    MOVED/ASK redirections are followed (the node that redirects did not run the command)."""
    try:
        first, nodes = parse_cluster_url(client_url(url))  # holds the password: never shown
    except ValueError as exc:
        raise RedisUnavailable(f"bad Redis Cluster URL {redact_url(url)}: {exc}") from None
    try:
        client = ClusterClient(
            lazy=not check,
            url=first,
            startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],  # type: ignore[no-untyped-call]
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s or 5.0,
            retry=Retry(NoBackoff(), 0),
        )
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        raise _unavailable(exc, url) from None
    if check:
        _check(client, url)
    return client


#: Error replies that mean "Redis cannot serve us now", not "this request is wrong": RoundTrips
#: raises them as RedisRefused, a ConnectionError, so every path that survives a lost connection
#: (wait, keep results, retry, reconcile) survives these too. code -> the cause, as logs and
#: /healthz name it.
REFUSALS = {
    "READONLY": "read-only (a replica now: failover?)",
    "MISCONF": "refusing writes: persistence is failing (MISCONF)",
    "OOM": "out of memory (maxmemory reached)",
    "LOADING": "loading its data",
    "BUSY": "busy running a script",
    "NOSCRIPT": "missing our scripts",
    "MASTERDOWN": "cut off from its master",
    "TRYAGAIN": "resharding (TRYAGAIN)",
    "CLUSTERDOWN": "cluster down",
    "NOREPLICAS": "refusing writes: too few replicas (min-replicas-to-write)",
}


class RedisRefused(redis.ConnectionError):
    """An error reply in REFUSALS, raised in place of the ResponseError (kept as __cause__)."""

    def __init__(self, code: str, reply: str) -> None:
        self.code = code
        super().__init__(f"Redis is {REFUSALS[code]}: {code} {reply}")


def refusal_code(exc: BaseException) -> str | None:
    """The REFUSALS code of an error reply, or None. redis-py strips the code from the message of
    the replies it maps to classes (ReadOnlyError, OutOfMemoryError, ...) and keeps it in others."""
    if isinstance(exc, RedisRefused):
        return exc.code
    if not isinstance(exc, redis.ResponseError):
        return None
    code = str(getattr(exc, "status_code", "") or "") or str(exc).split(" ", 1)[0]
    return code if code in REFUSALS else None


def outage_cause(exc: BaseException) -> str:
    """What a lost round trip says about Redis, for one log line and /healthz."""
    code = refusal_code(exc)
    if code is not None:
        return REFUSALS[code]
    if isinstance(exc, redis.AuthenticationError):
        return "refusing our credentials"
    if isinstance(exc, redis.ResponseError):
        return "answering with an error"
    return "unreachable"


class RoundTrips:
    """Times every round trip to Redis and counts the commands it carried, by operation.

    The timer wraps the real network call, whatever it is: a single command, a pipeline or a
    script. Counts are also kept in plain ints (cheap to read for the bench and `workers`).
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._seconds = {op: metrics.redis_roundtrip_seconds.labels(op) for op in ROUNDTRIP_OPS}
        self._commands = {op: metrics.redis_roundtrip_commands.labels(op) for op in ROUNDTRIP_OPS}
        self.count = dict.fromkeys(ROUNDTRIP_OPS, 0)
        self.commands = dict.fromkeys(ROUNDTRIP_OPS, 0)
        # (op, result) -> {trace_id, span_id} of the sampled span this round trip belongs to, or None.
        # It sees the result because a claim's span exists only if the claim returned tasks.
        self.exemplar: Callable[[str, Any], dict[str, str] | None] = lambda op, result: None

    def call(self, op: str, commands: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except redis.RedisError as exc:
            code = refusal_code(exc)
            label = classify_redis_error(exc)
            if label == "response" and code is not None:
                label = code.lower()  # Redis refusing to serve: handled like an outage
            self.metrics.redis_errors.labels(op, label).inc()
            if code is not None and not isinstance(exc, RedisRefused):
                raise RedisRefused(code, str(exc)) from exc
            raise
        elapsed = time.perf_counter() - start
        self.count[op] += 1
        self.commands[op] += commands
        self._seconds[op].observe(elapsed, self.exemplar(op, result))
        self._commands[op].observe(commands)
        return result
