"""The login throttle over the wire, against the real proxy process of the shared cluster.

Each test has a user of its own and guesses from a loopback address of its own (the throttle counts
per address and per (address, user)), so the cluster is not disturbed.  "AuthError 'wrong user name
or password'" means the password was actually checked; Throttled ("too many failed logins") means
the proxy refused before checking it.  More attacks: test_login_attacks.py.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from client.proxy_link import ProxyLink
from common.errors import AlreadyExists, AuthError, Throttled
from common.messages import MsgType
from proxy.auth import LoginThrottle
from tests.cluster import Cluster, loopback_source
from tests.conftest import PASSWORD, new_user

FREE = LoginThrottle.FREE
WRONG = "not the password"
CHECKED = "wrong user name or password"


def throttled(user: str) -> str:
    return rf"^too many failed logins for '{user}' from your address; try again in \d+ s$"


def victim(cluster: Cluster) -> str:
    """A new user (registered and logged in once), whose name the tests guess at."""
    with new_user(cluster, "victim") as client:
        assert client.user is not None
        return client.user


def login(link: ProxyLink, user: str, password: str) -> str:
    return str(link.call(MsgType.LOGIN, {"user": user, "password": password})["user"])


def logs_in(link: ProxyLink, user: str) -> bool:
    try:
        return login(link, user, PASSWORD) == user
    except Throttled as exc:
        assert "too many failed logins" in str(exc)
        return False


def test_after_five_failures_even_the_right_password_is_refused(cluster: Cluster) -> None:
    user = victim(cluster)
    with cluster.link() as link:
        for _ in range(FREE):
            with pytest.raises(AuthError, match=CHECKED):
                login(link, user, WRONG)
        with pytest.raises(Throttled, match=throttled(user)):
            login(link, user, PASSWORD)
        with pytest.raises(Throttled, match=throttled(user)):
            login(link, user, WRONG)

        # a wait, not a lock-out: refused attempts do not extend it, and once it is over the
        # right password works (and clears the count)
        Cluster.wait_for(lambda: logs_in(link, user), "the login wait to end", timeout=10)
        with pytest.raises(AuthError, match=CHECKED):
            login(link, user, WRONG)


def test_a_success_before_the_limit_resets_the_count(cluster: Cluster) -> None:
    user = victim(cluster)
    with cluster.link() as link:
        for _ in range(2):  # without the reset, the second round would hit the limit
            for _ in range(FREE - 1):
                with pytest.raises(AuthError, match=CHECKED):
                    login(link, user, WRONG)
            assert login(link, user, PASSWORD) == user


def test_parallel_guesses_share_the_same_five(cluster: Cluster) -> None:
    user = victim(cluster)
    guessers = 12
    source = loopback_source()  # one guesser with many connections
    links = [cluster.link(source) for _ in range(guessers)]
    start = threading.Barrier(guessers)

    def guess(link: ProxyLink) -> str:
        link.call(MsgType.HELLO)  # connected before the start line
        start.wait(timeout=10)
        try:
            return f"logged in as {login(link, user, WRONG)}"
        except (AuthError, Throttled) as exc:
            return str(exc)

    try:
        with ThreadPoolExecutor(guessers) as pool:
            answers = list(pool.map(guess, links))
        checked = [a for a in answers if a == CHECKED]
        refused = [a for a in answers if a.startswith(f"too many failed logins for '{user}'")]
        assert len(checked) + len(refused) == guessers, answers
        assert 1 <= len(checked) <= FREE, answers  # at most FREE passwords were actually checked
        with pytest.raises(Throttled, match=throttled(user)):  # the budget is spent for this address
            login(links[0], user, PASSWORD)
    finally:
        for link in links:
            link.close()


def test_user_names_are_one_account_whatever_their_case(cluster: Cluster) -> None:
    """ "Ana" cannot be registered once "ana" is (no look-alike account), and "ANA" logs in as ana,
    counted by the same throttle as ana: typing the case differently gives no fresh attempts."""
    user = victim(cluster)
    with cluster.link() as link:
        for other in (user.upper(), user.capitalize()):
            with pytest.raises(AlreadyExists, match=f"the user name '{other}' is taken"):
                link.call(MsgType.REGISTER, {"user": other, "password": PASSWORD})
        assert login(link, user.upper(), PASSWORD) == user  # the account's own name, as registered
        for typed in [user.upper(), user.capitalize(), user] * FREE:
            with pytest.raises((AuthError, Throttled)):
                login(link, typed, WRONG)
        with pytest.raises(Throttled, match=throttled(user)):
            login(link, user.swapcase(), PASSWORD)
