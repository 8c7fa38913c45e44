"""The bench's latency proxy: added latency, order under pipelining, and every fault mode."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator

import pytest
import redis

from distcomp_obs.bench.proxy import LatencyProxy, measure_rtt_ms
from distcomp_obs.redis_server import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LatencyProxy]:
    with LatencyProxy(("127.0.0.1", redis_server.port)) as p:
        yield p


def client(p: LatencyProxy, timeout: float = 2.0) -> redis.Redis:
    # no retries: a fault must surface as an error, not be papered over by a reconnect
    return redis.Redis.from_url(p.url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False,
                                retry=None)  # fmt: skip


@pytest.mark.parametrize("rtt_ms", [1.0, 5.0])
def test_round_trip_costs_at_least_the_configured_latency(proxy: LatencyProxy, rtt_ms: float) -> None:
    proxy.set_latency(rtt_ms)
    rtts = measure_rtt_ms(proxy.url, pings=40)
    # each direction waits rtt/2 from arrival, never less (20 us of scheduling slack each way)
    assert min(rtts) >= rtt_ms - 0.05
    # loose upper bound: a shared 2-core machine, but not a per-chunk or doubled delay
    assert statistics.median(rtts) < rtt_ms + 5


def test_one_way_delay_applies_to_one_direction(proxy: LatencyProxy) -> None:
    proxy.set_delays(up_ms=3.0, down_ms=0.0)
    assert proxy.rtt_ms == pytest.approx(3.0)
    assert min(measure_rtt_ms(proxy.url, pings=20)) >= 2.95


def test_pipelined_replies_keep_their_order_and_large_values_pass(proxy: LatencyProxy) -> None:
    proxy.set_latency(2.0)
    c = client(proxy)
    c.delete("proxy:n")
    pipe = c.pipeline(transaction=False)
    for _ in range(2000):
        pipe.incr("proxy:n")
    assert pipe.execute() == list(range(1, 2001))
    blob = b"x" * (3 * 2**20)  # many chunks each way
    c.set("proxy:blob", blob)
    assert c.get("proxy:blob") == blob
    c.delete("proxy:n", "proxy:blob")


def test_latency_changes_from_another_thread_while_traffic_flows(proxy: LatencyProxy) -> None:
    c = client(proxy)
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                assert c.echo(str(i)) == str(i).encode()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=traffic)
    t.start()
    for ms in (3.0, 0.0, 1.0, 0.0):
        proxy.set_latency(ms)
    stop.set()
    t.join(10)
    assert not errors


def test_refuse_then_heal(proxy: LatencyProxy) -> None:
    proxy.refuse()
    with pytest.raises(redis.ConnectionError):
        client(proxy).ping()
    proxy.heal()
    assert client(proxy).ping()


def test_blackhole_times_out_then_heals(proxy: LatencyProxy) -> None:
    c = client(proxy, timeout=0.3)
    assert c.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        c.ping()
    with pytest.raises(redis.TimeoutError):
        client(proxy, timeout=0.3).ping()  # new connections are accepted but never answered
    proxy.heal()
    assert client(proxy).ping()


def test_reset_connections_breaks_open_connections(proxy: LatencyProxy) -> None:
    conn = client(proxy).connection_pool.get_connection()
    conn.send_command("PING")
    assert conn.read_response() in (b"PONG", "PONG")
    assert proxy.reset_connections() >= 1
    with pytest.raises(redis.ConnectionError):
        conn.send_command("PING")
        conn.read_response()
    assert client(proxy).ping()  # new connections work


@pytest.mark.parametrize("then_reset", [False, True])
def test_drop_next_reply(proxy: LatencyProxy, then_reset: bool) -> None:
    c = client(proxy, timeout=0.5)
    c.set("proxy:dropped", 0)
    proxy.drop_next_reply(then_reset=then_reset)
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        c.incr("proxy:dropped")  # executed by Redis, reply lost
    assert proxy.dropped_replies == 1
    assert int(client(proxy).get("proxy:dropped") or 0) == 1  # the command did run
    client(proxy).delete("proxy:dropped")


def test_drop_reply_to_a_chosen_request(proxy: LatencyProxy) -> None:
    """The fault tests' lost reply: only the request the predicate picks loses its reply; the
    command runs, the client sees its connection end, later connections work."""
    c = client(proxy, timeout=2.0)
    c.set("proxy:picked", 0)
    proxy.drop_reply_to(lambda data: b"proxy:picked" in data and b"INCR" in data.upper())
    assert proxy.reply_drop_armed is not None
    assert c.get("proxy:picked") in (b"0", "0")  # not matched: passes
    with pytest.raises(redis.ConnectionError):
        c.incr("proxy:picked")  # matched: executed by Redis, reply lost, connection closed
    assert proxy.dropped_replies == 1 and proxy.reply_drop_armed is None
    assert int(client(proxy).get("proxy:picked") or 0) == 1  # the command did run
    assert client(proxy).incr("proxy:picked") == 2  # disarmed after one match
    client(proxy).delete("proxy:picked")


def test_drop_reply_to_waits_out_a_slow_request(proxy: LatencyProxy) -> None:
    """With a one-way delay the matched request still reaches Redis before the connection closes."""
    proxy.set_delays(up_ms=50.0, down_ms=0.0)
    assert proxy.delays_ms == (50.0, 0.0)
    c = client(proxy, timeout=2.0)
    c.set("proxy:slow", 0)
    proxy.drop_reply_to(lambda data: b"proxy:slow" in data and b"INCR" in data.upper(), linger_s=0.05)
    with pytest.raises(redis.ConnectionError):
        c.incr("proxy:slow")
    assert int(client(proxy).get("proxy:slow") or 0) == 1
    client(proxy).delete("proxy:slow")
