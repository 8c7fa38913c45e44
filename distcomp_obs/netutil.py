"""Small network helpers shared by the bench, `distcomp run`, the Redis URL parsers and the tests."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_port(item: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `host` (default_port) or `[v6]:port` -> (host, port); ValueError if malformed."""
    host, port = item, str(default_port)
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {item!r}")
        port = rest[1:] or port
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad host:port {item!r}")
    return host, int(port)


def split_url(url: str) -> tuple[str, str, str]:
    """(netloc, path, query) of `scheme://netloc/path?query#fragment`, split by hand: urllib
    rejects a host list holding an [IPv6] entry ("Invalid IPv6 URL", Python 3.11.2)."""
    rest = url.partition("://")[2].partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return netloc, slash + path, query


@dataclass(frozen=True)
class HostListURL:
    """`scheme://[userinfo@]host:port[,host:port...]/path?query`, the form of cluster and sentinel URLs."""

    plain: str  # the plain scheme the URL's scheme stands for (redis or rediss)
    userinfo: str  # "user:password@" as written, or ""
    hosts: list[tuple[str, int]]
    path: str
    query: str


def parse_host_list_url(url: str, schemes: Mapping[str, str], default_port: int, kind: str,
                        no_hosts: str) -> HostListURL:  # fmt: skip
    """Split a URL whose scheme is one of `schemes` (scheme -> its plain one) and whose host part
    lists hosts. ValueError naming `kind` for another scheme, `no_hosts` when none is listed, or
    what is wrong with a host or port."""
    scheme, sep, _ = url.partition("://")
    plain = schemes.get(scheme.lower())
    if not sep or plain is None:
        raise ValueError(f"not a {kind} URL (expected {' or '.join(s + '://' for s in schemes)})")
    netloc, path, query = split_url(url)
    userinfo, at, hosts = netloc.rpartition("@")
    nodes = [host_port(item.strip(), default_port) for item in hosts.split(",") if item.strip()]
    if not nodes:
        raise ValueError(no_hosts)
    return HostListURL(plain, userinfo + at, nodes, path, query)
