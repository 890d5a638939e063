"""Attacks on logins, sessions and share links, over real sockets against a real proxy process.

Every attacker and every owner connects from a loopback address of its own (``Cluster.link``), as
different hosts would, so the proxy's per-address throttles see them apart and the shared cluster
is not disturbed.  Session lifetimes get proxies of their own, configured in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.proxy_link import ProxyLink
from common.errors import AuthError, InvalidRequest, NotFound, Throttled
from common.limits import CREDENTIALS_HEADER
from common.messages import MsgType
from common.protocol import PREFIX
from proxy.auth import LinkThrottle, LoginThrottle, token_hash
from tests.cluster import Cluster
from tests.conftest import PASSWORD, new_user

WRONG = "not the password"
CHECKED = "wrong user name or password"


def login(link: ProxyLink, user: str, password: str) -> str:
    return str(link.call(MsgType.LOGIN, {"user": user, "password": password})["session"])


def outcome(link: ProxyLink, user: str, password: str) -> str:
    """ "ok", "checked" (a wrong password, actually checked) or "throttled" (refused before)."""
    try:
        login(link, user, password)
        return "ok"
    except AuthError as exc:
        assert str(exc) == CHECKED
        return "checked"
    except Throttled:
        return "throttled"


def registered(cluster: Cluster, prefix: str) -> str:
    with new_user(cluster, prefix) as client:
        assert client.user is not None
        return client.user


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- logins ---------------------------------------------------------------------------------------


def test_a_wrong_password_takes_as_long_for_an_unknown_user_as_for_a_known_one(cluster: Cluster) -> None:
    known = registered(cluster, "timed")
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    for n in range(25):
        order = [("known", known), ("unknown", f"nobody-{secrets.token_hex(4)}")]
        for kind, user in order if n % 2 else order[::-1]:
            with cluster.link() as link:  # an address of its own: no throttle in the way
                link.call(MsgType.HELLO)
                start = time.perf_counter()
                with pytest.raises(AuthError, match=CHECKED):
                    login(link, user, WRONG)
                times[kind].append(time.perf_counter() - start)
    known_median, unknown_median = statistics.median(times["known"]), statistics.median(times["unknown"])
    # without the dummy hash an unknown user is refused ~100x faster; on a busy machine both vary
    assert 0.5 < unknown_median / known_median < 2, (known_median, unknown_median)


def test_long_user_names_are_refused_before_anything_is_kept(cluster: Cluster) -> None:
    assert cluster.proxy is not None
    before = rss(cluster.proxy.pid)
    longest = CREDENTIALS_HEADER - 64  # the longest name a LOGIN may carry (PROTOCOL.md §3.1)
    for address in range(250):  # 1000 attempts from 250 addresses: under every throttle's limit
        with cluster.link() as link:
            for attempt in range(4):
                name = f"{address:03d}{attempt}".ljust(longest, "n")  # each a new name to keep
                with pytest.raises(InvalidRequest) as refused:
                    login(link, name, WRONG)
                assert refused.value.message.startswith("a user name is 1 to 32 letters")  # one short line
    grown = rss(cluster.proxy.pid) - before
    assert grown < 8 << 20, f"the proxy grew by {grown >> 20} MiB"  # keeping the names takes 16 MiB
    # a megabyte name is not even read: such a LOGIN is refused from its 16-byte prefix, unanswered
    with socket.create_connection(("127.0.0.1", cluster.proxy_port), timeout=5) as sock:
        sock.sendall(PREFIX.pack(b"FC", 1, MsgType.LOGIN, 1 << 20, 0) + b"{")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""


def test_an_attackers_guesses_do_not_lock_the_owner_out(cluster: Cluster) -> None:
    user = registered(cluster, "owner")
    with cluster.link() as attacker, cluster.link() as owner:
        results = [outcome(attacker, user, WRONG) for _ in range(LoginThrottle.FREE + 5)]
        assert results.count("checked") == LoginThrottle.FREE
        assert outcome(attacker, user, PASSWORD) == "throttled"  # even the right password, from there
        start = time.monotonic()
        assert outcome(owner, user, PASSWORD) == "ok"  # at once, from the owner's address
        assert time.monotonic() - start < 2


def test_spraying_two_passwords_over_forty_accounts_is_throttled(cluster: Cluster) -> None:
    accounts = [registered(cluster, "sprayed") for _ in range(40)]
    with cluster.link() as sprayer:
        results = [outcome(sprayer, user, guess) for guess in (WRONG, "123456789") for user in accounts]
        # the address's budget is spent, whichever accounts it was spent on (+2: a stalled machine
        # may let the sprayer's wait run out before its next guess)
        assert results.count("ok") == 0
        assert LoginThrottle.ADDRESS_FREE <= results.count("checked") <= LoginThrottle.ADDRESS_FREE + 2
        with pytest.raises(
            Throttled, match=r"^too many failed logins from your address; try again in \d+ s$"
        ):
            login(sprayer, accounts[0], PASSWORD)
    with cluster.link() as owner:
        assert outcome(owner, accounts[0], PASSWORD) == "ok"  # other addresses are not slowed


# -- sessions -------------------------------------------------------------------------------------


@pytest.fixture
def short_sessions(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A proxy of its own (no storage servers) whose sessions end after seconds: the test's
    parameter is (idle, max)."""
    idle, most = request.param
    c = Cluster(tmp_path / "cluster", servers=0, session_idle=idle, session_max=most).start()
    try:
        yield c
    finally:
        c.stop()


def whoami(link: ProxyLink, session: str) -> str:
    return str(link.call(MsgType.WHOAMI, {"session": session})["user"])


def logged_in(c: Cluster) -> tuple[ProxyLink, str, str]:
    """A link from an address of its own, a new user and a fresh session of theirs."""
    link = c.link()
    user = f"ana{secrets.token_hex(3)}"
    link.call(MsgType.REGISTER, {"user": user, "password": PASSWORD})
    return link, user, login(link, user, PASSWORD)


def use_for(link: ProxyLink, session: str, user: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert whoami(link, session) == user
        time.sleep(0.2)


@pytest.mark.parametrize("short_sessions", [(2, 600)], indirect=True)
def test_a_session_ends_after_the_idle_timeout_but_use_keeps_it_alive(short_sessions: Cluster) -> None:
    link, user, session = logged_in(short_sessions)
    with link:
        use_for(link, session, user, 3)  # longer than the idle timeout, but never idle that long
        time.sleep(2.5)
        with pytest.raises(AuthError, match="not logged in"):  # like a logged-out session
            whoami(link, session)
        with pytest.raises(AuthError, match="not logged in"):
            link.call(MsgType.LOGOUT, {"session": session})
        assert whoami(link, login(link, user, PASSWORD)) == user  # logging in again works


@pytest.mark.parametrize("short_sessions", [(600, 3)], indirect=True)
def test_a_session_ends_at_its_maximum_lifetime_however_busy(short_sessions: Cluster) -> None:
    link, user, session = logged_in(short_sessions)
    start = time.monotonic()
    with link:
        while True:
            try:
                assert whoami(link, session) == user
            except AuthError:
                break
            time.sleep(0.1)
            assert time.monotonic() - start < 10, "the session outlived its maximum lifetime"
    assert time.monotonic() - start > 2.5


@pytest.mark.parametrize("short_sessions", [(1, 600)], indirect=True)
def test_expired_sessions_are_removed_from_the_catalog(short_sessions: Cluster) -> None:
    c = short_sessions
    link, user, first = logged_in(c)
    with link:
        sessions = [first, *(login(link, user, PASSWORD) for _ in range(4))]
    log = c.root / "proxy.log"

    def removed() -> int:  # the sweep may take them in more than one round
        return sum(int(n) for n in re.findall(r"(\d+) expired session\(s\) removed", log.read_text()))

    c.wait_for(lambda: removed() >= 5, "the sweep")
    c.kill_proxy(signal.SIGTERM)  # a clean stop writes the whole catalog
    catalog = json.loads((c.root / "proxy" / "catalog.json").read_text())
    assert not {token_hash(s) for s in sessions} & set(catalog["sessions"])
    assert catalog["sessions"] == {}


# -- share links ----------------------------------------------------------------------------------


def test_link_guessing_is_throttled_per_address_and_good_links_work_elsewhere(
    cluster: Cluster, tmp_path: Path
) -> None:
    with new_user(cluster, "sharer") as owner:
        src = tmp_path / "shared.txt"
        src.write_bytes(b"hello")
        owner.upload(src)
        token = owner.proxy.call(MsgType.SHARE, {"name": "shared.txt"}, session=True)["token"]
    misses = 0
    with cluster.link() as guesser:
        while True:
            try:
                guesser.call(MsgType.LOCATE, {"token": secrets.token_urlsafe(32)})
            except NotFound:
                misses += 1
                assert misses < 100, "a hundred unknown links, and no throttle"
                continue
            except Throttled as exc:
                assert re.fullmatch(
                    r"too many unknown links tried from your address; try again in \d+ s", str(exc)
                )
                break
        assert LinkThrottle.FREE <= misses <= LinkThrottle.FREE + 2  # +2: a stalled machine
        with pytest.raises(Throttled):  # the guesser learns nothing, not even from a good token
            guesser.call(MsgType.LOCATE, {"token": token})
    with cluster.link() as friend:
        start = time.monotonic()
        assert friend.call(MsgType.LOCATE, {"token": token})["name"] == "shared.txt"
        assert time.monotonic() - start < 1  # not slowed


# -- what is on disk ------------------------------------------------------------------------------


def test_data_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the daemons inherit it: everything they create would be world-writable
    try:
        c = Cluster(tmp_path / "cluster", servers=2).start()
    finally:
        os.umask(old)
    try:
        with new_user(c, "private") as client:
            src = tmp_path / "secret.bin"
            src.write_bytes(os.urandom(3 * 64 * 1024))
            client.upload(src)
        journal = c.root / "proxy" / "journal.jsonl"
        assert oct(journal.stat().st_mode & 0o777) == "0o600"  # as the running proxy made it
        c.kill_proxy(signal.SIGTERM)  # a clean stop writes catalog.json (and a fresh journal)
        folders = [c.root / "proxy", *(c.root / f"server{i}" for i in (1, 2))]
        for server in folders[1:]:
            folders += [server / "ServerFiles", server / "ServerFiles" / "tmp"]
            folders += [p for p in (server / "ServerFiles").glob("??") if p.is_dir()]
        files = [c.root / "proxy" / "journal.jsonl", c.root / "proxy" / "catalog.json", *c.chunk_files()]
        assert len(c.chunk_files()) == 2 * 3
        assert {str(p): oct(p.stat().st_mode & 0o777) for p in folders} == {str(p): "0o700" for p in folders}
        assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): "0o600" for p in files}
    finally:
        c.stop()
