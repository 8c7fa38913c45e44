"""Run the console under uvicorn: parse the address, build the app for one queue, serve."""

from __future__ import annotations

import logging

import uvicorn

from distcomp_obs.console.app import Console, asgi
from distcomp_obs.console.sampler import Throughput
from distcomp_obs.errors import ConfigError
from distcomp_obs.netutil import host_port
from distcomp_obs.queue import Queue

log = logging.getLogger(__name__)

DEFAULT_ADDR = "127.0.0.1:9712"


def normalise_root_path(root_path: str) -> str:
    root = "/" + root_path.strip("/") if root_path.strip("/") else ""
    if any(ch in root for ch in "?#\"'<> "):
        raise ConfigError("root_path", root_path, "a URL path such as /console")
    return root


def serve(q: Queue, addr: str, token: str | None, root_path: str = "", log_level: str = "INFO") -> None:
    try:
        host, port = host_port(addr, 9712)
    except ValueError:
        raise ConfigError("addr", addr, "HOST:PORT, e.g. 127.0.0.1:9712") from None
    console = Console(q, token, normalise_root_path(root_path), Throughput(q.stats))
    mode = "actions need the token" if token else "read-only (no token)"
    log.info("console for queue %r on http://%s:%d%s/ (%s)", q.keys.prefix, host, port, console.root_path, mode)
    uvicorn.run(asgi(console), host=host, port=port, log_level=log_level.lower(), access_log=False,
                proxy_headers=True, server_header=False)  # fmt: skip
