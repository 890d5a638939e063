"""A file's bytes for an HTTP response: chunks read from the storage servers, each verified
before a byte of it goes out.

Each chunk the requested span touches is read whole into a buffer from one of its copies (with the
GET tickets of the LINK_OPEN reply, through client.chunk_sources.read_chunk_into, the client's own
reader),
its SHA-256 checked, and only then is its part of the span handed out, in pieces.  A copy that is
unreachable, missing or corrupt is skipped for the next (a bad one is reported, REPORT_BAD, so
repair replaces it; a server that timed out or refused is tried last for the rest of the stream);
expired tickets are renewed once through the lease (client.chunk_sources.Tickets).
If no copy is good the stream raises and the server closes the connection: the client sees a
short body, never a wrong byte.

Memory: a :class:`ChunkBuffers` semaphore bounds the chunk buffers held at once across every
download, so the gateway's memory is that many chunks at most, whatever the number of clients
and the size of the files.  While a stream runs, :class:`LinkWatch` asks the proxy every few
seconds whether the link still holds (LINK_OPEN ``check``): revoked, expired or deleted, it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from client.chunk_sources import Tickets, Trouble, from_a_good_copy, read_chunk_into
from client.pool import READ_TIMEOUT, ConnectionPool
from common.config import read_timeout
from common.errors import FileClusterError, Gone, NotFound, Unavailable
from common.messages import MsgType
from gateway.proxy_calls import ProxyCalls

log = logging.getLogger(__name__)

PIECE = 256 * 1024  # bytes handed to the socket at a time (the link is re-checked between pieces)
CHECK_INTERVAL = 2.0
BUFFER_WAIT = 30.0  # seconds a stream waits for a chunk buffer before it gives up


class ChunkBuffers:
    """At most ``count`` chunk buffers held at once by all streams together."""

    def __init__(self, count: int, wait: float = BUFFER_WAIT) -> None:
        self._slots = threading.BoundedSemaphore(count)
        self.wait = wait

    def acquire(self) -> None:
        if not self._slots.acquire(timeout=self.wait):
            raise Unavailable("the gateway is busy: no chunk buffer came free in time")

    def release(self) -> None:
        self._slots.release()


class LinkWatch:
    """Re-asks the proxy about a link every ``interval`` seconds while its bytes flow."""

    def __init__(
        self, proxy: ProxyCalls, open_header: dict[str, Any], interval: float = CHECK_INTERVAL
    ) -> None:
        self.proxy = proxy
        self.header = {**open_header, "check": True}
        self.header.pop("range", None)
        self.interval = interval
        self._next = time.monotonic() + interval

    def check(self) -> None:
        """Raises Gone or NotFound if the link no longer holds; a proxy out of reach is let be
        (the tickets in hand stay valid, and the next check asks again)."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        try:
            self.proxy.call(MsgType.LINK_OPEN, dict(self.header))
        except (Gone, NotFound):
            raise
        except (FileClusterError, OSError) as exc:
            log.debug("cannot check a link now: %s", exc)


def chunk_spans(chunks: list[dict[str, Any]], start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(chunk index, from, to) within each chunk that bytes ``start`` to ``end`` (exclusive) touch."""
    offset = 0
    for index, chunk in enumerate(chunks):
        size = int(chunk["size"])
        lo, hi = max(start, offset), min(end, offset + size)
        if lo < hi:
            yield index, lo - offset, hi - offset
        offset += size
        if offset >= end:
            return


def file_pieces(
    info: dict[str, Any],
    start: int,
    end: int,
    proxy: ProxyCalls,
    buffers: ChunkBuffers,
    check: Callable[[], None],
) -> Generator[memoryview, None, None]:
    """Bytes ``start`` to ``end`` of the file a LINK_OPEN reply describes, verified, in pieces;
    each piece is valid until the next is asked for.  Close the iterator when done with it."""
    chunks: list[dict[str, Any]] = info["chunks"]
    tickets = Tickets(info, None, proxy)
    trouble = Trouble()  # a server that timed out or refused is tried last for the rest of the stream
    with ConnectionPool(read_timeout(READ_TIMEOUT)) as pool:
        for index, lo, hi in chunk_spans(chunks, start, end):
            check()
            buffers.acquire()
            try:
                data = verified_chunk(pool, tickets, proxy, index, chunks[index], trouble)
                view = memoryview(data)
                for at in range(lo, hi, PIECE):
                    yield view[at : min(hi, at + PIECE)]
                    check()
                del view, data
            finally:
                buffers.release()


def verified_chunk(
    pool: ConnectionPool,
    tickets: Tickets,
    proxy: ProxyCalls,
    index: int,
    chunk: dict[str, Any],
    trouble: Trouble,
) -> bytearray:
    """Chunk ``index`` whole, from the first copy whose SHA-256 matches (the download's routing,
    client.chunk_sources.from_a_good_copy: copies spread by ``index``, the servers in ``trouble``
    last, so a hung server costs a stream one timeout, not one per chunk); Unavailable if none
    does.  Each copy is received straight into the one buffer (client.chunk_sources.read_chunk_into)."""
    chunk_id, size = str(chunk["id"]), int(chunk["size"])
    data = bytearray(size)
    with memoryview(data) as view:

        def read(server: dict[str, Any], ticket: dict[str, Any]) -> None:
            read_chunk_into(pool, server, ticket, chunk_id, size, view, _whole)

        from_a_good_copy(
            tickets,
            index,
            chunk_id,
            lambda sources: trouble.order(index, sources),
            read,
            lambda server, ticket, problem: report_bad(proxy, chunk_id, server, ticket, problem),
            trouble.failed,
        )
    return data


def _whole(piece: memoryview, at: int) -> None:
    """read_chunk_into's spill: never called, the buffer holds the whole chunk."""
    raise AssertionError("a chunk bigger than its own buffer")


def report_bad(
    proxy: ProxyCalls, chunk_id: str, server: dict[str, Any], ticket: dict[str, Any], problem: str
) -> None:
    """Tell the proxy of a bad copy (best effort: the stream goes on either way)."""
    server_id = server.get("id")
    if type(server_id) is not int:
        return
    header = {"id": chunk_id, "server": server_id, "ticket": ticket, "problem": problem}
    try:
        proxy.call(MsgType.REPORT_BAD, header)
    except (FileClusterError, OSError) as exc:
        log.debug("cannot report a bad copy of %s: %s", chunk_id[:12], exc)
