"""A small threaded HTTP server for /metrics (Prometheus text or OpenMetrics with exemplars),
/healthz (ready: what the process needs answers, Redis first), /livez (alive: not wedged, whatever
Redis does) and extra JSON routes (the exporter's /sd). One per process, explicit bind address; it
binds when constructed, so a busy port raises AddressInUse (one line) before the caller registers
anywhere."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from distcomp_obs.errors import AddressInUse


class MetricsServer:
    def __init__(
        self,
        addr: str,
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]],
        routes: dict[str, Callable[[], Any]] | None = None,
        live: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        host, _, port = addr.rpartition(":")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._send(200, content_type, encoder(outer.registry))
                elif path in ("/healthz", "/livez"):
                    ok, detail = outer.health() if path == "/healthz" else outer.live()
                    self._send(200 if ok else 503, "text/plain; charset=utf-8", detail.encode() + b"\n")
                elif path in outer.routes:
                    self._send(200, "application/json", json.dumps(outer.routes[path]()).encode())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics, /healthz or /livez\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # scrapes every few seconds: keep logs quiet
                pass

        self.registry, self.health, self.routes = registry, health, routes or {}
        # /livez: answering at all is alive, unless the process says more (the worker's loops)
        self.live = live or (lambda: (True, "ok"))
        host = host.strip("[]")
        server = _V6Server if ":" in host else ThreadingHTTPServer
        try:  # binds now: a busy or forbidden address is one clear error, before anything else starts
            self.httpd = server((host, int(port)), Handler)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise AddressInUse(f"cannot serve metrics on {addr}: {reason} (choose another --metrics-addr)") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def url_host(self) -> str:
        """The bound host as a URL writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _V6Server(ThreadingHTTPServer):
    """An IPv6 address (`[::1]:9712`, a pod's IPv6 address); `[::]` also takes IPv4 clients."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
