"""WakeListener: with adaptive polling, a thread blocked on the wake-up channel, so an idle
worker claims a submitted task at once instead of at its next poll."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from redis.client import PubSub

from distcomp_obs.queue import Queue
from distcomp_obs.worker.parts import REDIS_DOWN
from distcomp_obs.worker.wake import WakeSignal


class WakeListener:
    def __init__(self, q: Queue, wake: WakeSignal, request_stop: Callable[[], None]) -> None:
        self.q = q
        self.wake = wake
        self.request_stop = request_stop
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
                self.stopped.wait(0.5)
        if pubsub is not None:
            try:
                pubsub.close()
            except REDIS_DOWN:
                pass

    def _handle(self, message: dict[str, str] | None) -> None:
        """Handle "submit <max priority>" (submit, retry, requeue) and "stop" (`distcomp stop-workers`)."""
        if not message or message.get("type") != "message":
            return
        if message["data"] == "stop":
            self.request_stop()
            self.wake.poke()
            return
        if message["data"] == "cancel":  # the next settle tells this worker which of its tasks to stop
            self.wake.cancel_requested()
            return
        _, _, priority = message["data"].partition(" ")
        self.wake.announce(int(priority or 0))
