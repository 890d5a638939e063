"""Sessions: who is logged in, and for how long.

Theory of operation
-------------------
LOGIN creates a session; the catalog keeps the SHA-256 of its token with its
user, when it was created and (``used``) when it was last used, as far as
the journal knows.  A session ends with LOGOUT, after ``idle`` seconds
without a request, or ``max_age`` seconds after LOGIN, whichever comes
first.  The door (ProxyService.authenticate) asks :meth:`Sessions.user_of`
on every request, so an expired session is refused exactly like a
logged-out one, with ``auth``.

Last use is kept in memory, exactly, for every request.  It is journaled
(one fsync) only when the journaled value is ``touch_every`` seconds old (a
tenth of the idle timeout, at most an hour), so an active session costs at
most one fsync an hour, not one per request.  After a proxy restart, idle
time counts from the last journaled use: a session may then end up to
``touch_every`` sooner than it would have, never later.

Expired sessions are removed by :meth:`Sessions.sweep_once`, at most
``SWEEP_BATCH`` per round in one journal entry; :class:`SessionSweeper`
runs it on a thread.  Until then the door refuses them anyway.  A user has
at most ``MAX_PER_USER`` sessions: a login beyond that ends the user's least
recently used one.  So the catalog holds no entry per login forever, and the
number of sessions is bounded by the number of users.

Times are Unix times (they must survive a restart): a clock set back makes
sessions last longer by as much, a clock set forward ends them sooner.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from common.errors import FileClusterError
from proxy.auth import Clock, new_token, token_hash
from proxy.catalog import Catalog

log = logging.getLogger(__name__)

DEFAULT_IDLE = 7 * 24 * 3600.0  # a week without a request
DEFAULT_MAX_AGE = 30 * 24 * 3600.0  # a month after LOGIN, however busy
MAX_PER_USER = 100
SWEEP_BATCH = 1000
MAX_TOUCH_EVERY = 3600.0
MAX_SWEEP_EVERY = 600.0
MIN_SWEEP_EVERY = 0.25


@dataclass(frozen=True)
class SessionPolicy:
    idle: float = DEFAULT_IDLE
    max_age: float = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        if not (self.idle > 0 and self.max_age > 0):
            raise ValueError("session lifetimes must be positive")

    @property
    def touch_every(self) -> float:
        """How stale the journaled last use may get before a request journals a fresh one."""
        return min(self.idle / 10, MAX_TOUCH_EVERY)

    @property
    def sweep_every(self) -> float:
        """Seconds between sweeps: a quarter of the shorter lifetime, within bounds."""
        return max(MIN_SWEEP_EVERY, min(min(self.idle, self.max_age) / 4, MAX_SWEEP_EVERY))

    def expired(self, created: float, used: float, now: float) -> bool:
        return now - created >= self.max_age or now - used >= self.idle


class Sessions:
    def __init__(self, catalog: Catalog, policy: SessionPolicy, clock: Clock = time.time) -> None:
        self.catalog = catalog
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # token hash -> last use seen (newer than the journal's)

    def _last_use(self, token_hash: str, record: dict[str, Any]) -> float:
        journaled = float(record.get("used", record["created"]))
        with self._lock:
            return max(journaled, self._used.get(token_hash, journaled))

    def _forget(self, token_hashes: list[str]) -> None:
        with self._lock:
            for h in token_hashes:
                self._used.pop(h, None)

    def start(self, user: str) -> str:
        """A new session for ``user`` (who just proved a password): its token."""
        token = new_token()
        with self.catalog.lock:
            mine = self.catalog.sessions_of(user)
            if len(mine) >= MAX_PER_USER:
                oldest = min(mine, key=lambda h: self._last_use(h, mine[h]))
                self.catalog.drop_session(oldest)
                self._forget([oldest])
                log.info("%s has %d sessions: ended the least recently used", user, MAX_PER_USER)
            self.catalog.add_session(token_hash(token), user, self._clock())
        return token

    def user_of(self, token: str) -> str | None:
        """The user of a live session (and note this use), or None if unknown, ended or expired."""
        hashed = token_hash(token)
        record = self.catalog.session(hashed)
        if record is None:
            return None
        now = self._clock()
        if self.policy.expired(record["created"], self._last_use(hashed, record), now):
            return None
        with self._lock:
            self._used[hashed] = max(now, self._used.get(hashed, now))
        if now - float(record.get("used", record["created"])) >= self.policy.touch_every:
            self._journal_use(hashed, now)
        return str(record["user"])

    def _journal_use(self, token_hash: str, now: float) -> None:
        try:
            self.catalog.touch_session(token_hash, now, every=self.policy.touch_every)
        except FileClusterError as exc:  # the use is known in memory; the request goes on
            log.warning("could not journal a session's last use (%s)", exc)

    def end(self, token: str) -> None:
        hashed = token_hash(token)
        self.catalog.drop_session(hashed)
        self._forget([hashed])

    def sweep_once(self) -> int:
        """Remove expired sessions from the catalog (at most SWEEP_BATCH); how many went."""
        now = self._clock()
        sessions = self.catalog.sessions()
        doomed = [
            h
            for h, record in sessions
            if self.policy.expired(record["created"], self._last_use(h, record), now)
        ][:SWEEP_BATCH]
        self.catalog.expire_sessions(doomed)
        self._forget(doomed)
        with self._lock:  # a use noted while its session was being ended
            for h in [h for h in self._used if self.catalog.session(h) is None]:
                del self._used[h]
        if doomed:
            log.info("%d expired session(s) removed", len(doomed))
        return len(doomed)


class SessionSweeper:
    """Runs :meth:`Sessions.sweep_once` every ``interval`` seconds on a daemon thread."""

    def __init__(self, sessions: Sessions, interval: float) -> None:
        self.sessions = sessions
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run_forever, name="session-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self) -> int:
        return self.sessions.sweep_once()

    def run_forever(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                while self.run_once() >= SWEEP_BATCH and not self._stop.is_set():
                    pass  # a backlog: keep going, one journal entry per batch
            except Exception:
                log.exception("session sweep failed; will retry")
