"""Fetcher: the fetch loop's thread. It claims into the buffer and reports results; with
`pipeline` on, reporting a batch and claiming the next is one atomic round trip (settle).
Only this thread claims, reports, or touches `Results.unsent`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from distcomp_obs.config import Settings
from distcomp_obs.errors import RedisUnavailable
from distcomp_obs.metrics import OUTCOMES, TASK_TYPES
from distcomp_obs.queue.distcomp import OneCommandProtocol
from distcomp_obs.records import NO_CLAIM, Claimed, ClaimLimits, ClaimResult, ReportCode
from distcomp_obs.redis_io import RedisRefused
from distcomp_obs.worker import policy
from distcomp_obs.worker.buffer import Held, make_held
from distcomp_obs.worker.execute import Outcome
from distcomp_obs.worker.pace import Pace
from distcomp_obs.worker.parts import REDIS_DOWN, Parts, Tally
from distcomp_obs.worker.polling import Wait
from distcomp_obs.worker.results import Result

log = logging.getLogger(__name__)


class Fetcher:
    def __init__(self, settings: Settings, incarnation: str, parts: Parts) -> None:
        self.s = settings
        self.name = settings.name
        self.incarnation = incarnation
        self.p = parts
        self.q = parts.q
        self.m = parts.metrics
        self.one_command = OneCommandProtocol(parts.q)
        self.tally = Tally()
        self.rng = random.Random()
        self._refused_delay = 0.0  # backoff while Redis answers but refuses (redis_io.REFUSALS)
        # task durations (fed as results are collected) and claim round trips: this thread's alone
        self.pace = Pace()
        parts.results.on_collect = self.pace.task_duration.observe  # per task: one call, not two
        # labelled children bound once: labels() costs more than the observation on the hot path
        self._completed = {(t, o): self.m.tasks_completed.labels(t, o) for t in TASK_TYPES for o in OUTCOMES}
        self._duration = {(t, o): self.m.task_duration_seconds.labels(t, o) for t in TASK_TYPES for o in OUTCOMES}

    # --- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        misses = 0
        last_fetch = 0.0
        p = self.p
        while not p.stopping.is_set():
            p.liveness.loop_beat = time.monotonic()
            p.wake.begin_pass()  # before looking at anything: see wake.py
            p.results.collect()
            if p.reconcile_wanted.is_set():
                p.reconcile_wanted.clear()
                try:
                    self._reconcile()
                except REDIS_DOWN:
                    p.reconcile_wanted.set()
            seen = p.wake.announced()
            want = self._capacity_wanted()
            fetch_due = self.s.polling == "adaptive" or time.monotonic() - last_fetch >= self.s.poll_interval_s
            if want and not fetch_due:
                want = 0
            claimed, remaining = 0, -1
            cancels = p.wake.take_cancel()
            if want or self._reports_due() or cancels:
                try:
                    claimed, remaining = self._round_trip(want, self._limits() if want else NO_CLAIM, cancels)
                except (*REDIS_DOWN, RedisUnavailable) as exc:
                    self._redis_down(exc)
                    continue
                if self._refused_delay:  # Redis serves again after refusing (out of memory, read-only, ...)
                    self._refused_delay = 0.0
                    p.redis.mark(True, "fetch")
                if want:
                    last_fetch = time.monotonic()
                    p.wake.claimed(seen)
                    misses = 0 if claimed else misses + 1
                    if claimed:
                        self.m.buffer_occupancy_tasks.labels("refill").observe(len(p.buffer))
                        if remaining > 0:
                            continue  # more queued: fetch again at once
                        # The queue is empty: fetching again now would cost a round trip that finds
                        # nothing while the slots start what we just got; a submit wakes us anyway.
            state = policy.FetchState(want, claimed, remaining, misses, time.monotonic() - last_fetch)
            self._wait(self._next_wait(state))

    def _capacity_wanted(self) -> int:
        seen = self.p.wake.announced()
        s, pace = self.s, self.pace
        return policy.capacity_wanted(
            policy.Occupancy(
                s.concurrency,
                s.prefetch,
                self.p.pool.busy(),
                len(self.p.buffer),
                seen.submitted,
                seen.urgent_priority,
                self.p.buffer.lowest_priority() if seen.submitted else None,
                policy.buffer_target(s.concurrency, s.prefetch, pace.claim_rtt_s, pace.mean_task_s),
            )
        )

    def _reports_due(self) -> bool:
        """Results to record, or (pipelined) starts to mark, old enough to be sent now."""
        r = self.p.results
        stopping = self.p.stopping.is_set()
        if policy.reports_due(len(r.unsent), r.oldest_age_s(), self.s.pipeline, stopping, self.s.concurrency):
            return True
        if not self.s.pipeline:
            return False  # DistComp's protocol has no start marks: the reaper then counts by slots
        starts, age = self.p.pool.starts_pending()
        return policy.reports_due(starts, age, True, stopping, self.s.concurrency)

    def _limits(self) -> ClaimLimits:
        reserved = self.p.buffer.reserved_gb()
        return policy.claim_limits(self.p.memory.available_gb, self.s.min_free_dram_gb, reserved, self.p.pool.cores)

    def _next_wait(self, state: policy.FetchState) -> Wait:
        still = self._capacity_wanted() if state.want == 0 and self.s.polling == "fixed" else 0
        return policy.next_wait(
            state,
            results_waiting=self.p.results.waiting(),
            unsent=len(self.p.results.unsent) + (self.p.pool.starts_pending()[0] if self.s.pipeline else 0),
            polling=self.s.polling,
            poll_interval_s=self.s.poll_interval_s,
            still_wanted=still,
            idle_max_wait_s=self.s.idle_max_wait_s,
            rng=self.rng,
        )

    def _wait(self, wait: Wait) -> None:
        if wait.seconds <= 0:
            return
        if wait.wake_on_submit and self.p.wake.announced().submitted:
            return
        start = time.perf_counter()
        self.p.wake.wait(wait.seconds)
        if wait.reason:
            self.m.poll_sleep_seconds.labels(wait.reason).observe(time.perf_counter() - start)

    # --- round trips ---------------------------------------------------------------------------
    def _round_trip(self, want: int, limits: ClaimLimits, cancels: bool) -> tuple[int, int]:
        """Report what finished and claim `want` more (a settle also returns the cancel requests for
        our tasks; DistComp's protocol reads them only when told some exist). Returns (claimed, tasks
        still queued)."""
        start = time.perf_counter()
        if self.s.pipeline:
            got = self._settle(want, limits)
        else:
            if cancels:
                self._stop(self.one_command.cancels(self.incarnation))
            got = self._one_command_round_trips(want, limits)
        if want:  # how long a refill takes: sizes the buffer (pace.py)
            self.pace.claimed(time.perf_counter() - start)
        return got

    def _settle(self, want: int, limits: ClaimLimits) -> tuple[int, int]:
        batch = self.p.results.unsent[: policy.MAX_REPORT_BATCH]
        tracer = self.p.tracer
        settle: Callable[..., ClaimResult] = self.q.settle
        if tracer is not None:
            settle = tracer.wrap(settle, [r.trace for r in batch])
        starts = self.p.pool.starts_to_report()
        result = settle(self.name, self.incarnation, [r.report() for r in batch], want, limits,
                        self.s.max_retry_per_task, starts)  # fmt: skip
        self.p.pool.starts_reported(len(starts))
        self._account(self.p.results.sent(len(batch)), result.report_codes)
        if not result.lease_ok:
            self.p.lease.lost()
            return 0, result.remaining
        if result.cancels:
            self._stop(result.cancels)
        self._accept(result.tasks)
        return len(result.tasks), result.remaining

    def _one_command_round_trips(self, want: int, limits: ClaimLimits) -> tuple[int, int]:
        """DistComp: one report at a time, one command per round trip; then claims, one task each."""
        tracer = self.p.tracer
        while self.p.results.unsent:
            res = self.p.results.unsent[0]
            report: Callable[..., ReportCode] = self.one_command.report
            if tracer is not None:
                report = tracer.wrap(report, [res.trace], pipelined=False)
            code = report(self.name, res.report(), self.s.max_retry_per_task)
            self._account(self.p.results.sent(1), [code])
        claimed, remaining = 0, 0
        claim: Callable[..., ClaimResult] = self.one_command.claim
        if tracer is not None:
            claim = tracer.wrap(claim, [], pipelined=False)
        for _ in range(want):
            result = claim(self.name, self.incarnation, limits)
            remaining = result.remaining
            if not result.lease_ok:
                self.p.lease.lost()
                break
            if not result.tasks:
                break
            self._accept(result.tasks)
            claimed += len(result.tasks)
            if self.s.polling == "fixed":
                break  # DistComp fetches one task per poll
        return claimed, remaining

    def _account(self, batch: list[Result], codes: list[ReportCode]) -> None:
        stale = [res.held.line for res, code in zip(batch, codes, strict=True) if code is ReportCode.STALE]
        if stale:  # one line per round trip, not per task (a stall can make hundreds at once)
            self.m.stale_reports.inc(len(stale))
            more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
            log.warning("worker %s: %d report(s) rejected: their claims are no longer ours (%r%s)", self.name,
                        len(stale), stale[0], more)  # fmt: skip
            for line in stale:
                log.debug("worker %s: report for %r rejected", self.name, line)
        for res, code in zip(batch, codes, strict=True):
            if code is ReportCode.STALE:
                continue
            if code is ReportCode.DUPLICATE:
                continue
            kind = res.held.task.type.value
            if code is ReportCode.CANCELLED:  # rare: its series is made when it first happens
                self.m.tasks_completed.labels(kind, code.outcome).inc()
                continue
            self._completed[kind, code.outcome].inc()
            ex = None if res.trace is None else res.trace.exemplar  # links the bucket to the process span
            self._duration[kind, code.outcome].observe(res.duration_s, ex)
            if code is ReportCode.FINISHED:
                self.tally.finished += 1
                continue
            self.tally.failed += 1
            log.info("worker %s: task %r failed (%s): %s", self.name, res.held.line,
                     "for good" if code is ReportCode.FAILED_FINAL else "will retry elsewhere",
                     res.outcome.output[:200])  # fmt: skip

    def _stop(self, tasks: list[str]) -> None:
        """Cancel requests for tasks we hold: buffered ones end now, running ones are killed (their
        process groups); both are reported cancelled with the next settle."""
        if not tasks:
            return
        lines = set(tasks)
        for held in self.p.buffer.drop(lambda h: h.line in lines):
            self.p.results.put(Result(held, Outcome(False, "cancelled", "cancelled"), 0.0, time.monotonic()))
        running = self.p.pool.cancel(lines)
        log.info("worker %s: cancel requested for %d task(s); stopping %d running", self.name, len(lines), running)
        self.p.wake.poke()

    def _accept(self, claimed: list[Claimed]) -> None:
        if not claimed:
            return
        now = time.time()
        items = [make_held(c, now) for c in claimed]
        for c in claimed:
            if c.submitted_s:
                self.m.task_queue_wait_seconds.observe(max(0.0, now - c.submitted_s))
        self.m.tasks_claimed.inc(len(items))
        self.m.last_claim_timestamp.set(now)
        self.p.buffer.put_many(items)
        self.m.buffer_tasks.set(len(self.p.buffer))

    # --- Redis away ------------------------------------------------------------------------------
    def _redis_down(self, exc: BaseException) -> None:
        """Wait with backoff until Redis answers, then reconcile what a lost reply may have claimed.
        A refusal (out of memory, read-only, ...) is an answer: a script refused is refused whole,
        so nothing to reconcile; back off and let the loop retry the round trip itself."""
        self.p.redis.mark(False, "fetch", exc)
        if isinstance(exc, RedisRefused):
            self._refused_delay = min(1.0, max(0.1, self._refused_delay * 2))
            self.p.stopping.wait(self._refused_delay * self.rng.uniform(0.5, 1.0))
            return
        delay, down_since = 0.1, time.monotonic()
        while not self.p.hard_stop.is_set():
            self.p.liveness.loop_beat = time.monotonic()  # waiting for Redis is not being stuck (/livez)
            start = time.perf_counter()
            time.sleep(delay * self.rng.uniform(0.5, 1.0))
            self.m.poll_sleep_seconds.labels("redis_down").observe(time.perf_counter() - start)
            try:
                self.q.rt.call("poll", 1, self.q.r.ping)
                self._reconcile()
                break
            except REDIS_DOWN:
                delay = min(1.0, delay * 2)  # capped low: after a failover every second of waiting is idle slots
            if self.p.stopping.is_set() and time.monotonic() - down_since >= 5.0:
                break  # draining and Redis stays away: stop waiting (shutdown keeps retrying reports)
        else:
            return
        if not self.p.hard_stop.is_set():
            self.p.redis.mark(True, "fetch")

    def _reconcile(self) -> None:
        """After a connection error a claim may have happened without us seeing the reply: give
        back whatever Redis says we own that we do not hold. After a restart or failover Redis may
        also have lost writes: a report (the task shows held by us: given back, it runs again) or
        a claim (buffered tasks no longer recorded ours under their token are dropped, not run)."""
        holdings = self.q.rt.call("reconcile", 1, self.q.holdings, self.name)
        tokens = {task: h.token for task, h in holdings.items()}
        dropped = self.p.buffer.drop(lambda h: tokens.get(h.line) != h.token)
        if dropped:
            log.warning("worker %s: dropped %d buffered task(s) Redis no longer records as ours", self.name,
                        len(dropped))  # fmt: skip
        owned = set(holdings)
        # Snapshot in the order tasks flow (buffer -> running -> results), so a task moving on
        # meanwhile is still seen; results not yet collected are ours too (returning those made
        # finished tasks run twice: test_lost_reply_is_reconciled[report]).
        mine = {h.line for h in self.p.buffer.unstarted()}
        mine |= self.p.pool.lines()
        self.p.results.collect()
        mine |= {r.held.line for r in self.p.results.unsent}
        unknown = owned - mine
        if unknown:
            n = self.q.requeue(self.name, [(t, "") for t in unknown], op="reconcile")
            self.m.tasks_returned.labels("reconcile").inc(n)
            log.warning("worker %s: returned %d task(s) claimed during a lost reply", self.name, n)

    # --- shutdown and give-backs ----------------------------------------------------------------
    def give_back(self, held: list[Held], reason: str) -> None:
        """Return tasks to the queue in one round trip, retried until Redis answers or a hard
        stop (any thread: slots return tasks they killed)."""
        if not held:
            return
        pairs = [(h.line, h.token) for h in held]
        for attempt in range(100):
            try:
                n = self.q.requeue(self.name, pairs)
                self.m.tasks_returned.labels(reason).inc(n)
                return
            except REDIS_DOWN:
                if self.p.hard_stop.is_set() and attempt > 2:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))
        log.error("worker %s: could not return %d task(s); the reaper will once the lease expires",
                  self.name, len(held))  # fmt: skip

    def flush_reports(self, final: bool = False) -> None:
        self.p.results.collect()
        attempts = 0
        while self.p.results.unsent:
            try:
                self._round_trip(0, NO_CLAIM, False)
            except REDIS_DOWN:
                attempts += 1
                if not final or self.p.hard_stop.is_set() or attempts > 20:
                    return
                time.sleep(min(2.0, 0.05 * 2**attempts))
