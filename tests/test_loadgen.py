"""`distcomp loadgen`'s fan-out (one stream, every queue) and ramp, against a real redis-server."""

from __future__ import annotations

import threading

import pytest

from distcomp_obs.loadgen import DEFAULT_MIX, due_by, fan_out, generate, split_prefixes
from distcomp_obs.queue import Queue
from distcomp_obs.redis_io import connect
from tests.conftest import run_cli


def test_split_prefixes() -> None:
    assert split_prefixes("a,b:, a: ,c") == ["a:", "b:", "c:"]
    assert split_prefixes("jobs:") == ["jobs:"]


def test_ramp_integral() -> None:
    assert due_by(10, 5, None, 0) == 50
    # 10 -> 30 tasks/s over 10 s: 200 tasks, then 30/s
    assert due_by(10, 10, 30, 10) == 200
    assert due_by(12, 10, 30, 10) == 260
    assert due_by(5, 10, 30, 10) == 75  # 10*5 + 20*25/20


def test_default_mix_has_no_failing_task() -> None:
    assert DEFAULT_MIX["fail"] == 0 and abs(sum(DEFAULT_MIX.values()) - 1) < 1e-9


def test_fan_out_sends_the_same_stream_to_every_queue(redis_url: str, prefix: str) -> None:
    prefixes = [f"{prefix}a:", f"{prefix}b:", f"{prefix}c:"]
    res = run_cli("loadgen", "--redis-url", redis_url, "--prefix", ",".join(prefixes), "--rate", "200",
                  "--duration", "1", "--mix", "noop=5,sleep=2,fail=1", "--seed", "11")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "to each of" in res.stderr
    client = connect(redis_url)
    todo = [Queue(client, p).todo_in_order() for p in prefixes]
    assert len(todo[0]) == 200
    assert todo[0] == todo[1] == todo[2]  # same lines, same order: a fair A/B feed


def test_generate_ramps(redis_url: str, prefix: str) -> None:
    client = connect(redis_url)
    queues = fan_out(Queue(client, f"{prefix}x,{prefix}y"))
    assert [q.keys.prefix for q in queues] == [f"{prefix}x:", f"{prefix}y:"]
    result = generate(queues, 20, 1.0, DEFAULT_MIX, threading.Event(), seed=1, ramp_to=100)
    assert result["submitted"] == due_by(1.0, 20, 100, 1.0) == 60
    assert result["added_by_queue"] == {f"{prefix}x:": 60, f"{prefix}y:": 60}


@pytest.mark.parametrize("args", [["--rate", "0"]])
def test_loadgen_refuses_bad_rates(redis_url: str, prefix: str, args: list[str]) -> None:
    res = run_cli("loadgen", "--redis-url", redis_url, "--prefix", prefix, *args)
    assert res.returncode == 2 and "rate" in res.stderr
