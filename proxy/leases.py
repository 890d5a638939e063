"""Read leases: a download in progress keeps its chunks until it ends.

LOCATE grants a lease over the chunks of the file it describes, as they are
at that moment.  While the lease lives, the collector deletes none of those
chunks and repair removes none of their copies, even if the file is deleted
or replaced meanwhile; LOCATE ``{lease}`` renews it (with fresh tickets for
the same chunks), RELEASE ends it, and it expires ``ttl`` seconds after it
was granted or last renewed (a client that vanished holds nothing for long).

However often it is renewed, a lease ends ``ttl`` seconds after the time its
download may take (the default of common.config.transfer_deadline for the
file's size: 2 min + 1 s per MiB) has passed since it was granted: renewals
cannot keep a deleted file's chunks, nor let a link's one download be fetched
again and again, for ever.  A download that needs longer locates its file
again (by name; by a link, at the cost of another of its downloads).

Memory is bounded: a lease holds a reference to the file entry's own chunk
list (no copy); one holder (a user, or the address of a link's reader) has at
most ``per_holder`` leases, and at most ``limit`` live at once.  Past either,
the oldest goes (its download may then lose a chunk to a concurrent delete,
which only happens under a flood of LOCATE requests, and mostly to the one
flooding).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from common.config import TRANSFER_DEADLINE_BASE, TRANSFER_MIN_RATE
from common.errors import NotFound
from proxy.auth import new_token

DEFAULT_LIMIT = 20_000
PER_HOLDER = 256


@dataclass
class Lease:
    id: str
    owner: str  # whose file it is
    name: str
    info: dict[str, Any]  # the file's description at LOCATE time (name, owner, size, sha1, uploaded)
    chunks: list[list[Any]]  # [[chunk id, size], ...], the file entry's list (shared, never mutated)
    who: str  # whom the tickets are for (user:NAME or link)
    expires: float
    holder: str = ""  # whose budget it counts against (a user, or a link reader's address)
    token: str | None = None  # the link it was granted through (its renewals check it still serves)
    ends: float = float("inf")  # however often it is renewed, it ends then (time.monotonic)


class Leases:
    def __init__(self, ttl: float, limit: int = DEFAULT_LIMIT, per_holder: int = PER_HOLDER) -> None:
        self.ttl = ttl
        self.limit = limit
        self.per_holder = per_holder
        self._leases: OrderedDict[str, Lease] = OrderedDict()  # oldest renewal first
        self._held: dict[str, OrderedDict[str, None]] = {}  # holder -> its leases, oldest first
        self._lock = threading.Lock()

    def grant(
        self,
        owner: str,
        name: str,
        info: dict[str, Any],
        chunks: list[list[Any]],
        who: str,
        holder: str = "",
        token: str | None = None,
    ) -> Lease:
        now = time.monotonic()
        ends = now + self.ttl + self.longest(int(info.get("size", 0)))
        lease = Lease(new_token(), owner, name, info, chunks, who, now + self.ttl, holder, token, ends)
        with self._lock:
            self._purge()
            mine = self._held.setdefault(holder, OrderedDict())
            while len(mine) >= self.per_holder:
                self._drop(next(iter(mine)))
            while len(self._leases) >= self.limit:
                self._drop(next(iter(self._leases)))
            self._leases[lease.id] = lease
            self._held.setdefault(holder, OrderedDict())[lease.id] = None
        return lease

    @staticmethod
    def longest(size: int) -> float:
        """Seconds a download of ``size`` bytes may take (a client's own deadline, by default)."""
        return TRANSFER_DEADLINE_BASE + size / TRANSFER_MIN_RATE

    def _drop(self, lease_id: str) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            mine = self._held.get(lease.holder)
            if mine is not None:
                mine.pop(lease_id, None)
                if not mine:
                    del self._held[lease.holder]

    def renew(self, lease_id: str) -> Lease:
        with self._lock:
            self._purge()
            lease = self._leases.get(lease_id)
            now = time.monotonic()
            if lease is not None and now >= lease.ends:
                self._drop(lease_id)
                lease = None
            if lease is None:
                raise NotFound("the download's lease ended (it expired or was released); download again")
            lease.expires = min(now + self.ttl, lease.ends)
            self._leases.move_to_end(lease_id)
            return lease

    def release(self, lease_id: str) -> None:
        with self._lock:
            self._drop(lease_id)

    def leased(self) -> set[str]:
        """Every chunk id some live lease holds."""
        with self._lock:
            self._purge()
            now = time.monotonic()  # a renewal capped at ``ends`` may expire before older leases
            return {c for lease in self._leases.values() if lease.expires > now for c, _ in lease.chunks}

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def _purge(self) -> None:
        """Drop expired leases: they expire in the order they were granted or renewed."""
        now = time.monotonic()
        while self._leases and next(iter(self._leases.values())).expires <= now:
            self._drop(next(iter(self._leases)))
