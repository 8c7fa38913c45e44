"""A TCP proxy on 127.0.0.1 that adds latency and injects faults between workers and Redis.

The kernel here has no netem, so latency is injected in user space: every chunk read from one
side is written to the other `delay` seconds after it arrived, in arrival order (a later chunk
is never written before an earlier one, even if the delay is lowered meanwhile). A round trip
set to R ms costs R/2 on the way in and R/2 on the way out, so a request/response pays R once,
however many chunks it was split into.

asyncio's own timers have 1 ms granularity (epoll timeouts are whole milliseconds), which would
turn a 0.5 ms one-way delay into ~1 ms; deliveries are therefore timed by a Linux timerfd
(nanosecond deadlines, no busy-waiting), falling back to loop.call_at elsewhere (timers.py).

The proxy runs its event loop in a background thread; every control method is thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from distcomp_obs.bench.timers import EPSILON_S, Timers

Upstream = tuple[str, int] | str  # (host, port) or a unix socket path


class _Direction:
    """One direction of one connection: chunks wait here until their delivery time."""

    def __init__(self, proxy: LatencyProxy, conn: _Connection, upward: bool) -> None:
        self.proxy = proxy
        self.conn = conn
        self.upward = upward  # client -> Redis
        self.target: asyncio.Transport | None = None
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.last_due = 0.0
        self.close_after_flush = False

    def feed(self, data: bytes) -> None:
        p = self.proxy
        if p._faults and p._fault(self, data):
            return  # dropped: the only cost of the fault hooks without a fault is the check above
        delay = p._up_s if self.upward else p._down_s
        due = max(time.monotonic() + delay, self.last_due)  # never overtake an earlier chunk
        self.last_due = due
        if not self.pending and delay <= 0 and self.target is not None:
            self.target.write(data)
            return
        self.pending.append((due, data))
        if len(self.pending) == 1:
            p._timers.call_at(due, self.flush)

    def flush(self) -> None:
        if self.target is None:
            return  # upstream still connecting: flushed once it is
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now + EPSILON_S:
            self.target.write(self.pending.popleft()[1])
        if self.pending:
            self.proxy._timers.call_at(self.pending[0][0], self.flush)
        elif self.close_after_flush:
            self.target.close()


class _Side(asyncio.Protocol):
    """The protocol of one socket (client side or Redis side) of a proxied connection."""

    def __init__(self, conn: _Connection, incoming: _Direction) -> None:
        self.conn = conn
        self.incoming = incoming  # data read here flows this way
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream socket's
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.incoming.feed(data)

    def eof_received(self) -> bool:
        self._closed_here()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_here()

    def _closed_here(self) -> None:
        # Deliver what is already in flight, then close the other side (like a FIN travelling).
        d = self.incoming
        if d.target is None:
            self.conn.close()
        elif d.pending:
            d.close_after_flush = True
        else:
            d.target.close()
        self.conn.discard()

    # Backpressure: a slow reader pauses the other side's reads instead of growing memory.
    def pause_writing(self) -> None:
        other = self.conn.other(self)
        if other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.conn.other(self)
        if other.transport is not None:
            other.transport.resume_reading()


class _Connection:
    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.cut = False  # a request's reply is being lost: nothing passes either way until it closes
        self.up = _Direction(proxy, self, upward=True)
        self.down = _Direction(proxy, self, upward=False)
        self.client = _Side(self, self.up)
        self.server = _Side(self, self.down)

    def other(self, side: _Side) -> _Side:
        return self.server if side is self.client else self.client

    async def open_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        up = self.proxy.upstream
        try:
            if isinstance(up, str):
                await loop.create_unix_connection(lambda: self.server, up)
            else:
                await loop.create_connection(lambda: self.server, up[0], up[1])
        except OSError:
            self.close()
            return
        assert self.server.transport is not None and self.client.transport is not None
        self.up.target = self.server.transport
        self.down.target = self.client.transport
        self.up.flush()

    def reset(self) -> None:
        """Abort both sockets with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox would."""
        for side in (self.client, self.server):
            t = side.transport
            if t is None or t.is_closing():
                continue
            sock = t.get_extra_info("socket")
            if sock is not None and sock.family != socket.AF_UNIX:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            t.abort()
        self.discard()

    def close(self) -> None:
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close()
        self.discard()

    def discard(self) -> None:
        self.proxy._connections.discard(self)
        if self.cut:
            self.cut = False
            self.proxy._cut -= 1
            self.proxy._rearm()


class LatencyProxy:
    """`LatencyProxy(("127.0.0.1", 6379)).start()`; point clients at `proxy.url`.

    Faults: `refuse()` (new connections refused), `blackhole()` (everything silently dropped,
    new connections accepted but never answered), `reset_connections()` (RST every open
    connection), `drop_next_reply()` (the next chunk from Redis vanishes; optionally the
    connection is then reset), `drop_reply_to(match)` (the next request chunk that `match`
    accepts reaches Redis, its reply never comes back and the connection is closed).
    `heal()` ends refuse and blackhole.
    """

    def __init__(self, upstream: Upstream, port: int = 0, rtt_ms: float = 0.0) -> None:
        self.upstream = upstream
        self.port = port
        self._up_s = self._down_s = rtt_ms / 2000.0
        self._blackhole = False
        self._drop_replies = 0
        self._reset_after_drop = False
        self._drop_match: Callable[[bytes], bool] | None = None
        self._linger_s = 0.2
        self._cut = 0  # connections cut by drop_reply_to, not yet closed
        #: any fault armed: the one attribute the data path reads when there is none
        self._faults = False
        self.dropped_replies = 0
        self.accepted = 0
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._timers: Timers
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def precise_timers(self) -> bool:
        return self._timers.precise

    def start(self) -> Self:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._timers = Timers(self._loop)
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()
            self._timers.close()
            self._loop.close()

        self._thread = threading.Thread(target=main, name="latency-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        conn = _Connection(self)
        self._connections.add(conn)
        self.accepted += 1
        asyncio.get_running_loop().create_task(conn.open_upstream())
        return conn.client

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._connections):
                conn.close()

        self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _call(self, coro_fn: Callable[[], Any]) -> Any:
        """Run a coroutine function on the proxy's loop and wait for it (thread-safe)."""
        assert self._loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(10)

    # ---------------------------------------------------------------- latency
    def set_latency(self, rtt_ms: float) -> None:
        """Round-trip latency, split evenly: each direction waits rtt_ms / 2."""
        self.set_delays(rtt_ms / 2, rtt_ms / 2)

    def set_delays(self, up_ms: float, down_ms: float) -> None:
        """One-way delays: client -> Redis (up) and Redis -> client (down), in ms."""

        async def apply() -> None:
            self._up_s, self._down_s = max(0.0, up_ms) / 1000, max(0.0, down_ms) / 1000

        self._call(apply)

    @property
    def rtt_ms(self) -> float:
        return (self._up_s + self._down_s) * 1000

    # ---------------------------------------------------------------- faults
    def _rearm(self) -> None:
        """Recompute `_faults` (on the loop, after any fault state changed)."""
        self._faults = self._blackhole or self._drop_replies > 0 or self._drop_match is not None or self._cut > 0

    def _fault(self, d: _Direction, data: bytes) -> bool:
        """Apply the armed faults to one chunk; True if it must not be forwarded."""
        conn = d.conn
        if self._blackhole:
            return True
        if conn.cut:
            if not d.upward:
                conn.close()  # the lost reply arrived: the client sees the connection end instead
            return True
        if d.upward:
            match = self._drop_match
            if match is None or not match(data):
                return False
            self._drop_match = None
            conn.cut = True  # set before forwarding: no byte of the reply may reach the client
            self._cut += 1
            self._rearm()
            self.dropped_replies += 1
            assert self._loop is not None
            self._loop.call_later(self._up_s + self._linger_s, conn.close)  # if no reply comes first
            return False
        if self._drop_replies > 0:
            self._drop_replies -= 1
            self.dropped_replies += 1
            self._rearm()
            if self._reset_after_drop:
                conn.reset()
            return True
        return False

    def refuse(self, on: bool = True) -> None:
        """Stop listening (clients get ECONNREFUSED), or listen again on the same port."""

        async def apply() -> None:
            if on and self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            elif not on and self._server is None:
                await self._listen()

        self._call(apply)

    def blackhole(self, on: bool = True) -> None:
        """Drop every byte both ways (connections stay open and silent: clients time out)."""

        async def apply() -> None:
            self._blackhole = on
            self._rearm()

        self._call(apply)

    def heal(self) -> None:
        self.blackhole(False)
        self.refuse(False)

    def reset_connections(self) -> int:
        """RST every open connection; returns how many."""

        async def apply() -> int:
            conns = list(self._connections)
            for conn in conns:
                conn.reset()
            return len(conns)

        return int(self._call(apply))

    def drop_next_reply(self, n: int = 1, then_reset: bool = False) -> None:
        """Lose the next n chunks coming from Redis (a reply lost after the command ran)."""

        async def apply() -> None:
            self._drop_replies, self._reset_after_drop = n, then_reset
            self._rearm()

        self._call(apply)

    def drop_reply_to(self, match: Callable[[bytes], bool] | None, linger_s: float = 0.2) -> None:
        """Lose the reply to one chosen request: the next chunk from a client that `match`
        accepts is forwarded to Redis (the command runs), then that connection goes silent both
        ways and is closed when the reply arrives (dropped), or `linger_s` after the request
        reached Redis. Counted in `dropped_replies`. None disarms."""

        async def apply() -> None:
            self._drop_match, self._linger_s = match, linger_s
            self._rearm()

        self._call(apply)

    @property
    def reply_drop_armed(self) -> Callable[[bytes], bool] | None:
        """The predicate `drop_reply_to` armed, until a request matches it."""
        return self._drop_match

    @property
    def delays_ms(self) -> tuple[float, float]:
        """The one-way delays (up: client -> Redis, down: Redis -> client), in ms."""
        return self._up_s * 1000, self._down_s * 1000

    @property
    def open_connections(self) -> int:
        return len(self._connections)


def measure_rtt_ms(url: str, pings: int = 500) -> list[float]:
    """PING round trips (ms) through a fresh connection: the proxy's overhead at 0 ms."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.ping()  # connect first: the handshake is not a round trip we want
        out = []
        for _ in range(pings):
            start = time.perf_counter()
            client.ping()
            out.append((time.perf_counter() - start) * 1000)
        return out
    finally:
        client.close()
