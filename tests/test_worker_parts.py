"""The worker's parts without Redis: pure policies, the prefetch buffer, the wake signal, the
results hand-off, the slot pool running real tasks, and the Lua preamble matching keys.py."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
import threading
import time
from importlib import resources

import pytest

from distcomp_obs.config import Settings
from distcomp_obs.keys import FIRST_EXTRA_KEY, SCRIPT_KEYS, Keys
from distcomp_obs.machine import MemoryFigures
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.queue import scripts
from distcomp_obs.records import Claimed, ReportCode, claim_key
from distcomp_obs.task import MAX_PRIORITY, Task, TaskType, parse_line
from distcomp_obs.worker import policy
from distcomp_obs.worker.buffer import Held, PrefetchBuffer, make_held
from distcomp_obs.worker.execute import Outcome
from distcomp_obs.worker.health import Liveness, RedisHealth
from distcomp_obs.worker.pace import ALPHA, Ewma, Pace
from distcomp_obs.worker.results import Result, Results
from distcomp_obs.worker.slots import Memory, SlotPool
from distcomp_obs.worker.wake import WakeSignal


def held(line: str, seq: int = 0, token: str = "") -> Held:
    return make_held(Claimed(line, token or f"inc:{seq}", seq, None), time.time())


def occupancy(**kw: int | bool | None) -> policy.Occupancy:
    base: dict[str, int | bool | None] = dict(concurrency=4, prefetch=32, busy=0, buffered=0, submitted=False,
                                              urgent_priority=-1, lowest_buffered_priority=None)  # fmt: skip
    base.update(kw)
    return policy.Occupancy(**base)  # type: ignore[arg-type]


# --- policies -----------------------------------------------------------------------------------
def test_capacity_fills_slots_and_buffer_then_waits_for_the_low_water_mark() -> None:
    assert policy.capacity_wanted(occupancy()) == 36
    assert policy.capacity_wanted(occupancy(busy=4, buffered=20)) == 0  # above half the buffer
    assert policy.capacity_wanted(occupancy(busy=4, buffered=16)) == 16  # at the mark: refill
    assert policy.capacity_wanted(occupancy(prefetch=0, busy=1, buffered=1)) == 2  # no prefetch: free slots only


def test_urgent_submission_is_claimed_past_a_full_buffer() -> None:
    full = dict(busy=4, buffered=36, submitted=True, lowest_buffered_priority=5)
    assert policy.capacity_wanted(occupancy(**full, urgent_priority=9)) == 8  # prefetch // 4
    assert policy.capacity_wanted(occupancy(**full, urgent_priority=5)) == 0  # not more urgent


def test_reports_coalesce_only_when_pipelined_and_few() -> None:
    assert not policy.reports_due(0, 1.0, True, False, 4)
    assert not policy.reports_due(3, 0.001, True, False, 4)  # waits for company
    assert policy.reports_due(3, policy.REPORT_COALESCE_S, True, False, 4)  # the oldest is due
    assert policy.reports_due(16, 0.0, True, False, 4)  # enough to send
    assert policy.reports_due(1, 0.0, False, False, 4)  # DistComp: every result at once
    assert policy.reports_due(1, 0.0, True, True, 4)  # stopping: flush


def test_next_wait_per_polling_mode() -> None:
    rng = random.Random(1)
    common = dict(results_waiting=False, unsent=0, poll_interval_s=2.0, still_wanted=0, idle_max_wait_s=30.0, rng=rng)
    flowing = policy.FetchState(want=8, claimed=8, remaining=100, misses=0, since_fetch_s=0.0)
    assert policy.next_wait(flowing, polling="adaptive", **common).seconds == 0  # type: ignore[arg-type]
    empty = policy.FetchState(want=8, claimed=2, remaining=0, misses=0, since_fetch_s=0.0)
    wait = policy.next_wait(empty, polling="adaptive", **common)  # type: ignore[arg-type]
    assert wait.reason == "blocking_wait" and wait.wake_on_submit and 24 <= wait.seconds <= 30
    fixed = policy.next_wait(empty, polling="fixed", **common)  # type: ignore[arg-type]
    assert fixed.reason == "fixed_interval" and fixed.seconds == pytest.approx(2.0)
    full = policy.FetchState(want=0, claimed=0, remaining=-1, misses=0, since_fetch_s=0.5)
    assert policy.next_wait(full, polling="adaptive", **common).reason == "buffer_full"  # type: ignore[arg-type]
    waiting = {**common, "results_waiting": True}
    assert policy.next_wait(empty, polling="adaptive", **waiting).seconds == 0  # type: ignore[arg-type]


def test_idle_backoff_grows_and_is_capped() -> None:
    rng = random.Random(2)
    starved = [policy.FetchState(8, 0, 5, misses, 0.0) for misses in (0, 4, 30)]
    waits = [policy.next_wait(s, results_waiting=False, unsent=0, polling="adaptive", poll_interval_s=2.0,
                              still_wanted=0, idle_max_wait_s=1.0, rng=rng) for s in starved]  # fmt: skip
    assert [w.reason for w in waits] == ["idle_backoff"] * 3
    assert waits[0].seconds <= 0.01 < waits[1].seconds <= 0.16 and waits[2].seconds <= 1.0


def test_claim_limits_reserve_buffered_memory_and_stop_below_the_floor() -> None:
    assert policy.claim_limits(10.0, 1.0, 3.0, 8).free_dram_gb == 6.0
    assert policy.claim_limits(10.0, 1.0, 30.0, 8).free_dram_gb == 0.0
    assert policy.claim_limits(0.5, 1.0, 0.0, 8).free_dram_gb == -1.0  # fits no task, not even 0 GB


def test_admission_by_memory_and_cores() -> None:
    big = Task(TaskType.SHELL, 0, 4.0, 0.0, "x")
    assert policy.fits(big, 10.0, 1.0, 0, 8) and not policy.fits(big, 4.5, 1.0, 0, 8)
    wide = Task(TaskType.SHELL, 0, 0.0, 6.0, "x")
    assert not policy.fits(wide, 10.0, 0.0, 4, 8)
    assert policy.fits(Task(TaskType.SHELL, 0, 0.0, 16.0, "x"), 10.0, 0.0, 0, 8)  # alone it may run


# --- buffer, wake signal, results ---------------------------------------------------------------
def test_buffer_hands_out_priority_then_fifo_and_skips_what_does_not_fit() -> None:
    buf = PrefetchBuffer()
    buf.put_many([held("shell:1:0:0:a", 1), held("shell:9:0:0:b", 2), held("shell:1:0:0:c", 3),
                  held("shell:9:8:0:big", 4)])  # fmt: skip
    assert buf.reserved_gb() == 8.0 and buf.lowest_priority() == 1 and len(buf) == 4
    small = lambda task: task.min_dram_gb < 1  # noqa: E731
    taken = [buf.take(small, timeout=0.1)[0] for _ in range(3)]
    assert [h.line for h in taken if h] == ["shell:9:0:0:b", "shell:1:0:0:a", "shell:1:0:0:c"]
    assert buf.take(small, timeout=0.05) == (None, 1)  # only the big one is left: it stays
    assert [h.line for h in buf.take_all()] == ["shell:9:8:0:big"] and len(buf) == 0


def test_buffer_take_wakes_on_put_and_on_close() -> None:
    buf = PrefetchBuffer()
    got: list[Held | None] = []
    t = threading.Thread(target=lambda: got.append(buf.take(lambda _t: True, timeout=10)[0]))
    t.start()
    buf.put_many([held("shell:1:0:0:x")])
    t.join(5)
    assert got and got[0] is not None
    t = threading.Thread(target=lambda: got.append(buf.take(lambda _t: True, timeout=10)[0]))
    t.start()
    buf.close()
    t.join(5)
    assert not t.is_alive() and got[-1] is None


def test_wake_signal_keeps_announcements_made_during_a_claim() -> None:
    wake = WakeSignal()
    wake.announce(5)
    seen = wake.announced()
    assert seen.submitted and seen.urgent_priority == 5
    wake.announce(7)  # arrives while the claim that saw priority 5 is in flight
    wake.claimed(seen)
    after = wake.announced()
    assert after.submitted and after.urgent_priority == 7  # not lost: the next pass claims again
    wake.claimed(after)
    assert not wake.announced().submitted and wake.announced().urgent_priority == -1


def test_wake_signal_poke_after_begin_pass_is_not_lost() -> None:
    wake = WakeSignal()
    wake.begin_pass()
    wake.poke()
    assert wake.wait(0)  # seen by the next wait
    wake.begin_pass()
    assert not wake.wait(0.01)


def test_results_wake_only_for_the_first_of_a_batch() -> None:
    results = Results()
    r = [Result(held(f"shell:1:0:0:{i}", i), Outcome(True, ""), 0.0, time.monotonic()) for i in range(3)]
    assert results.put(r[0]) is True
    assert results.put(r[1]) is False
    results.collect()
    assert len(results.unsent) == 2 and not results.waiting()
    assert results.sent(2) == r[:2] and results.unsent == []
    assert results.put(r[2]) is True  # a new batch
    assert r[0].report().outcome == "finished"
    assert Result(r[0].held, Outcome(False, ""), 0.0).report().payload == "failed without a message"


# --- slot pool: real tasks, no Redis ------------------------------------------------------------
def test_slot_pool_runs_tasks_and_returns_killed_ones() -> None:
    settings = Settings(name="unit", concurrency=2, prefetch=4, min_free_dram_gb=0.0)
    buf, results, wake, stopping = PrefetchBuffer(), Results(), WakeSignal(), threading.Event()
    pool = SlotPool(settings, buf, results, wake, WorkerMetrics(None), Memory(MemoryFigures(64.0, 64.0)), 8, stopping)
    returned: list[tuple[str, str]] = []
    pool.start(None, lambda hs, reason: returned.extend((h.line, reason) for h in hs), None)
    buf.put_many(
        [held("shell:1:0:0:echo hi", 1), held("builtin:1:0:0:fail boom", 2), held("builtin:1:0:0:sleep 30", 3)]
    )
    deadline = time.monotonic() + 20
    while (len(results.unsent) < 2 or pool.busy() < 1) and time.monotonic() < deadline:
        results.collect()
        time.sleep(0.01)
    outcomes = {r.held.line: r.outcome for r in results.unsent}
    assert outcomes["shell:1:0:0:echo hi"] == Outcome(True, "hi\n", exit_code=0)
    assert outcomes["builtin:1:0:0:fail boom"].ok is False
    assert pool.lines() == {"builtin:1:0:0:sleep 30"}
    newest = pool.newest()
    assert newest is not None and newest[0].line == "builtin:1:0:0:sleep 30"
    stopping.set()
    pool.kill_all("shutdown")
    pool.join(5)
    assert returned == [("builtin:1:0:0:sleep 30", "shutdown")] and pool.busy() == 0


# --- the Lua side agrees with keys.py and records.py ---------------------------------------------
def test_every_key_a_script_names_is_in_the_generated_preamble() -> None:
    lua = resources.files("distcomp_obs") / "lua"
    code = "\n".join(
        re.sub(r"--.*", "", (lua / f"{name}.lua").read_text()) for name in ("lib", *scripts.SCRIPT_NAMES)
    )  # without comments
    used = set(re.findall(r"\bK\.(\w+)", code))
    assert used == set(SCRIPT_KEYS), used ^ set(SCRIPT_KEYS)  # none unknown, none unused
    assert "KEYS[" not in code.replace("KEYS[FIRST_EXTRA_KEY", "")  # no slot numbered by hand
    assert "local K = {tasks = KEYS[1]," in scripts.preamble()
    assert f"lease = KEYS[{FIRST_EXTRA_KEY - 1}]" in scripts.preamble()
    assert len(Keys().script_keys("w")) == len(SCRIPT_KEYS)


def test_codes_and_score_are_shared_with_the_scripts() -> None:
    text = scripts.preamble()
    for code in ReportCode:
        assert f"{code.name} = {code.value}" in text
    assert f"MAX_PRIORITY = {MAX_PRIORITY}" in text
    task = parse_line("shell:7:0:0:x")
    assert claim_key(task.priority, 3) == f"{MAX_PRIORITY - 7:07d}0000000003"


# --- pace: task durations and claim round trips size the buffer (issue 10) -----------------------
def test_ewma_starts_at_the_first_observation_and_follows_a_change() -> None:
    pace = Pace()
    assert pace.mean_task_s is None and pace.claim_rtt_s == 0.0  # nothing seen yet
    pace.task_done(2.0)
    assert pace.mean_task_s == 2.0  # the first observation, not a blend with zero
    for _ in range(40):
        pace.task_done(0.001)
    assert pace.mean_task_s is not None and pace.mean_task_s < 0.002  # short tasks now
    pace.task_done(2.0)
    assert pace.mean_task_s is not None and 0.3 < pace.mean_task_s < 0.5  # one long task weighs ALPHA
    pace.claimed(0.004)
    pace.claimed(0.002)
    assert pace.claim_rtt_s == pytest.approx(0.004 + ALPHA * (0.002 - 0.004))
    pace.task_done(-1.0)  # a clock step never makes the mean negative
    assert pace.mean_task_s is not None and pace.mean_task_s >= 0.0
    with pytest.raises(ValueError):
        Ewma(0.0)


def test_buffer_target_is_what_the_slots_finish_during_one_claim_round_trip() -> None:
    target = policy.buffer_target
    assert target(4, 32, 0.001, None) == 4  # cold start: one per slot
    assert target(64, 32, 0.001, None) == 32  # ... capped by prefetch
    assert target(4, 0, 0.001, 0.00001) == 0  # --prefetch 0: no buffer, whatever the tasks
    assert target(4, 32, 0.001, 0.00002) == 32  # no-op tasks: prefetch, as before
    assert target(4, 32, 0.001, 0.0) == 32  # a zero duration divides nothing
    rtt, margin = 0.005, policy.CLAIM_MARGIN_S
    assert target(8, 32, rtt, 0.01) == round(8 * (rtt + margin) / 0.01) == 20  # between 0 and prefetch
    per_round_trip = 2 * (rtt + margin)  # slot-seconds of work the slots finish during one claim
    assert target(2, 32, rtt, per_round_trip / 0.6) == 1  # a slot likely frees within a round trip: buffer one
    assert target(2, 32, rtt, per_round_trip / 0.4) == 0  # unlikely: claim as slots free, hold nothing
    assert target(2, 32, rtt, 0.5) == 0  # issue 10's 0.5 s tasks: nothing queued another worker could start
    assert target(16, 32, rtt, 60.0) == 0
    assert target(4, 32, 10.0, 0.5) == 32  # a very slow link: the cap


def test_long_tasks_with_a_zero_target_claim_like_prefetch_0() -> None:
    long = dict(concurrency=2, prefetch=32, target=0)
    for busy, buffered, submitted in itertools.product(range(3), range(2), (False, True)):
        o = occupancy(**long, busy=busy, buffered=buffered, submitted=submitted)
        assert policy.capacity_wanted(o) == policy.capacity_wanted(dataclasses.replace(o, prefetch=0))


def test_long_tasks_claim_only_free_slots_plus_the_target() -> None:
    long = dict(concurrency=2, prefetch=32, target=1)
    assert policy.capacity_wanted(occupancy(**long)) == 3  # idle: 2 slots + 1 buffered, not 34
    assert policy.capacity_wanted(occupancy(**long, busy=2, buffered=1)) == 0  # full: the low-water mark is 0
    assert policy.capacity_wanted(occupancy(**long, busy=2, buffered=0)) == 1  # refill to the target only
    assert policy.capacity_wanted(occupancy(**long, busy=1, buffered=0)) == 2  # a slot freed: it + the target
    assert policy.capacity_wanted(occupancy(**long, busy=2, buffered=1, submitted=True)) == 0  # a submit: no hoard
    for busy, buffered in itertools.product(range(3), range(4)):
        o = occupancy(**long, busy=busy, buffered=buffered, submitted=True)
        assert policy.capacity_wanted(o) <= max(0, 2 - busy) + 1


def test_target_sets_the_low_water_mark_and_prefetch_caps_it() -> None:
    assert policy.capacity_wanted(occupancy(busy=4, buffered=7, target=12)) == 0  # above 12 // 2
    assert policy.capacity_wanted(occupancy(busy=4, buffered=6, target=12)) == 6  # at the mark: back to 12
    assert policy.capacity_wanted(occupancy(prefetch=8, target=100)) == 4 + 8  # never past prefetch
    assert policy.capacity_wanted(occupancy(prefetch=0, target=5)) == 4  # --prefetch 0: free slots only
    assert policy.capacity_wanted(occupancy(target=None)) == 36  # no target: prefetch, as before
    # a buffered task that does not fit yet (memory, cores) must not keep the other free slots idle
    assert policy.capacity_wanted(occupancy(concurrency=2, busy=0, buffered=1, target=1)) == 2


def test_urgent_submission_still_overtakes_a_small_full_buffer() -> None:
    full = dict(busy=4, buffered=1, target=1, submitted=True, lowest_buffered_priority=1)
    assert policy.capacity_wanted(occupancy(**full, urgent_priority=9)) == 1  # claimed past the buffer
    assert policy.capacity_wanted(occupancy(**full, urgent_priority=1)) == 0
    big = dict(busy=4, buffered=20, target=20, submitted=True, lowest_buffered_priority=1)
    assert policy.capacity_wanted(occupancy(**big, urgent_priority=9)) == 5  # target // 4


def test_results_feed_each_collected_duration_to_the_hook() -> None:
    results, pace = Results(), Pace()
    results.on_collect = pace.task_done
    for i, d in enumerate((0.5, 0.7)):
        results.put(Result(held(f"shell:1:0:0:{i}", i), Outcome(True, ""), d, time.monotonic()))
    assert pace.mean_task_s is None  # put by a slot: not seen until the fetch loop collects
    results.collect()
    assert pace.task_duration.count == 2 and pace.mean_task_s == pytest.approx(0.5 + ALPHA * 0.2)
    results.collect()
    assert pace.task_duration.count == 2  # each result is seen once


def test_livez_judges_the_loops_not_redis() -> None:
    """/livez fails only when a loop stops going round (past max(60 s, 3 idle waits)), never for
    Redis; a draining worker is alive. /healthz, the readiness, follows Redis as well."""
    live = Liveness()
    assert live.alive(idle_max_wait_s=30, stopping=False) == (True, "ok")
    down = RedisHealth("w")
    down.mark(False, "fetch", ConnectionError("refused"))
    assert live.alive(30, stopping=False)[0] and not live.check(down, 1.0, 30)[0]
    live.chores_beat -= 91  # 3 x 30 s idle wait, plus one
    ok, why = live.alive(30, stopping=False)
    assert not ok and why.startswith("chores thread silent for 9"), why
    assert live.alive(30, stopping=True) == (True, "draining")
    live.chores_beat += 91
    live.loop_beat -= 61
    assert live.alive(10, stopping=False)[0] is False  # at least 60 s, whatever the idle wait
    assert live.alive(30, stopping=False)[0] is True
