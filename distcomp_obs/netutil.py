"""Small network helpers shared by the bench, `distcomp run`, the Redis URL parsers and the tests."""

from __future__ import annotations

import socket


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
