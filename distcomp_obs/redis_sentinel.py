"""Redis Sentinel URLs and clients: a client of a Sentinel service's current master that follows
failovers (see docs/RELIABILITY.md, Redis Sentinel).

    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?options]
    rediss+sentinel://...   TLS to the sentinels and to the master

The hosts are sentinels (port 26379 when left out); any one that answers names the master. The
credentials authenticate to the master (and replicas), not to the sentinels, unless the query has
`sentinel_auth=url`. Other query options are redis-py's, as in a redis:// URL (`ssl_ca_certs=...`).

The client is redis-py's `Sentinel(...).master_for(service)`: every new connection asks a sentinel
for the master's address, so after a connection error (the old master died) the next command
reaches the new master, and a READONLY reply (the old master was demoted to a replica and still
answers) closes the connection and raises redis.ConnectionError, so that command is not re-sent
and the next one re-discovers the master. As for one server, redis-py's retries are off: the
worker retries and reconciles itself (docs/ARCHITECTURE.md, Lost replies).

redis-py alone keeps using an open connection to the old master as long as it answers. After a
manual failover (SENTINEL FAILOVER) the old master stays a writable master until the sentinels
demote it, about 10 s later, and every write it takes meanwhile is lost. So while a client is in
use (a command within IN_USE_S), a watcher thread asks every sentinel where the master is, every
MASTER_RECHECK_S (the newest configuration epoch wins), and when it moved closes the idle
connections to the old one (busy ones close when released); a subscriber raises ConnectionError
so its owner subscribes again.

This module imports nothing from the package: `redis_io.connect` dispatches to it.
"""

from __future__ import annotations

import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from distcomp_obs.netutil import parse_host_list_url

#: URL schemes of a Sentinel-managed master, and the plain scheme each stands for
SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}
#: a sentinel's port when the URL gives none
SENTINEL_PORT = 26379
#: the query option that says whether the URL's credentials also authenticate to the sentinels
SENTINEL_AUTH = "sentinel_auth"
#: how often a client in use asks the sentinels whether the master moved (see the docstring),
#: and for how long after its last command it still counts as in use
MASTER_RECHECK_S = 0.5
IN_USE_S = 60.0


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


@dataclass(frozen=True)
class SentinelTarget:
    """What a sentinel URL names."""

    service: str
    sentinels: list[tuple[str, int]]
    db: int = 0
    tls: bool = False
    #: connection options of the master (redis-py's parse_url: credentials, query options)
    options: dict[str, Any] = field(default_factory=dict)
    #: whether the URL's user and password also authenticate to the sentinels
    sentinel_auth: bool = False


def parse_sentinel_url(url: str) -> SentinelTarget:
    """A sentinel URL -> SentinelTarget. ValueError if it is not one, names no sentinel or no
    service, has a malformed host, port or database, or an unknown `sentinel_auth`."""
    parts = parse_host_list_url(url, SENTINEL_SCHEMES, SENTINEL_PORT, "sentinel", "no sentinel host:port")
    plain, sentinels = parts.plain, parts.hosts
    path = [unquote(p) for p in parts.path.strip("/").split("/")]
    service, db = path[0], path[1] if len(path) > 1 else "0"
    if not service or any(c.isspace() for c in service):
        raise ValueError("no service name (.../service_name[/db])")
    if len(path) > 2 or not db.isdigit():
        raise ValueError(f"bad database {'/'.join(path[1:])!r} (.../service_name[/db], db a number)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    auth = [v for k, v in query if k == SENTINEL_AUTH]
    if auth and auth[-1] not in ("url", "none"):
        raise ValueError(f"{SENTINEL_AUTH} must be 'url' or 'none', not {auth[-1]!r}")
    rest = urlencode([(k, v) for k, v in query if k != SENTINEL_AUTH])
    # redis-py reads credentials and options from a plain URL of one host (the first sentinel's
    # address stands in; it is dropped below)
    one_host = f"{plain}://{parts.userinfo}127.0.0.1/{db}" + (f"?{rest}" if rest else "")
    options: dict[str, Any] = parse_url(one_host)  # type: ignore[no-untyped-call]
    for key in ("host", "port", "connection_class"):
        options.pop(key, None)
    return SentinelTarget(
        service=service,
        sentinels=sentinels,
        db=int(options.pop("db", db)),
        tls=plain == "rediss",
        options=options,
        sentinel_auth=bool(auth) and auth[-1] == "url",
    )


class FailoverSentinel(Sentinel):
    """redis-py's Sentinel, whose "no master" error says in one line what each sentinel answered,
    and which raises a sentinel's own error when every sentinel refused the credentials or the
    TLS handshake (the worker stops at start on those, as for one server: waiting will not heal
    them), instead of a MasterNotFoundError to wait on."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        problems: list[str] = []
        refused: list[redis.RedisError] = []
        for i, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"{kwargs.get('host')}:{kwargs.get('port')}"
            try:
                masters = sentinel.sentinel_masters()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                problems.append(f"{where}: {exc}")
                if isinstance(exc, redis.AuthenticationError) or isinstance(exc.__context__, ssl.SSLError):
                    refused.append(exc)
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                self.sentinels[0], self.sentinels[i] = sentinel, self.sentinels[0]  # ask it first next time
                return str(state["ip"]), int(state["port"])
            problems.append(f"{where}: " + ("its master is down" if state else "no such service"))
        if refused and len(refused) == len(self.sentinels):
            raise refused[0]
        raise MasterNotFoundError(f"no sentinel names a master for {service_name!r} ({'; '.join(problems)})")

    def newest_master(self, service_name: str) -> tuple[str, int] | None:
        """The master named by the sentinel with the newest configuration epoch (the others may
        not have heard of a failover yet), which is moved first so discover_master asks it first;
        None if no sentinel names one. Asks every sentinel: for the watcher thread only."""
        best: tuple[int, int, tuple[str, int]] | None = None
        for i, sentinel in enumerate(list(self.sentinels)):
            try:
                masters = sentinel.sentinel_masters()
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            state = masters.get(service_name) if isinstance(masters, dict) else None
            if state and self.check_master_state(state, service_name):  # type: ignore[no-untyped-call]
                epoch = int(state.get("config-epoch") or 0)
                if best is None or epoch > best[0]:
                    best = (epoch, i, (str(state["ip"]), int(state["port"])))
        if best is None:
            return None
        sentinels = self.sentinels
        if best[1] < len(sentinels):
            sentinels[0], sentinels[best[1]] = sentinels[best[1]], sentinels[0]
        return best[2]


class FollowingPool(SentinelConnectionPool):
    """A SentinelConnectionPool whose watcher thread (started by the first connection taken,
    ended with the pool) follows a move of the master that no connection error revealed."""

    def reset(self) -> None:  # also run by __init__, and in a forked child (no watcher there)
        super().reset()  # type: ignore[no-untyped-call]
        self.used_at = 0.0  # time.monotonic() of the last connection taken
        self.watcher: threading.Thread | None = None
        self.closed = threading.Event()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.used_at = time.monotonic()
        if self.watcher is None:
            self.watcher = threading.Thread(target=_watch, args=(weakref.ref(self), self.closed),
                                            name="sentinel-watch", daemon=True)  # fmt: skip
            self.watcher.start()
        return super().get_connection(*args, **kwargs)

    def follow(self) -> None:
        """Ask the sentinels where the master is; if it moved, close the idle connections to the
        old one (get_master_address does) and make the next connection go to the new one."""
        manager = self.sentinel_manager
        if self.master_address is None or not isinstance(manager, FailoverSentinel):
            return  # nothing connected yet: the first connection asks anyway
        newest = manager.newest_master(self.service_name)
        if newest is not None and newest != self.master_address:
            self.get_master_address()  # type: ignore[no-untyped-call]


def _watch(ref: weakref.ReferenceType[FollowingPool], closed: threading.Event) -> None:
    """The watcher thread: follow the master every MASTER_RECHECK_S while the pool is used."""
    while not closed.wait(MASTER_RECHECK_S):
        pool = ref()
        if pool is None:
            return
        if time.monotonic() - pool.used_at < IN_USE_S:
            try:
                pool.follow()
            except (redis.RedisError, OSError):
                pass  # no sentinel answers: the connections in use say whether the master does
            if closed.is_set():  # closed while we asked: close what the asking reopened
                pool.sentinel_manager.close()
        del pool


class FollowingPubSub(PubSub):
    """A PubSub that raises ConnectionError once its pool knows the master moved away from the
    server it is subscribed on: its owner subscribes again, on the new master (the wake-up
    listener does on any connection error). It adds no state."""

    def get_message(self, ignore_subscribe_messages: bool = False, timeout: float = 0.0) -> Any:
        conn, master = self.connection, getattr(self.connection_pool, "master_address", None)
        if conn is not None and master is not None and getattr(conn, "host", None) is not None:
            if (conn.host, conn.port) != master:
                raise redis.ConnectionError(f"the master moved to {master[0]}:{master[1]}: subscribe again")
        return super().get_message(ignore_subscribe_messages, timeout)


class SentinelClient(redis.Redis):
    """redis.Redis on a FollowingPool (from `Sentinel.master_for`): its subscribers follow the
    master too, and close() also ends the watcher and closes the connections to the sentinels."""

    def pubsub(self, **kwargs: Any) -> PubSub:
        pubsub: PubSub = super().pubsub(**kwargs)  # type: ignore[no-untyped-call]
        pubsub.__class__ = FollowingPubSub
        return pubsub

    def close(self) -> None:
        pool = self.connection_pool
        if isinstance(pool, FollowingPool):
            pool.closed.set()
        super().close()
        if isinstance(pool, SentinelConnectionPool):
            pool.sentinel_manager.close()


def sentinel_kwargs(target: SentinelTarget, timeout_s: float | None) -> dict[str, Any]:
    """Connection options of the sentinels: the timeouts, no retries (the sentinels are asked in
    turn anyway), TLS and its options with rediss+sentinel, credentials with sentinel_auth=url."""
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s or 5.0,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.tls:
        kwargs["ssl"] = True
        kwargs.update({k: v for k, v in target.options.items() if k.startswith("ssl_")})
    if target.sentinel_auth:
        kwargs.update({k: target.options[k] for k in ("username", "password") if k in target.options})
    return kwargs


def connect_sentinel(url: str, *, timeout_s: float | None = 5.0) -> SentinelClient:
    """A client of the master of the URL's service, following failovers. Sends nothing: the
    first command asks the sentinels (a MasterNotFoundError, a redis.ConnectionError, when none
    names a master; see FailoverSentinel). ValueError for a malformed URL (the message never
    holds the password)."""
    target = parse_sentinel_url(url)
    sentinel = FailoverSentinel(target.sentinels, sentinel_kwargs=sentinel_kwargs(target, timeout_s))  # type: ignore[no-untyped-call]
    master_kwargs: dict[str, Any] = {
        **target.options,
        "db": target.db,
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s or 5.0,
        "retry": Retry(NoBackoff(), 0),  # see the module's docstring
        "health_check_interval": 30,
    }
    if target.tls:
        master_kwargs["ssl"] = True  # SentinelConnectionPool then uses SentinelManagedSSLConnection
    client: SentinelClient = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.service, redis_class=SentinelClient, connection_pool_class=FollowingPool, **master_kwargs
    )
    return client
