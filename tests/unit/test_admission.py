"""Connection admission, without sockets: the cap per address and overall, the reserve and its
probation, trust; and the rate-limited warnings that refusals are logged with."""

from __future__ import annotations

import logging

import pytest

from common.admission import Admission
from common.errors import Busy
from common.ratelog import RateLimitedLog


def admission() -> Admission:
    return Admission(max_connections=6, per_address=3, reserved=2, probation_requests=2)


def test_one_address_gets_at_most_its_share() -> None:
    gate = admission()
    slots = [gate.admit("10.0.0.1") for _ in range(3)]
    with pytest.raises(Busy, match=r"10\.0\.0\.1 already has 3 connections open"):
        gate.admit("10.0.0.1")
    assert not gate.admit("10.0.0.2").probation  # another address is not affected
    gate.release(slots[0])
    gate.admit("10.0.0.1")


def test_anonymous_connections_cannot_take_the_reserve_for_good() -> None:
    gate = admission()
    ordinary = [gate.admit(f"10.0.0.{i}") for i in (1, 1, 2, 2)]  # 6 - 2 reserved
    assert not any(slot.probation for slot in ordinary)
    newcomer = gate.admit("10.0.0.3")
    assert newcomer.probation
    assert gate.admit_request(newcomer, authenticated=False)  # two anonymous requests: fine
    assert gate.admit_request(newcomer, authenticated=False)
    assert not gate.admit_request(newcomer, authenticated=False)  # a third: answered, then out
    gate.release(newcomer)
    user = gate.admit("10.0.0.4")
    assert gate.admit_request(user, authenticated=False)
    assert gate.admit_request(user, authenticated=True)  # a session: trusted, and stays
    assert user.trusted and not user.probation
    assert all(gate.admit_request(user, authenticated=False) for _ in range(5))
    gate.admit("10.0.0.5")
    with pytest.raises(Busy, match="all 6 connections are in use"):
        gate.admit("10.0.0.6")
    assert gate.open == 6


def test_a_connection_that_authenticates_leaves_room_for_another_ordinary_one() -> None:
    gate = admission()
    slots = [gate.admit(f"10.0.0.{i}") for i in range(4)]
    assert gate.admit_request(slots[0], authenticated=True)
    assert not gate.admit("10.0.0.9").probation  # the trusted one no longer counts as ordinary
    for slot in slots:
        gate.release(slot)
    assert gate.open == 1


def test_refusals_are_logged_at_most_burst_times_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warn = RateLimitedLog(logging.getLogger("test"), burst=3, interval=10, clock=lambda: now[0]).warning
    with caplog.at_level(logging.WARNING, "test"):
        for i in range(1000):
            warn("refusing %d", i)
        warn("closing %s", "x")  # another kind of warning has a budget of its own
        now[0] = 10.0
        warn("refusing %d", 1000)
    assert [r.getMessage() for r in caplog.records] == [
        "refusing 0",
        "refusing 1",
        "refusing 2",
        "closing x",
        "997 more warnings like 'refusing %d' were not logged (at most 3 every 10 s)",
        "refusing 1000",
    ]


def test_a_full_reserve_is_shared_out_fairly_among_addresses() -> None:
    """Every slot taken, the reserve by connections that reconnect as soon as they are closed: a
    newcomer displaces the oldest of the address holding the most, until each holds as many."""
    gate = admission()  # 6 connections, 2 of them the reserve
    for i in (1, 1, 2, 2):  # the ordinary slots
        gate.admit(f"10.0.0.{i}")
    flood = [gate.admit("10.0.0.3"), gate.admit("10.0.0.3")]
    assert all(s.probation for s in flood) and gate.open == 6
    user = gate.admit("10.0.0.4")
    assert user.probation and user.displaced is flood[0] and flood[0].evicted
    assert gate.open == 6  # the displaced one no longer counts
    assert not gate.admit_request(flood[0], authenticated=True)  # too late: it is being shut down
    gate.release(flood[0])  # its thread ends: nothing is counted twice
    assert gate.open == 6
    for address in ("10.0.0.3", "10.0.0.5"):  # one each now: nobody displaces anybody
        with pytest.raises(Busy, match="all 6 connections are in use"):
            gate.admit(address)
    assert gate.admit_request(user, authenticated=True)  # the user logs in: trusted, and stays
    gate.release(flood[1])
    assert gate.admit("10.0.0.3").displaced is None  # a free slot: nobody is displaced
    assert gate.open == 6
