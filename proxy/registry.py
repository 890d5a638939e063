"""The proxy's view of the storage servers: who registered, where, and who is alive."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from proxy.placement import ServerRef


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

    @property
    def ref(self) -> ServerRef:
        return ServerRef(self.id, self.host, self.port)


class Registry:
    def __init__(self, dead_after: float, known: dict[int, tuple[str, int]] | None = None) -> None:
        """``known``: servers from an earlier run, listed as down until they register again."""
        self.dead_after = dead_after
        self._servers: dict[int, ServerState] = {
            i: ServerState(i, host, port, 0, 0, 0, last_seen=float("-inf"), registered=False)
            for i, (host, port) in (known or {}).items()
        }
        self._lock = threading.Lock()

    def register(self, server_id: int, host: str, port: int, capacity: int, used: int, chunks: int) -> None:
        with self._lock:
            self._servers[server_id] = ServerState(
                server_id, host, port, capacity, used, chunks, time.monotonic()
            )

    def heartbeat(self, server_id: int, capacity: int, used: int, chunks: int) -> bool:
        """False if the server is unknown (it must register again)."""
        with self._lock:
            state = self._servers.get(server_id)
            if state is None or not state.registered:
                return False
            state.capacity, state.used, state.chunks = capacity, used, chunks
            state.last_seen = time.monotonic()
            state.down = False
            return True

    def mark_down(self, server_id: int) -> None:
        with self._lock:
            if server_id in self._servers:
                self._servers[server_id].down = True

    def is_up(self, state: ServerState) -> bool:
        return not state.down and time.monotonic() - state.last_seen <= self.dead_after

    def get(self, server_id: int) -> ServerState | None:
        with self._lock:
            return self._servers.get(server_id)

    def all(self) -> list[ServerState]:
        with self._lock:
            return sorted(self._servers.values(), key=lambda s: s.id)

    def live(self, need_bytes: int = 0) -> list[ServerRef]:
        """Servers that are up and have room for ``need_bytes`` more."""
        return [s.ref for s in self.all() if self.is_up(s) and s.capacity - s.used >= need_bytes]

    def live_ids(self) -> set[int]:
        return {s.id for s in self.all() if self.is_up(s)}
