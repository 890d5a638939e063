"""The shared deadline watchdog (client.watchdog): alarms fire in order, cancelled ones never."""

from __future__ import annotations

import threading
import time

from client.watchdog import Watchdog


def test_alarms_fire_in_time_order_and_cancelled_ones_never() -> None:
    dog = Watchdog()
    fired: list[str] = []
    done = threading.Event()
    now = time.monotonic()

    def last() -> None:
        fired.append("late")
        done.set()

    dog.schedule(now + 0.20, last)
    dog.schedule(now + 0.05, lambda: fired.append("early"))
    cancelled = dog.schedule(now + 0.10, lambda: fired.append("cancelled"))
    cancelled.cancel()
    dog.schedule(now + 0.01, lambda: fired.append("first"))  # earlier than what the thread waits for
    assert done.wait(5)
    assert fired == ["first", "early", "late"]


def test_an_alarm_that_raises_does_not_stop_the_others() -> None:
    dog = Watchdog()
    done = threading.Event()
    now = time.monotonic()

    def broken() -> None:
        raise RuntimeError("boom")

    dog.schedule(now, broken)
    dog.schedule(now + 0.02, done.set)
    assert done.wait(5)
