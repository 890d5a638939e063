"""The header budget, without sockets: waiting for room, the per-address share, the two-step
admission of a header (raw bytes, then parse cost), and what is refused outright."""

from __future__ import annotations

import threading
import time

import pytest

from common.budget import Budget, HeaderBudget
from common.errors import RemoteProtocolError
from common.messages import MsgType
from common.protocol import FrameHead

BIG = FrameHead(MsgType.UPLOAD_BEGIN, 8000, 0)
SMALL = FrameHead(MsgType.LOGIN, 100, 0)


def test_a_reservation_waits_for_room_then_gives_up() -> None:
    budget = Budget(100)
    assert budget.reserve(60, "a", 0)
    started = time.monotonic()
    assert not budget.reserve(50, "b", 0.2)
    assert time.monotonic() - started >= 0.2
    threading.Timer(0.1, budget.release, (60, "a")).start()
    assert budget.reserve(50, "b", 5)  # woken by the release, long before 5 s
    assert budget.used == 50


def test_one_owner_holds_at_most_its_share_and_others_still_get_in() -> None:
    budget = Budget(100, per_owner=50)
    assert budget.reserve(50, "attacker", 0)
    assert not budget.reserve(1, "attacker", 0.05)
    assert budget.reserve(50, "client", 0)
    assert not budget.reserve(51, "client", 10)  # more than a share can never fit: no wait
    budget.release(50, "attacker")
    budget.release(50, "client")
    assert budget.used == 0


def gates() -> HeaderBudget:
    return HeaderBudget(receive=20_000, parse=50_000, wait=0.05, unmetered=1000)


def test_small_headers_are_not_metered() -> None:
    budget = gates()
    gate = budget.gate("a")
    assert gate.admit_header(SMALL) and gate.admit_parse(SMALL, 10**9)
    assert budget.receiving.used == budget.parsing.used == 0


def test_a_big_header_holds_its_raw_bytes_then_its_parse_cost_until_released() -> None:
    budget = gates()
    gate = budget.gate("a")
    assert gate.admit_header(BIG)
    assert budget.receiving.used == 9000  # 8000 and the 1/8 a growing buffer may over-allocate
    assert gate.admit_parse(BIG, 30_000)
    assert (budget.receiving.used, budget.parsing.used) == (9000, 30_000)
    gate.header_parsed()
    assert (budget.receiving.used, budget.parsing.used) == (0, 30_000)
    gate.release()
    assert (budget.receiving.used, budget.parsing.used) == (0, 0)


def test_when_there_is_no_room_the_header_is_refused_and_nothing_is_held() -> None:
    budget = gates()
    first, second = budget.gate("a"), budget.gate("b")
    assert first.admit_header(BIG) and first.admit_parse(BIG, 45_000)
    assert second.admit_header(BIG)
    assert not second.admit_parse(BIG, 10_000)  # no room to parse: busy
    assert budget.receiving.used == 9000  # the second let go of its raw bytes too
    first.release()
    assert budget.receiving.used == budget.parsing.used == 0


def test_one_address_cannot_take_the_whole_receiving_budget() -> None:
    budget = gates()
    assert budget.gate("a").admit_header(BIG)  # 9000 of a 10 000 share
    assert not budget.gate("a").admit_header(BIG)
    assert budget.gate("b").admit_header(BIG)


def test_a_header_that_could_never_be_parsed_is_a_protocol_error() -> None:
    budget = gates()
    gate = budget.gate("a")
    assert gate.admit_header(BIG)
    with pytest.raises(RemoteProtocolError, match="UPLOAD_BEGIN header would take"):
        gate.admit_parse(BIG, 50_001)
    assert budget.receiving.used == 0
    assert not budget.admits(20_000) and budget.admits(8000) and budget.admits(999)
