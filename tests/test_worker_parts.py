"""The worker's parts without Redis: pure policies, the prefetch buffer, the wake signal, the
results hand-off, the slot pool running real tasks, and the Lua preamble matching keys.py."""

from __future__ import annotations

import random
import re
import threading
import time
from importlib import resources

import pytest

from distcomp_obs.config import Settings
from distcomp_obs.keys import FIRST_EXTRA_KEY, SCRIPT_KEYS, Keys
from distcomp_obs.metrics import WorkerMetrics
from distcomp_obs.queue import scripts
from distcomp_obs.records import Claimed, ReportCode, claim_score
from distcomp_obs.task import MAX_PRIORITY, Task, TaskType, parse_line
from distcomp_obs.worker import policy
from distcomp_obs.worker.buffer import Held, PrefetchBuffer, make_held
from distcomp_obs.worker.execute import Outcome
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
    pool = SlotPool(settings, buf, results, wake, WorkerMetrics(None), Memory(64.0), 8, stopping)
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
    assert outcomes["shell:1:0:0:echo hi"] == Outcome(True, "hi\n")
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
    assert "local K = {todo_index = KEYS[1]," in scripts.preamble()
    assert f"lease = KEYS[{FIRST_EXTRA_KEY - 1}]" in scripts.preamble()
    assert len(Keys().script_keys("w")) == len(SCRIPT_KEYS)


def test_codes_and_score_are_shared_with_the_scripts() -> None:
    text = scripts.preamble()
    for code in ReportCode:
        assert f"{code.name} = {code.value}" in text
    assert f"MAX_PRIORITY = {MAX_PRIORITY}" in text
    task = parse_line("shell:7:0:0:x")
    assert claim_score(task.priority, 3) == (MAX_PRIORITY - 7) * 2**32 + 3
