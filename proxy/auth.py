"""Passwords, tokens, and the throttles that slow down guessing them.

Theory of operation
-------------------
Only salted scrypt hashes of passwords and SHA-256 hashes of session tokens
are stored.  A login costs one scrypt check whether or not the user exists:
an unknown user's password is checked against a dummy hash made once at
start (:class:`PasswordCheck`), so the time of a refusal says nothing about
which names are taken.

Guessing is slowed per client *address* (an IPv4 address, or an IPv6 /64,
:func:`common.admission.client_key`), never per user name alone, so an attacker's guesses
cannot lock the real owner out from another address:

- :class:`LoginThrottle` counts failed logins per (address, user), which
  lets a few typos through and then slows one guesser on one account, and
  per address across every user, which catches *spraying* (a couple of
  passwords tried on many accounts).
- :class:`LinkThrottle` counts LOCATE lookups of unknown share tokens per
  address.

Both are :class:`Backoff` tables: after ``free`` failures each further
attempt must wait twice as long as the last, up to ``MAX_WAIT``.  An
attempt counts as failed from the moment it starts (so parallel guesses
cannot slip past the limit together) and is refunded if it succeeds.  A
refused attempt counts nothing.  A key quiet for ``FORGET_AFTER`` seconds
is forgotten, and each table keeps at most ``capacity`` keys (the quietest
go first), so memory stays bounded whatever clients send.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import Throttled

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# each scrypt check takes 16 MiB and a core for ~50 ms: at most this many run at once
_SCRYPT_SLOTS = threading.BoundedSemaphore(2)

MAX_WAIT = 60.0  # seconds: the longest any throttle makes a client wait
FORGET_AFTER = 900.0  # seconds without a failure after which a throttle forgets a key

Clock = Callable[[], float]


def hash_password(password: str, salt: bytes | None = None) -> tuple[str, str]:
    """(salt hex, hash hex) for ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    with _SCRYPT_SLOTS:
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
        )
    return salt.hex(), digest.hex()


def verify_password(password: str, salt_hex: str, hash_hex: str) -> bool:
    """Does ``password`` match the stored salted scrypt hash?"""
    _, candidate = hash_password(password, bytes.fromhex(salt_hex))
    return hmac.compare_digest(candidate, hash_hex)


class PasswordCheck:
    """Checks a login's password in the same time whether or not its user exists."""

    def __init__(self) -> None:
        # a hash of a random password nobody knows, made once: unknown users are checked against it
        self._dummy_salt, self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    def matches(self, password: str, record: Mapping[str, Any] | None) -> bool:
        """Does ``password`` open the user ``record`` (None: no such user, always False)?"""
        if record is None:
            verify_password(password, self._dummy_salt, self._dummy_hash)  # the same work, wasted
            return False
        return verify_password(password, record["salt"], record["hash"])


@dataclass(frozen=True)
class Attempt:
    """One counted attempt: when, and the key's last failure before it (0.0: none)."""

    at: float
    before: float


class Backoff:
    """Failures per key and the wait they impose; not thread-safe (its owner holds a lock).

    After ``free`` failures the next attempt must wait 1 s after the last one, then 2 s, 4 s...,
    up to ``max_wait``.  Entries are kept in order of their last failure, so forgetting quiet keys
    and evicting the quietest when over ``capacity`` both take from the front."""

    def __init__(
        self, free: int, *, capacity: int, max_wait: float = MAX_WAIT, forget_after: float = FORGET_AFTER
    ) -> None:
        assert forget_after > max_wait, "a key must not be forgotten while its wait is running"
        self.free = free
        self.capacity = capacity
        self.max_wait = max_wait
        self.forget_after = forget_after
        self._entries: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()  # key -> (count, last)

    def __len__(self) -> int:
        return len(self._entries)

    def _count(self, key: Hashable, now: float) -> tuple[int, float]:
        count, last = self._entries.get(key, (0, 0.0))
        return (0, 0.0) if now - last >= self.forget_after else (count, last)

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds ``key`` must still wait before its next attempt (0: it may go ahead)."""
        count, last = self._count(key, now)
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.max_wait, 2.0 ** (count - self.free)) - now)

    def fail(self, key: Hashable, now: float) -> Attempt:
        """Count a failure at ``now``; what :meth:`refund` needs to take exactly this one back."""
        count, last = self._count(key, now)
        self._entries[key] = (count + 1, now)
        self._entries.move_to_end(key)
        self._prune(now)
        return Attempt(now, last)

    def refund(self, key: Hashable, attempt: Attempt | None = None) -> None:
        """Take back one failure (an attempt that succeeded after all).  Given the ``attempt`` that
        :meth:`fail` counted, and no failure since, the wait is again what it was before that
        attempt: a success never restarts the wait (nor would a run of them keep it going)."""
        entry = self._entries.get(key)
        if entry is None:
            return
        count, last = entry
        if count <= 1:
            del self._entries[key]
            return
        if attempt is not None and last == attempt.at:  # no failure since: as before it
            last = attempt.before
        self._entries[key] = (count - 1, last)

    def clear(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        while self._entries:
            _, (_, last) = next(iter(self._entries.items()))
            if now - last < self.forget_after and len(self._entries) <= self.capacity:
                return
            self._entries.popitem(last=False)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


class LoginThrottle:
    """Failed logins per (address, user) and per address; see the module's theory of operation."""

    FREE = 5  # failures of one user's password from one address before waits begin
    ADDRESS_FREE = 20  # failures from one address, whatever the users, before waits begin
    CAPACITY = 50_000  # keys per table (~200 bytes each)

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pairs = Backoff(self.FREE, capacity=self.CAPACITY)
        self._addresses = Backoff(self.ADDRESS_FREE, capacity=self.CAPACITY)

    def attempt(self, address: str, user: str) -> Attempt:
        """Start a login attempt, counted as failed until :meth:`succeeded` (given what this
        returns); raise Throttled (counting nothing) if this address, or this address for this
        user, must wait."""
        with self._lock:
            now = self._clock()
            pair_wait = self._pairs.wait((address, user), now)
            if pair_wait > 0:
                raise Throttled(
                    f"too many failed logins for {user!r} from your address; "
                    f"try again in {_seconds(pair_wait)} s"
                )
            address_wait = self._addresses.wait(address, now)
            if address_wait > 0:
                raise Throttled(
                    f"too many failed logins from your address; try again in {_seconds(address_wait)} s"
                )
            self._pairs.fail((address, user), now)
            return self._addresses.fail(address, now)

    def succeeded(self, address: str, user: str, attempt: Attempt | None = None) -> None:
        """The ``attempt`` was right: this user's count from this address starts again, and the
        address gets its one failure back (not all of them, or one account of one's own would
        reset the count between guesses at others)."""
        with self._lock:
            self._pairs.clear((address, user))
            self._addresses.refund(address, attempt)

    def tracked(self) -> int:
        """How many keys the throttle holds (tests check that memory stays bounded)."""
        with self._lock:
            return len(self._pairs) + len(self._addresses)


class LinkThrottle:
    """LOCATE lookups of unknown share tokens per address; a found token is refunded.

    With another ``free`` and ``what``, any per-address budget of attempts (REPORT_BAD uses one,
    refunding nothing)."""

    FREE = 20
    CAPACITY = 50_000

    def __init__(
        self, clock: Clock = time.monotonic, *, free: int = FREE, what: str = "unknown links tried"
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._what = what
        self._misses = Backoff(free, capacity=self.CAPACITY)

    def attempt(self, address: str) -> Attempt:
        """Start a lookup, counted as a miss until :meth:`found` (given what this returns); raise
        Throttled if it must wait."""
        with self._lock:
            now = self._clock()
            wait = self._misses.wait(address, now)
            if wait > 0:
                raise Throttled(f"too many {self._what} from your address; try again in {_seconds(wait)} s")
            return self._misses.fail(address, now)

    def found(self, address: str, attempt: Attempt | None = None) -> None:
        """The lookup found what it looked for: its miss is taken back, and the wait with it."""
        with self._lock:
            self._misses.refund(address, attempt)


def new_token() -> str:
    """A random bearer token (256 bits), for sessions, share links and uploads.  Never one that
    starts with "-": a bare token is typed on command lines (`filecluster unshare TOKEN`), where it
    would be taken for an option (a redraw costs 0.02 of a bit)."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
