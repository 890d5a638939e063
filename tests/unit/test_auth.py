"""The throttles and the password check of proxy/auth.py: small state and a fake clock, no network."""

from __future__ import annotations

import threading

import pytest

from common.admission import client_key
from common.errors import Throttled
from proxy.auth import (
    FORGET_AFTER,
    MAX_WAIT,
    Backoff,
    LinkThrottle,
    LoginThrottle,
    PasswordCheck,
    hash_password,
)

FREE = LoginThrottle.FREE
ADDRESS_FREE = LoginThrottle.ADDRESS_FREE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(throttle: LoginThrottle, address: str, user: str, times: int = 1) -> None:
    for _ in range(times):
        throttle.attempt(address, user)  # counted as failed: never succeeded


def test_a_guesser_on_one_account_backs_off_and_a_success_resets(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    fail(throttle, "10.0.0.1", "ana", FREE)
    with pytest.raises(
        Throttled, match=r"^too many failed logins for 'ana' from your address; try again in 1 s$"
    ):
        throttle.attempt("10.0.0.1", "ana")
    clock.now += 1
    fail(throttle, "10.0.0.1", "ana")  # the wait is over: one more try, then twice as long
    with pytest.raises(Throttled, match="try again in 2 s"):
        throttle.attempt("10.0.0.1", "ana")
    clock.now += 2
    throttle.attempt("10.0.0.1", "ana")
    throttle.succeeded("10.0.0.1", "ana")
    fail(throttle, "10.0.0.1", "ana", FREE)  # the count started again


def test_waits_double_up_to_the_maximum(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    waits = []
    for _ in range(FREE + 10):
        try:
            throttle.attempt("10.0.0.1", "ana")
        except Throttled as exc:
            waits.append(int(str(exc).rsplit(" ", 2)[1]))
            clock.now += waits[-1]
            throttle.attempt("10.0.0.1", "ana")
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_the_owner_at_another_address_is_not_locked_out(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    fail(throttle, "10.0.0.66", "ana", FREE)
    with pytest.raises(Throttled):
        throttle.attempt("10.0.0.66", "ana")
    throttle.attempt("10.0.0.7", "ana")  # the owner, elsewhere: goes ahead
    throttle.succeeded("10.0.0.7", "ana")


def test_spraying_from_one_address_is_caught(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    for n in range(ADDRESS_FREE):  # one guess per account: never the per-account limit
        throttle.attempt("10.0.0.66", f"user{n}")
    with pytest.raises(Throttled, match=r"^too many failed logins from your address; try again in 1 s$"):
        throttle.attempt("10.0.0.66", "someone-else")
    throttle.attempt("10.0.0.7", "someone-else")  # other addresses are not slowed


def test_a_success_refunds_one_failure_not_all(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    for n in range(ADDRESS_FREE - 1):
        throttle.attempt("10.0.0.66", f"user{n}")
    throttle.attempt("10.0.0.66", "mine")
    throttle.succeeded("10.0.0.66", "mine")  # the attacker's own account: only its try is refunded
    throttle.attempt("10.0.0.66", "user99")
    with pytest.raises(Throttled, match="from your address"):
        throttle.attempt("10.0.0.66", "user100")


def test_refused_attempts_count_nothing_and_quiet_addresses_are_forgotten(clock: Clock) -> None:
    throttle = LoginThrottle(clock)
    fail(throttle, "10.0.0.66", "ana", FREE)
    for _ in range(100):
        with pytest.raises(Throttled, match="in 1 s"):  # not extended by refusals
            throttle.attempt("10.0.0.66", "ana")
    clock.now += FORGET_AFTER
    fail(throttle, "10.0.0.66", "ana", FREE)  # forgotten: a fresh count
    assert throttle.tracked() == 2


def test_memory_stays_bounded_whatever_the_keys(clock: Clock) -> None:
    backoff = Backoff(3, capacity=100)
    for n in range(10_000):
        backoff.fail(f"10.0.{n // 256}.{n % 256}", clock.now)
        clock.now += 0.001
    assert len(backoff) == 100
    assert backoff.wait("10.0.39.15", clock.now) == 0  # the quietest went first...
    backoff.fail("10.0.39.15", clock.now)
    backoff.fail("10.0.39.15", clock.now)
    assert backoff.wait("10.0.39.15", clock.now) > 0  # ...the newest are kept


def test_parallel_guesses_cannot_slip_past_the_limit() -> None:
    throttle = LoginThrottle()
    allowed = []
    start = threading.Barrier(60)

    def guess() -> None:
        start.wait()
        try:
            throttle.attempt("10.0.0.66", "ana")
            allowed.append(True)
        except Throttled:
            allowed.append(False)

    threads = [threading.Thread(target=guess) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == FREE


def test_link_misses_are_throttled_per_address_and_hits_refunded(clock: Clock) -> None:
    links = LinkThrottle(clock)
    for _ in range(LinkThrottle.FREE - 1):
        links.attempt("10.0.0.66")  # misses
    for _ in range(50):
        links.attempt("10.0.0.66")  # hits: each refunded
        links.found("10.0.0.66")
    links.attempt("10.0.0.66")  # the last free miss
    with pytest.raises(
        Throttled, match=r"^too many unknown links tried from your address; try again in 1 s$"
    ):
        links.attempt("10.0.0.66")
    links.attempt("10.0.0.7")  # another address: not slowed
    clock.now += MAX_WAIT
    links.attempt("10.0.0.66")


def test_a_known_link_after_the_wait_works_and_does_not_restart_it(clock: Clock) -> None:
    """Past the wait its misses earned, an address that opens known links (two lookups at once, as
    the gateway makes) is never made to wait again by them: a hit takes back its own attempt."""
    links = LinkThrottle(clock)
    for _ in range(LinkThrottle.FREE):
        links.attempt("10.0.0.66")  # 20 typos
    with pytest.raises(Throttled):
        links.attempt("10.0.0.66")
    clock.now += 1.0  # the stated wait
    for _ in range(10):
        for _ in range(2):  # back to back
            links.found("10.0.0.66", links.attempt("10.0.0.66"))
        clock.now += 0.01
    miss = links.attempt("10.0.0.66")  # one more typo: a longer wait, counted from now
    assert miss.at == clock.now
    with pytest.raises(Throttled, match="try again in 2 s"):
        links.attempt("10.0.0.66")


def test_a_right_login_does_not_restart_the_wait_of_the_address(clock: Clock) -> None:
    logins = LoginThrottle(clock)
    for i in range(LoginThrottle.ADDRESS_FREE):
        logins.attempt("10.0.0.66", f"guess{i}")  # failures at other accounts
    clock.now += 1.0
    for _ in range(3):
        logins.succeeded("10.0.0.66", "mine", logins.attempt("10.0.0.66", "mine"))  # at once


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),  # one subscriber's /64 is one address
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
    ],
)
def test_client_keys(host: str, key: str) -> None:
    assert client_key(host) == key


def test_the_password_check_refuses_unknown_users_after_the_same_work() -> None:
    check = PasswordCheck()
    salt, hashed = hash_password("correct horse")
    record = {"salt": salt, "hash": hashed}
    assert check.matches("correct horse", record)
    assert not check.matches("wrong horse", record)
    assert not check.matches("correct horse", None)


def test_tokens_never_start_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare token on a command line (`filecluster unshare TOKEN`) must not read as an option."""
    import secrets

    from proxy import auth

    drawn = iter(["-starts-like-an-option", "-again", "fine_token"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert auth.new_token() == "fine_token"
    monkeypatch.undo()
    assert all(len(t) == 43 and not t.startswith("-") for t in (auth.new_token() for _ in range(2000)))
