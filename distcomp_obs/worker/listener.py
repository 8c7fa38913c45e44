"""WakeListener: a thread blocked on the wake-up channel. With adaptive polling an idle worker
claims a submitted task at once instead of at its next poll; with fixed polling (DistComp's) it
ignores submissions and hears only stop and cancel requests, so those act within a second too."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from redis.client import PubSub

from distcomp_obs.queue import Queue
from distcomp_obs.worker.parts import REDIS_DOWN
from distcomp_obs.worker.wake import WakeSignal


class WakeListener:
    def __init__(self, q: Queue, wake: WakeSignal, request_stop: Callable[[], None], name: str,
                 announcements: bool = True) -> None:  # fmt: skip
        self.q = q
        self.wake = wake
        self.request_stop = request_stop
        self.name = name
        self.announcements = announcements
        self.stopped = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="wake-listener", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        pubsub: PubSub | None = None
        while not self.stopped.is_set():
            try:
                if pubsub is None:
                    pubsub = self.q.subscribe_wake()
                self._handle(pubsub.get_message(timeout=1.0))
            except REDIS_DOWN:
                if pubsub is not None:  # free its socket now, not at garbage collection
                    with contextlib.suppress(*REDIS_DOWN):
                        pubsub.close()
                pubsub = None
                self.wake.maybe_missed()  # poll once reconnected
                self.wake.cancel_requested()  # and look for cancel requests we may have missed
                self.stopped.wait(0.5)
        if pubsub is not None:
            try:
                pubsub.close()
            except REDIS_DOWN:
                pass

    def _handle(self, message: dict[str, str] | None) -> None:
        """Handle "submit <max priority>" (submit, retry, requeue), "stop [WORKER]" (`distcomp
        stop-workers [--name]`) and "cancel" (`distcomp cancel` of a claimed task)."""
        if not message or message.get("type") != "message":
            return
        word, _, arg = message["data"].partition(" ")
        if word == "stop":
            if arg in ("", self.name):
                self.request_stop()
                self.wake.poke()
            return
        if word == "cancel":  # the next settle tells this worker which of its tasks to stop
            self.wake.cancel_requested()
            return
        if self.announcements:
            self.wake.announce(int(arg or 0))
