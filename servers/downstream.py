"""Connections from this storage server to the next server of a PUT chain, kept for reuse.

A PUT_CHUNK with a chain is forwarded while it is received (servers.storage_server).  Opening a
new TCP connection per chunk costs the connect and, on the replica, a new handler thread and an
admission check: for small chunks that is a large part of the work.  This pool keeps a few idle
connections per replica, as the client's pool does towards the head of a chain.

Rules that keep a reused connection as trustworthy as a new one:

- A connection goes back to the pool only after a complete exchange: the PUT's payload sent in
  full and the reply (OK or ERROR) read to its end.  Anything else closes it.
- One that has idled longer than MAX_IDLE (well under the replica's own idle timeout of
  common.limits.IDLE_TIMEOUT, so the replica never closes one under us) or that the replica has
  closed (``is_dropped``) is closed, never used.
- At most MAX_IDLE_PER_TARGET idle connections per replica address: what the pool holds of a
  replica's per-address connection cap is bounded and small.

Every request on a pooled connection carries its own ticket, checked by the replica as on a new
connection; reuse grants nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Final

from common.transport import Connection

MAX_IDLE: Final = 30.0  # seconds an idle connection may wait in the pool
MAX_IDLE_PER_TARGET: Final = 4

Target = tuple[str, int]


class DownstreamPool:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._idle: dict[Target, list[tuple[float, Connection]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, host: str, port: int, what: str) -> Connection:
        """An idle connection to ``host:port`` that is still good, else a new one (Unavailable if
        the replica cannot be reached)."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get((host, port))
                entry = idle.pop() if idle else None
            if entry is None:
                break
            since, conn = entry
            if now - since <= MAX_IDLE and not conn.is_dropped():
                return conn  # its socket's timeout is still the one it was made with
            conn.close()
        return Connection.connect(host, port, timeout=self.timeout, what=what)

    def put_back(self, host: str, port: int, conn: Connection) -> None:
        """Return a connection whose last exchange ended cleanly; closed if the pool is full."""
        if conn.closed or conn.in_payload:
            conn.close()
            return
        with self._lock:
            idle = self._idle.setdefault((host, port), [])
            if not self._closed and len(idle) < MAX_IDLE_PER_TARGET:
                idle.append((time.monotonic(), conn))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = [conn for idle in self._idle.values() for _, conn in idle]
            self._idle.clear()
        for conn in entries:
            conn.close()
