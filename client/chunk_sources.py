"""Where a download's chunks come from, and reading one copy of one.

:class:`Tickets` holds the GET tickets of a LOCATE reply and renews them; :class:`Trouble` orders a
chunk's copies (spread over the copies, servers in trouble last); :class:`Reports` collects the
copies found bad, for REPORT_BAD.  :func:`from_a_good_copy` tries a chunk's copies in turn (one
routing policy for the download and the HTTP gateway).  :func:`read_chunk_into` reads one copy
straight into a buffer and checks its SHA-256 against its id before the caller may use a byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from client.pool import ConnectionPool, ProxyCaller
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    NotFound,
    RemoteProtocolError,
    Unavailable,
)
from common.messages import MsgType
from common.transport import Connection


class Tickets:
    """The GET tickets of a LOCATE reply, renewed once they expire: by its lease
    (``LOCATE {lease}``) where the proxy gave one, else by locating the file again.  Every request
    to the proxy goes through here, one at a time (a ProxyLink is one connection)."""

    def __init__(
        self,
        info: dict[str, Any],
        relocate: Callable[[], dict[str, Any]] | None,
        proxy: ProxyCaller | None = None,
        on_release: Callable[[str], None] | None = None,
    ) -> None:
        self._info = info
        self._relocate = relocate
        self._proxy = proxy
        self._on_release = on_release  # takes the lease instead of a RELEASE now (client.batch)
        self.on_lease: Callable[[str], object] | None = None  # hears of each lease the file is under
        self._lock = threading.Lock()

    def sources(self, index: int) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]:
        """(the tickets' expiry, [(server, ticket header)]) for chunk ``index``.  A link's file
        described by a peek (no tickets yet) is located now, when a chunk must be fetched: by the
        lease an interrupted download of it kept, if that still holds, else by ``relocate``."""
        with self._lock:
            if _peeked(self._info):
                self._now(self._locate_first())
            info = self._info
        common = info.get("ticket") or {}
        servers = info["chunks"][index]["servers"]
        return int(common.get("exp", 0)), [
            (s, {"exp": common.get("exp"), "who": common.get("who"), "mac": s.get("ticket")}) for s in servers
        ]

    def claim(self) -> None:
        """Locate a link's peeked file now, though no chunk is to be fetched (an empty file's): the
        link counts the download, or says it cannot serve one (Gone)."""
        with self._lock:
            if _peeked(self._info):
                self._now(self._locate_first())

    def renew(self, seen_exp: int) -> bool:
        """Fresh tickets (once for all threads); False if there is no way to get them."""
        with self._lock:
            if int((self._info.get("ticket") or {}).get("exp", 0)) != seen_exp:
                return True  # another thread renewed them already
            fresh = self._locate_again()
            if fresh is None:
                return False
            self._now(_same_file(fresh, self._info))
        return True

    def resume_with(self, lease: str) -> None:
        """Locate a peeked file by ``lease`` (an interrupted download's), if it still holds."""
        with self._lock:
            if _peeked(self._info):
                self._info = {**self._info, "lease": lease}

    def lease(self) -> str | None:
        """The lease the tickets are under, once located."""
        with self._lock:
            return None if _peeked(self._info) else self._lease()

    def _locate_first(self) -> dict[str, Any]:
        lease = self._lease()
        if lease is not None and self._proxy is not None:  # an interrupted download's, if it holds
            with contextlib.suppress(NotFound):  # it ended: a fresh LOCATE, which the link counts
                fresh = self._proxy.call(MsgType.LOCATE, {"lease": lease})
                with contextlib.suppress(Conflict):
                    return _same_file(fresh, self._info)
                with contextlib.suppress(FileClusterError, OSError):  # another file's: let it go
                    self._proxy.call(MsgType.RELEASE, {"lease": lease})
        if self._relocate is None:
            raise Unavailable("the file cannot be located")
        return _same_file(self._relocate(), self._info)

    def _locate_again(self) -> dict[str, Any] | None:
        lease = self._lease()
        if lease is not None and self._proxy is not None:
            try:
                return self._proxy.call(MsgType.LOCATE, {"lease": lease})
            except NotFound:  # the lease ended (it expired): locate the file afresh, if we can
                if self._relocate is None:
                    raise
        return None if self._relocate is None else self._relocate()

    def _now(self, info: dict[str, Any]) -> None:
        """Go on with ``info``; ``on_lease`` hears of its lease at once if it is a new one (a link
        download keeps it with its partial, so even a kill -9 cannot make a resume count twice)."""
        before = self._lease()
        self._info = info
        lease = self._lease()
        if lease is not None and lease != before and self.on_lease is not None:
            self.on_lease(lease)

    def _lease(self) -> str | None:
        lease = self._info.get("lease")
        return lease if isinstance(lease, str) and lease else None

    def tell(self, msg_type: MsgType, header: dict[str, Any]) -> bool:
        """A request the download does not depend on (REPORT_BAD, RELEASE): False if it failed."""
        if self._proxy is None:
            return False
        with self._lock:
            try:
                self._proxy.call(msg_type, header)
            except (FileClusterError, OSError):
                return False
        return True

    def release(self) -> None:
        """End the lease, if there is one: the proxy may then free chunks the file no longer uses."""
        with self._lock:
            lease = self._lease()
        if lease is not None and self._on_release is not None:
            self._on_release(lease)
        elif lease is not None:
            self.tell(MsgType.RELEASE, {"lease": lease})


def _same_file(fresh: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    """``fresh`` (a LOCATE reply), if it describes the chunks ``known`` does; else Conflict."""
    if [c["id"] for c in fresh["chunks"]] != [c["id"] for c in known["chunks"]]:
        raise Conflict("the file changed during the download; nothing was saved, try again")
    return fresh


def _peeked(info: dict[str, Any]) -> bool:
    """Whether ``info`` is a link's peek (LOCATE ``{token, peek}``): chunks without servers (an
    empty file's: no tickets, which a located file always has)."""
    chunks = info.get("chunks") or []
    return "servers" not in chunks[0] if chunks else "ticket" not in info


class Trouble:
    """The storage servers that timed out, refused or dropped a connection during this transfer:
    tried last from then on, so a hung server costs each thread one timeout, not one per chunk.
    Bad bytes or a missing chunk say nothing of the server's other copies, so they do not count."""

    def __init__(self) -> None:
        self._bad: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def failed(self, server: dict[str, Any]) -> None:
        with self._lock:
            self._bad.add(_where(server))

    def order(self, index: int, sources: list[_Source]) -> Iterator[_Source]:
        """Chunk ``index``'s copies: spread (chunk i starts at copy i mod n, so every copy gets read
        and the load is shared), servers in trouble last, as things stand when each is picked."""
        start = index % len(sources) if sources else 0
        pending = sources[start:] + sources[:start]
        while pending:
            with self._lock:
                pick = next((s for s in pending if _where(s[0]) not in self._bad), pending[0])
            pending.remove(pick)
            yield pick


def _where(server: dict[str, Any]) -> tuple[str, int]:
    return str(server["host"]), int(server["port"])


class Reports:
    """Copies found bad (``corrupt``, ``missing``, ``short``), each with the ticket it was read
    with: told to the proxy (REPORT_BAD) once the download is over, so repair replaces them."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def add(self, chunk_id: str, server: dict[str, Any], ticket: dict[str, Any], problem: str) -> None:
        server_id = server.get("id")
        if type(server_id) is int:
            with self._lock:
                self._found.setdefault(
                    (chunk_id, server_id),
                    {"id": chunk_id, "server": server_id, "ticket": ticket, "problem": problem},
                )

    def send(self, tickets: Tickets) -> None:
        """Best effort: a proxy that cannot take them (down, too old to know REPORT_BAD) is left be."""
        with self._lock:
            found = list(self._found.values())
        for report in found:
            if not tickets.tell(MsgType.REPORT_BAD, report):
                break


_Source = tuple[dict[str, Any], dict[str, Any]]  # (server, the GET ticket for its copy)
_T = TypeVar("_T")


def from_a_good_copy(
    tickets: Tickets,
    index: int,
    chunk_id: str,
    order: Callable[[list[_Source]], Iterable[_Source]],
    read: Callable[[dict[str, Any], dict[str, Any]], _T],
    bad_copy: Callable[[dict[str, Any], dict[str, Any], str], None],
    failed: Callable[[dict[str, Any]], None] | None = None,
    stopped: threading.Event | None = None,
) -> _T:
    """What ``read(server, ticket)`` returns for the first copy of chunk ``index`` that reads
    well, the copies tried in ``order``.  A bad copy (corrupt, missing, the wrong size) goes to
    ``bad_copy(server, ticket, problem)``; an unreachable, silent or refusing server to ``failed``.
    Expired tickets are renewed once (the LOCATE lease) and every copy tried again.  Unavailable,
    naming every copy's error, if none reads well (or at once when ``stopped`` is set)."""
    errors: list[str] = []
    for attempt in range(2):
        exp, sources = tickets.sources(index)
        expired = False
        for server, ticket in order(sources):
            if stopped is not None and stopped.is_set():
                raise Unavailable("the download was stopped")
            try:
                return read(server, ticket)
            except Forbidden as exc:  # the tickets expired (a long transfer): renewed once, below
                expired = True
                errors.append(f"server {server.get('id', '?')}: {exc}")
            except (FileClusterError, OSError) as exc:
                if stopped is not None and stopped.is_set():  # broken off by us, not the copy's fault
                    raise Unavailable("the download was stopped") from None
                errors.append(f"server {server.get('id', '?')}: {exc}")
                problem = copy_problem(exc)
                if problem is not None:
                    bad_copy(server, ticket, problem)
                elif isinstance(exc, Unavailable) and failed is not None:  # timed out, refused, dropped
                    failed(server)
        if not (expired and attempt == 0 and tickets.renew(exp)):
            break
    detail = "; ".join(errors) or "no server holds it"
    raise Unavailable(f"chunk {chunk_id[:12]} cannot be read from any copy ({detail})")


class _WrongSize(RemoteProtocolError):
    """A copy whose size is not the one the catalog records."""


def copy_problem(exc: BaseException) -> str | None:
    """What REPORT_BAD calls a copy that failed with ``exc``; None if the copy may well be fine."""
    if isinstance(exc, CorruptData):
        return "corrupt"
    if isinstance(exc, NotFound):
        return "missing"
    if isinstance(exc, _WrongSize):
        return "short"
    return None


def read_chunk_into(
    pool: ConnectionPool,
    server: dict[str, Any],
    ticket: dict[str, Any],
    chunk_id: str,
    size: int,
    buf: memoryview,
    spill: Callable[[memoryview, int], None],
) -> None:
    """Read one copy of a chunk (GET_CHUNK with its ticket) straight from the socket into ``buf``.

    A chunk no bigger than ``buf`` lands whole in ``buf[:size]``.  A bigger one goes through it
    in pieces of its size, each handed to ``spill(piece, where in the chunk)`` as it arrives (valid
    only until the next).  CorruptData once all came if their SHA-256 is not the id, so the caller
    must not use a byte before this returns."""
    conn = pool.get(server)
    ask_for_chunk(conn, chunk_id, ticket)
    receive_chunk_into(conn, server, chunk_id, size, buf, spill)


def ask_for_chunk(conn: Connection, chunk_id: str, ticket: dict[str, Any]) -> None:
    """Send GET_CHUNK for one copy; its reply is read by :func:`receive_chunk_into`.  Several may
    be sent before their replies are read (a server answers a connection's requests in order)."""
    conn.send(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": ticket})


def ask_for_chunks(conn: Connection, wanted: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """:func:`ask_for_chunk` for each ``(chunk id, ticket)``, all in one write."""
    conn.send_requests(
        [(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": ticket}) for chunk_id, ticket in wanted]
    )


def receive_chunk_into(
    conn: Connection,
    server: dict[str, Any],
    chunk_id: str,
    size: int,
    buf: memoryview,
    spill: Callable[[memoryview, int], None] | None = None,
) -> None:
    """Read the reply to a GET_CHUNK into ``buf`` (as :func:`read_chunk_into` says; without
    ``spill``, ``buf`` must hold the whole chunk).  The connection stays in step after an ERROR
    reply or a corrupt copy; after a reply of the wrong chunk or size it is closed."""
    if spill is None and size > len(buf):
        raise ValueError("the buffer cannot hold the chunk")
    reply = conn.expect_reply(MsgType.GET_CHUNK)
    if reply.header["id"] != chunk_id or reply.payload_len != size:
        conn.close()
        wrong = _WrongSize if reply.header["id"] == chunk_id else RemoteProtocolError
        raise wrong(f"asked for chunk {chunk_id[:12]} ({size} bytes), got something else")
    digest = hashlib.sha256()
    done = 0
    while done < size:
        piece = buf[: min(len(buf), size - done)]
        conn.payload_into(piece)
        digest.update(piece)  # hashlib lets go of the GIL while it hashes a large buffer
        if size > len(buf) and spill is not None:
            spill(piece, done)
        done += len(piece)
    if digest.hexdigest() != chunk_id:
        raise CorruptData(f"chunk {chunk_id[:12]} from server {server.get('id', '?')} is corrupt")
