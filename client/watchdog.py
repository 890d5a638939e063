"""One thread that fires the deadlines of many transfers, instead of a timer thread for each.

A download of many small files (client.batch) gives each file a deadline; starting and stopping a
``threading.Timer`` per file costs a thread's creation and its wake-ups every time.  Here every
deadline waits in one heap, watched by one daemon thread started on first use: ``schedule(at, fire)``
returns an :class:`Alarm` whose ``cancel()`` is a flag, and ``fire`` runs in the watchdog's thread
at ``at`` (time.monotonic) unless it was cancelled first.  ``fire`` must be quick and must not raise
(it breaks connections, sets events); an exception is logged and the watchdog goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Alarm:
    __slots__ = ("at", "cancelled", "fire")

    def __init__(self, at: float, fire: Callable[[], None]) -> None:
        self.at = at
        self.fire = fire
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def schedule(self, at: float, fire: Callable[[], None]) -> Alarm:
        alarm = Alarm(at, fire)
        with self._wake:
            heapq.heappush(self._heap, (at, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is alarm:  # earlier than what the watchdog sleeps for
                self._wake.notify()
        return alarm

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)  # cancelled alarms leave as they reach the top
                if not self._heap:
                    self._wake.wait()
                    continue
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                alarm = heapq.heappop(self._heap)[2]
            if not alarm.cancelled:
                try:
                    alarm.fire()
                except Exception:
                    log.exception("a transfer's deadline could not be enforced")


_WATCHDOG = Watchdog()


def schedule(at: float, fire: Callable[[], None]) -> Alarm:
    """Run ``fire`` at ``at`` (time.monotonic) in the shared watchdog thread, unless cancelled."""
    return _WATCHDOG.schedule(at, fire)
