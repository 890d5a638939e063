"""Connections to storage servers, one per (thread, server), reused across chunks; the deadline
of a whole transfer; and what a transfer needs of its proxy."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from common.config import source_address, transfer_deadline
from common.errors import ConnectionLost, Unavailable
from common.messages import MsgType
from common.transport import Connection

TIMEOUT = 15.0  # a storage server silent this long counts as failed: the transfer routes around it
# downloads wait less: a read has another copy to go to, and a healthy server answers in milliseconds
READ_TIMEOUT = 5.0


class ProxyCaller(Protocol):
    """What a transfer needs of its proxy: requests and replies (client.proxy_link.ProxyLink)."""

    def call(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]: ...


class SharedProxy:
    """A proxy caller several threads may use: one request at a time over its one connection
    (the threads of a transfer renew tickets, re-place chunks, locate and release)."""

    def __init__(self, proxy: ProxyCaller) -> None:
        self._proxy = proxy
        self._lock = threading.Lock()

    def call(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        with self._lock:
            return self._proxy.call(msg_type, header, session=session)


@dataclass(frozen=True)
class Deadline:
    """When a whole transfer must be over (common.config.transfer_deadline), on the monotonic clock."""

    what: str  # "the download of report.pdf"
    outcome: str  # "nothing was saved"
    seconds: float
    at: float

    @classmethod
    def start(cls, what: str, outcome: str, size: int) -> Deadline:
        seconds = transfer_deadline(size)
        return cls(what, outcome, seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def missed(self) -> Unavailable:
        return Unavailable(
            f"{self.what} did not finish within its deadline of {self.seconds:g} s; {self.outcome} "
            "(FILECLUSTER_TRANSFER_DEADLINE sets the seconds allowed)"
        )


class ConnectionPool:
    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = TIMEOUT if timeout is None else timeout
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

    def this_thread(self) -> _ThreadConnections:
        """The calling thread's connections, to break from another thread (a deadline's timer)."""
        conns: dict[tuple[str, int], Connection] = self._local.__dict__.setdefault("conns", {})
        return _ThreadConnections(conns)

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


@dataclass(frozen=True)
class _ThreadConnections:
    conns: dict[tuple[str, int], Connection]

    def abort(self) -> None:
        """Break them (a recv or send blocked on one returns at once); the next request reconnects."""
        for conn in list(self.conns.values()):
            conn.abort()
