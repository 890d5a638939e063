"""A daemon's memory budget for the request headers in flight.

Theory of operation
-------------------
A frame's payload is streamed a buffer at a time, but its header is held whole and parsed whole,
so headers are where a peer can make a daemon allocate: up to the type's ``max_header`` of raw
bytes, then up to ~25 times that while ``json.loads`` builds objects (common.protocol.parse_cost).
So every header bigger than ``unmetered`` bytes is admitted twice, by a :class:`ConnectionGate`
that the connection asks as the frame arrives (common.transport):

1. from its prefix, before a byte of it is buffered: its raw size (plus the 1/8 a growing
   buffer may over-allocate) from the *receiving* budget, of which one client address may hold
   at most half, since a slow sender can keep its share for the whole head deadline;
2. once all of it is in, before it is parsed: its :func:`~common.protocol.parse_cost` from the
   *parsing* budget, held until the request has been answered (the parsed header lives as long
   as the handler runs).  The raw bytes are let go as the header is parsed.

A reservation that does not fit waits up to ``wait`` seconds for room, then the frame is refused
as busy (the connection skips it and answers ERROR ``unavailable``); a header whose parse cost is
more than the whole parsing budget can never be admitted and is a protocol error (the connection
is closed).  Two budgets, not one, so that no one waits for room while holding what another
waiter needs: a parse reservation is only ever waited for by a connection whose raw bytes are
already counted, and it is released without waiting for anything.

Headers of at most ``unmetered`` bytes (every request but UPLOAD_BEGIN, HAS_CHUNKS and
DELETE_CHUNKS) are not metered: the connection caps bound them (512 connections × 64 KiB).
"""

from __future__ import annotations

import threading
import time

from common.errors import RemoteProtocolError
from common.limits import MIB
from common.protocol import FrameHead


class Budget:
    """Bytes shared by threads; one owner (a client address) may hold at most ``per_owner``."""

    def __init__(self, total: int, per_owner: int | None = None) -> None:
        self.total = total
        self.per_owner = total if per_owner is None else min(per_owner, total)
        self._used = 0
        self._by_owner: dict[str, int] = {}
        self._room = threading.Condition()

    @property
    def used(self) -> int:
        with self._room:
            return self._used

    def reserve(self, n: int, owner: str, timeout: float) -> bool:
        """Take ``n`` bytes, waiting up to ``timeout`` seconds for room; False if there was none."""
        if n > self.per_owner:
            return False
        deadline = time.monotonic() + timeout
        with self._room:
            while self._used + n > self.total or self._by_owner.get(owner, 0) + n > self.per_owner:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            self._used += n
            self._by_owner[owner] = self._by_owner.get(owner, 0) + n
            return True

    def release(self, n: int, owner: str) -> None:
        if not n:
            return
        with self._room:
            self._used -= n
            held = self._by_owner[owner] - n
            if held:
                self._by_owner[owner] = held
            else:
                del self._by_owner[owner]
            self._room.notify_all()


class HeaderBudget:
    """The two budgets of one daemon; hands each connection its :class:`ConnectionGate`."""

    def __init__(self, *, receive: int, parse: int, wait: float, unmetered: int) -> None:
        self.receiving = Budget(receive, per_owner=receive // 2)
        self.parsing = Budget(parse)
        self.wait = wait
        self.unmetered = unmetered

    def gate(self, owner: str) -> ConnectionGate:
        return ConnectionGate(self, owner)

    @staticmethod
    def raw_cost(header_len: int) -> int:
        """What a header's raw bytes take while they arrive: a buffer grows by up to 1/8 more."""
        return header_len + header_len // 8

    def admits(self, header_len: int) -> bool:
        """True if a header this size can ever be received (a check of the configuration)."""
        return header_len <= self.unmetered or self.raw_cost(header_len) <= self.receiving.per_owner


class ConnectionGate:
    """One connection's reservations (the ``HeaderGate`` of common.transport).  Not thread-safe:
    only the connection's own thread uses it."""

    def __init__(self, budget: HeaderBudget, owner: str) -> None:
        self.budget = budget
        self.owner = owner
        self._receiving = 0
        self._parsing = 0

    def admit_header(self, head: FrameHead) -> bool:
        """Before the header is buffered: room for its raw bytes, or False (busy)."""
        if head.header_len <= self.budget.unmetered:
            return True
        need = self.budget.raw_cost(head.header_len)
        if not self.budget.receiving.reserve(need, self.owner, self.budget.wait):
            return False
        self._receiving += need
        return True

    def admit_parse(self, head: FrameHead, cost: int) -> bool:
        """Before the header is parsed: room for ``cost``, or False (busy, and nothing is held)."""
        if head.header_len <= self.budget.unmetered:
            return True
        if cost > self.budget.parsing.total:
            self.release()
            raise RemoteProtocolError(
                f"{head.type.name} header would take ~{cost // MIB} MiB to parse; "
                f"this server parses at most {self.budget.parsing.total // MIB} MiB of headers at once"
            )
        if not self.budget.parsing.reserve(cost, self.owner, self.budget.wait):
            self.release()
            return False
        self._parsing += cost
        return True

    def header_parsed(self) -> None:
        """The raw bytes are gone (the parsed header is still counted until :meth:`release`)."""
        self.budget.receiving.release(self._receiving, self.owner)
        self._receiving = 0

    def release(self) -> None:
        """Let go of everything: the request has been answered, refused, or the connection closed."""
        self.header_parsed()
        self.budget.parsing.release(self._parsing, self.owner)
        self._parsing = 0
