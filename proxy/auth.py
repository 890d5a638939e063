"""Passwords and session tokens.  Only salted scrypt hashes and token hashes are stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
# each scrypt check takes 16 MiB and a core for ~50 ms: at most this many run at once
_SCRYPT_SLOTS = threading.BoundedSemaphore(2)


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


class LoginThrottle:
    """Per-user backoff after failed logins: after FREE failures, each further attempt must wait
    twice as long as the last (up to MAX_WAIT seconds).  A success clears the count.  It slows
    password guessing without letting anyone lock an account out for long."""

    FREE = 5
    MAX_WAIT = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # user -> (failures, not before)

    def wait_needed(self, user: str) -> float:
        with self._lock:
            _, not_before = self._failures.get(user, (0, 0.0))
        return max(0.0, not_before - time.monotonic())

    def attempt(self, user: str) -> float:
        """Start a login attempt: 0 if it may go ahead (it counts as failed until
        :meth:`succeeded`), else how many seconds to wait.  Counting before the password is
        checked means parallel guesses cannot slip past the limit together."""
        with self._lock:
            count, not_before = self._failures.get(user, (0, 0.0))
            now = time.monotonic()
            if not_before > now:
                return not_before - now
            count += 1
            wait = 0.0 if count < self.FREE else min(self.MAX_WAIT, 2.0 ** (count - self.FREE))
            self._failures[user] = (count, now + wait)
            if len(self._failures) > 100_000:  # bounded memory: forget only waits that are over
                self._failures = {u: v for u, v in self._failures.items() if v[1] > now}
            return 0.0

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(user, None)


def new_token() -> str:
    """A random bearer token (256 bits), for sessions, share links and uploads."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
