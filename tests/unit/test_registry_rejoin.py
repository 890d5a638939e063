"""Just after the proxy starts, listings wait for the servers it knew to register again
(proxy.registry.Registry.wait_for_rejoin), at most ``rejoin`` seconds after the start."""

from __future__ import annotations

import threading
import time

from proxy.registry import Registry

KNOWN = {1: ("127.0.0.1", 9001), 2: ("127.0.0.1", 9002)}


def register(registry: Registry, server_id: int) -> None:
    registry.register(server_id, "127.0.0.1", 9000 + server_id, 10**9, 0, 0)


def test_nothing_known_or_no_rejoin_time_is_no_wait() -> None:
    for registry in (Registry(dead_after=7, rejoin=30), Registry(dead_after=7, known=KNOWN)):
        started = time.monotonic()
        registry.wait_for_rejoin()
        assert time.monotonic() - started < 1


def test_it_returns_once_every_known_server_is_back() -> None:
    registry = Registry(dead_after=7, known=KNOWN, rejoin=30)
    assert registry.live_ids() == set()
    timers = [threading.Timer(0.1, register, (registry, 1)), threading.Timer(0.2, register, (registry, 2))]
    for timer in timers:
        timer.start()
    started = time.monotonic()
    registry.wait_for_rejoin()
    assert time.monotonic() - started < 20 and registry.live_ids() == {1, 2}


def test_a_server_that_does_not_come_back_is_waited_for_until_the_rejoin_time_only() -> None:
    registry = Registry(dead_after=7, known=KNOWN, rejoin=0.3)
    register(registry, 1)
    started = time.monotonic()
    registry.wait_for_rejoin()
    assert 0.25 <= time.monotonic() - started < 20 and registry.live_ids() == {1}
    started = time.monotonic()
    registry.wait_for_rejoin()  # later: at once
    assert time.monotonic() - started < 0.2
