"""The proxy's view of the storage servers: who registered, where, who is alive, who may take chunks.

A server is *up* while its heartbeats arrive (at most ``dead_after`` seconds
apart) and nobody has found it unresponsive since (``mark_down``).  A server
that is not up is *down*; once it has been silent for longer than ``grace``
it is *dead*: repair stops waiting for it and copies its chunks elsewhere
(proxy.repair).  A server being decommissioned is *draining* (the flag is
journaled by the catalog and mirrored here): it serves reads but takes no new
chunks.  *Placeable* servers are up, not draining, and have room: their
reported free disk space minus the chunk stays above ``low_water``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from proxy.placement import ServerRef

DEFAULT_GRACE = 300.0
DEFAULT_LOW_WATER = 256 * 1024 * 1024


@dataclass
class ServerState:
    id: int
    host: str
    port: int
    capacity: int
    used: int
    chunks: int
    last_seen: float
    down: bool = False
    registered: bool = True  # False: known from an earlier run, not yet registered in this one
    free: int | None = None  # disk bytes the server can still take (None: it did not say)
    disk: str | None = None  # its filesystem's opaque id: servers that share one share its free space
    quarantined: int = 0
    scrub: dict[str, Any] | None = None
    draining: bool = False

    @property
    def ref(self) -> ServerRef:
        return ServerRef(self.id, self.host, self.port)


class Registry:
    def __init__(
        self,
        dead_after: float,
        known: dict[int, tuple[str, int]] | None = None,
        *,
        grace: float = DEFAULT_GRACE,
        low_water: int = DEFAULT_LOW_WATER,
        draining: set[int] | None = None,
        rejoin: float = 0.0,
    ) -> None:
        """``known``: servers from an earlier run, listed as down until they register again (their
        grace period runs from now); ``draining``: the journaled decommissioning flags; ``rejoin``:
        how long after this start the known servers are waited for (:meth:`wait_for_rejoin`): their
        heartbeat interval and a margin, the time a running server takes to register again."""
        self.dead_after = dead_after
        self.grace = grace
        self.low_water = low_water
        now = time.monotonic()
        self._servers: dict[int, ServerState] = {
            i: ServerState(i, host, port, 0, 0, 0, last_seen=now, registered=False)
            for i, (host, port) in (known or {}).items()
        }
        self._draining = set(draining or ())
        for state in self._servers.values():
            state.draining = state.id in self._draining
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        self._rejoin_by = now + rejoin

    def wait_for_rejoin(self) -> None:
        """Return once every server known from the earlier run has registered again, or ``rejoin``
        seconds after the start: what a listing or a status waits for just after the proxy
        restarted, so that it shows the files and servers as they are, not "down" because their
        next heartbeat has not come yet.  Later, or once all are back, it returns at once."""
        with self._joined:
            while time.monotonic() < self._rejoin_by and any(
                not state.registered for state in self._servers.values()
            ):
                self._joined.wait(max(0.0, self._rejoin_by - time.monotonic()))

    def register(
        self,
        server_id: int,
        host: str,
        port: int,
        capacity: int,
        used: int,
        chunks: int,
        free: int | None = None,
        disk: str | None = None,
    ) -> None:
        with self._lock:
            self._servers[server_id] = ServerState(
                server_id,
                host,
                port,
                capacity,
                used,
                chunks,
                time.monotonic(),
                free=free,
                disk=disk,
                draining=server_id in self._draining,
            )
            self._joined.notify_all()

    def heartbeat(
        self,
        server_id: int,
        capacity: int,
        used: int,
        chunks: int,
        *,
        free: int | None = None,
        quarantined: int | None = None,
        scrub: dict[str, Any] | None = None,
    ) -> bool:
        """False if the server is unknown (it must register again)."""
        with self._lock:
            state = self._servers.get(server_id)
            if state is None or not state.registered:
                return False
            state.capacity, state.used, state.chunks = capacity, used, chunks
            if free is not None:
                state.free = free
            if quarantined is not None:
                state.quarantined = quarantined
            if scrub is not None:
                state.scrub = scrub
            state.last_seen = time.monotonic()
            state.down = False
            return True

    def mark_down(self, server_id: int) -> None:
        with self._lock:
            if server_id in self._servers:
                self._servers[server_id].down = True

    def set_draining(self, server_id: int, draining: bool) -> None:
        with self._lock:
            (self._draining.add if draining else self._draining.discard)(server_id)
            if server_id in self._servers:
                self._servers[server_id].draining = draining

    def forget(self, server_id: int) -> None:
        with self._lock:
            self._servers.pop(server_id, None)
            self._draining.discard(server_id)

    def is_up(self, state: ServerState) -> bool:
        return state.registered and not state.down and time.monotonic() - state.last_seen <= self.dead_after

    def is_dead(self, state: ServerState) -> bool:
        """Down for longer than the grace period: its copies no longer count."""
        return not self.is_up(state) and time.monotonic() - state.last_seen > self.grace

    def state_name(self, state: ServerState) -> str:
        if self.is_up(state):
            return "draining" if state.draining else "up"
        return "dead" if self.is_dead(state) else "down"

    def get(self, server_id: int) -> ServerState | None:
        with self._lock:
            return self._servers.get(server_id)

    def all(self) -> list[ServerState]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: s.id)

    def has_room(self, state: ServerState, need_bytes: int) -> bool:
        if state.capacity - state.used < need_bytes:
            return False
        return state.free is None or state.free - need_bytes >= self.low_water

    def live(self, need_bytes: int = 0) -> list[ServerRef]:
        """Servers that may take a new chunk: up, not draining, with room for ``need_bytes`` more
        above the low-water mark."""
        return [
            s.ref for s in self.all() if self.is_up(s) and not s.draining and self.has_room(s, need_bytes)
        ]

    def live_ids(self) -> set[int]:
        """Servers that are up (draining ones too: they still serve reads)."""
        return {s.id for s in self.all() if self.is_up(s)}
