"""Session lifetimes (proxy/sessions.py) on a real catalog in a temp folder, with a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import StorageIOError
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.sessions import MAX_PER_USER, SWEEP_BATCH, SessionPolicy, Sessions

IDLE = 100.0
MAX_AGE = 1000.0
POLICY = SessionPolicy(idle=IDLE, max_age=MAX_AGE)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "proxy")


def sessions_at(catalog: Catalog, clock: Clock) -> Sessions:
    catalog.add_user("ana", "00", "11")
    return Sessions(catalog, POLICY, clock)


def test_use_keeps_a_session_alive_and_idleness_ends_it(catalog: Catalog, clock: Clock) -> None:
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")
    for _ in range(5):  # 5 x 0.9 idle: well past the idle timeout in all, well within the maximum
        clock.now += IDLE * 0.9
        assert sessions.user_of(token) == "ana"
    clock.now += IDLE
    assert sessions.user_of(token) is None
    assert sessions.user_of(token) is None  # a refusal does not count as a use


def test_the_maximum_lifetime_ends_even_a_busy_session(catalog: Catalog, clock: Clock) -> None:
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")
    start = clock.now
    while sessions.user_of(token) == "ana":
        clock.now += IDLE / 2
        assert clock.now - start <= 2 * MAX_AGE, "the session outlived its maximum lifetime"
    assert clock.now - start == pytest.approx(MAX_AGE)


def test_uses_are_journaled_coarsely(catalog: Catalog, clock: Clock) -> None:
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")
    before = catalog.journal.seq
    for _ in range(1000):  # one request every 0.05 s for 50 s
        clock.now += 0.05
        assert sessions.user_of(token) == "ana"
    touches = catalog.journal.seq - before
    assert touches == pytest.approx(50 / POLICY.touch_every, abs=1)  # 5, not 1000


def test_sessions_survive_a_restart_with_their_journaled_last_use(tmp_path: Path, clock: Clock) -> None:
    catalog = Catalog(tmp_path / "proxy")
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")
    clock.now += IDLE * 0.95
    assert sessions.user_of(token) == "ana"  # journaled (older than touch_every)
    clock.now += POLICY.touch_every / 2
    assert sessions.user_of(token) == "ana"  # in memory only
    catalog.close()

    again = Sessions(Catalog(tmp_path / "proxy"), POLICY, clock)
    assert again.user_of(token) == "ana"
    clock.now += IDLE - POLICY.touch_every / 2 - 1
    assert again.user_of(token) == "ana"  # counted from the journaled use, a little sooner at worst
    clock.now += IDLE + 1
    assert again.user_of(token) is None


def test_the_sweep_removes_expired_sessions_in_bounded_batches(catalog: Catalog, clock: Clock) -> None:
    catalog.add_user("ana", "00", "11")
    sessions = Sessions(catalog, POLICY, clock)
    for n in range(SWEEP_BATCH + 10):  # many users: the per-user cap does not apply
        catalog.add_session(token_hash(f"old{n}"), f"user{n}", clock.now)
    keep = sessions.start("ana")
    clock.now += IDLE * 0.9
    assert sessions.user_of(keep) == "ana"
    clock.now += IDLE * 0.2  # the old ones are idle past the limit; ana's was used
    seq = catalog.journal.seq
    assert sessions.sweep_once() == SWEEP_BATCH
    assert catalog.journal.seq == seq + 1  # one journal entry for the whole batch
    assert sessions.sweep_once() == 10
    assert sessions.sweep_once() == 0
    assert [h for h, _ in catalog.sessions()] == [token_hash(keep)]
    catalog.close()
    assert [h for h, _ in Catalog(catalog.journal.folder).sessions()] == [token_hash(keep)]


def test_logout_ends_a_session(catalog: Catalog, clock: Clock) -> None:
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")
    sessions.end(token)
    assert sessions.user_of(token) is None
    assert catalog.sessions() == []


def test_a_user_has_at_most_so_many_sessions(catalog: Catalog, clock: Clock) -> None:
    sessions = sessions_at(catalog, clock)
    tokens = []
    for _ in range(MAX_PER_USER):
        tokens.append(sessions.start("ana"))
        clock.now += 0.01
    assert sessions.user_of(tokens[0]) == "ana"  # the oldest, but used just now
    newest = sessions.start("ana")
    assert len(catalog.sessions_of("ana")) == MAX_PER_USER
    assert sessions.user_of(tokens[1]) is None  # the least recently used one ended
    assert sessions.user_of(tokens[0]) == sessions.user_of(newest) == "ana"


def test_a_failed_touch_does_not_refuse_the_request(
    catalog: Catalog, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = sessions_at(catalog, clock)
    token = sessions.start("ana")

    def broken(*args: object, **kwargs: object) -> None:
        raise StorageIOError("the proxy could not write its catalog (disk gone)")

    monkeypatch.setattr(catalog, "touch_session", broken)
    clock.now += IDLE * 0.9
    assert sessions.user_of(token) == "ana"
    clock.now += IDLE * 0.9
    assert sessions.user_of(token) == "ana"  # the use is known in memory


def test_sessions_from_before_expiry_existed_count_from_their_creation(
    catalog: Catalog, clock: Clock
) -> None:
    catalog.add_user("ana", "00", "11")
    catalog.add_session(token_hash("legacy"), "ana", clock.now)  # no "used" field: as an older proxy wrote it
    sessions = Sessions(catalog, POLICY, clock)
    clock.now += 10**9
    assert sessions.user_of("legacy") is None
