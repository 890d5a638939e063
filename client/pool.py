"""Connections to storage servers, one per (thread, server), reused across chunks."""

from __future__ import annotations

import threading
from typing import Any

from common.config import source_address
from common.errors import ConnectionLost
from common.transport import Connection

TIMEOUT = 15.0  # a storage server silent this long counts as failed: the upload re-places


class ConnectionPool:
    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()
        self._aborted = False

    def get(self, server: dict[str, Any]) -> Connection:
        conns: dict[tuple[str, int], Connection] = self._local.__dict__.setdefault("conns", {})
        key = (server["host"], server["port"])
        conn = conns.get(key)
        if conn is None or conn.is_dropped():
            if self._aborted:
                raise ConnectionLost("the transfer was cancelled")
            conn = Connection.connect(
                *key,
                timeout=self.timeout,
                what=f"storage server {server.get('id', '?')}",
                source_address=source_address(),
            )
            conns[key] = conn
            with self._lock:
                self._all.append(conn)
                aborted = self._aborted
            if aborted:  # abort() ran while this one was connecting
                conn.abort()
                raise ConnectionLost("the transfer was cancelled")
        return conn

    def abort(self) -> None:
        """Break every connection at once (from any thread), so transfers in flight stop now, and
        refuse new ones: a download would otherwise try a chunk's next copy on a fresh connection."""
        with self._lock:
            self._aborted = True
            conns = list(self._all)
        for conn in conns:
            conn.abort()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
