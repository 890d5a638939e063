"""Downloading one file: locate it, fetch chunks in parallel, verify, then show it.

Chunks are fetched several at a time straight from the storage servers and
written at their offsets into a partial file in a hidden folder of its own,
``.filecluster-partial/`` inside the destination folder (client.partial: its
name, lock and sweep).  Each chunk's SHA-256 is checked as it arrives.  The
whole file's SHA-1 is computed in order, as chunks complete, and checked at
the end; only then is the file fsynced and linked into place under its name,
never over an existing file (a different file of that name is kept, and the
download gets a name like ``report (1).pdf``).

Resume: an interrupted download keeps its partial file; the next download of
the same content to the same place checks the chunks in it and fetches only
the others (``DownloadResult.resumed`` says how many bytes it kept).

Where the file goes: ``save_as``, a path relative to the output folder
(default: the base name of the file's name), never outside it
(client.destination).

Routing around trouble: chunk i is read first from copy i mod n, so every
copy gets read and the load is shared.  A server that times out, refuses or
drops a connection goes to the back of every later chunk's list for the rest
of the download (still tried if nothing else works), so a hung server costs
each thread one timeout, not one per chunk.  A copy with wrong bytes, a
wrong size or none at all is skipped for the next, and reported to the
proxy afterwards (REPORT_BAD) so repair replaces it; the user hears of it
only if no copy of a chunk is good.  The LOCATE reply's lease keeps the
file's chunks on the servers while the download runs; it is released at the
end.  The whole download has a deadline (common.config.transfer_deadline):
when it passes, every connection is broken and the download fails.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.destination import candidates, destination, link_into_place
from client.flusher import Flusher
from client.partial import (
    PARTIAL_DIR,
    STALE_PART_SECONDS,
    clean_stale_parts,
    open_partial,
    partial_key,
    verified_chunks,
)
from client.pool import READ_TIMEOUT, ConnectionPool, Deadline, ProxyCaller
from common.atomic import fsync_dir
from common.config import PARALLEL_TRANSFERS, read_timeout
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    NotFound,
    ProtocolError,
    RemoteProtocolError,
    Unavailable,
)
from common.hashing import READ_SIZE
from common.messages import MsgType
from common.names import check_file_name

Progress = Callable[[str, int, int], None]
WINDOW = 2 * PARALLEL_TRANSFERS  # chunks fetched ahead of the whole file's hashing, at most
__all__ = ["PARTIAL_DIR", "STALE_PART_SECONDS", "DownloadResult", "download", "file_sha1"]


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    size: int
    sha1: str
    fetched: bool  # False when an identical file was already there
    resumed: int = 0  # bytes found already verified in the partial file of an interrupted download


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def download(
    info: dict[str, Any],
    out_dir: Path,
    progress: Progress | None = None,
    relocate: Callable[[], dict[str, Any]] | None = None,
    proxy: ProxyCaller | None = None,
    *,
    save_as: str | None = None,
    pool: ConnectionPool | None = None,
    release: Callable[[str], None] | None = None,
) -> DownloadResult:
    """Fetch the file described by a LOCATE reply into ``out_dir`` (as ``save_as``, a path relative
    to it; default: the base name of the file's name).

    ``proxy`` is the proxy that gave the reply.  If the reply carries a ``lease`` (the proxy keeps
    the file's chunks while it lives), fresh tickets for a long download come from
    ``LOCATE {lease}`` there, and the lease is released (RELEASE) when the download ends, however
    it ends.  Copies that sent wrong bytes, were missing or had the wrong size are reported to it
    (REPORT_BAD) after the download, quietly: the user hears only if no copy of a chunk was good.
    ``relocate`` repeats the original LOCATE, for fresh tickets from a proxy that gives no lease.
    The whole download must end within common.config.transfer_deadline of the file's size.
    An interrupted download keeps its partial file, and the next one to the same place resumes it.

    Many downloads at once (client.batch) share one ``pool`` of connections (each thread its own)
    and hand their lease to ``release`` instead of sending RELEASE, so that one RELEASE_MANY ends
    many leases."""
    tickets = Tickets(info, relocate, proxy, release)
    reports = _Reports()
    interrupted = True
    try:
        result = _download(info, Path(out_dir), progress, tickets, reports, save_as, pool)
        interrupted = False
        return result
    except Exception:
        interrupted = False
        raise
    finally:
        if not interrupted:  # Ctrl-C or SIGTERM: end now, with no more than a RELEASE
            reports.send(tickets)
        tickets.release()


def _download(
    info: dict[str, Any],
    out_dir: Path,
    progress: Progress | None,
    tickets: Tickets,
    reports: _Reports,
    save_as: str | None,
    pool: ConnectionPool | None = None,
) -> DownloadResult:
    name = check_file_name(info["name"])
    size, sha1 = int(info["size"]), str(info["sha1"])
    folder, file_name = destination(out_dir, name, save_as)
    clean_stale_parts(folder / PARTIAL_DIR)
    try:
        for candidate in candidates(folder, file_name):
            if not candidate.exists() and not candidate.is_symlink():
                break
            if candidate.is_file() and candidate.stat().st_size == size and file_sha1(candidate) == sha1:
                return DownloadResult(name, candidate, size, sha1, fetched=False)
    except OSError as exc:
        raise InvalidRequest(f"cannot look in {folder}: {exc.strerror or exc}") from None
    chunks: list[dict[str, Any]] = info["chunks"]
    offsets = _offsets(chunks, size)
    deadline = Deadline.start(f"the download of {name}", "what arrived is kept for the next try", size)
    partial = open_partial(folder, partial_key(sha1, size, file_name))
    keep = partial.resumable  # interrupted, failed: the next download of this file goes on from it
    try:
        os.ftruncate(partial.fd, size)
        have = verified_chunks(partial.fd, chunks, offsets, progress) if partial.existing else set()
        resumed = sum(int(chunks[i]["size"]) for i in have)
        transfer = _Transfer(
            partial.fd, tickets, _Trouble(), reports, pool or ConnectionPool(read_timeout(READ_TIMEOUT))
        )
        try:
            _fetch_all(transfer, chunks, offsets, sha1, progress, deadline, have)
        finally:
            if pool is None:
                transfer.pool.close()
        os.fsync(partial.fd)
        final = link_into_place(partial.path, folder, file_name)
        keep = False  # linked into place: the partial's name goes (the file keeps the other)
    except (CorruptData, Conflict):  # the whole file is wrong, or changed: its chunks help nobody
        keep = False
        raise
    except OSError as exc:  # the local disk (full, failing): the partial keeps what it has
        raise InvalidRequest(f"cannot write in {folder}: {exc.strerror or exc}") from None
    finally:
        partial.close(keep=keep)
    fsync_dir(folder)
    return DownloadResult(name, final, size, sha1, fetched=True, resumed=resumed)


def _offsets(chunks: list[dict[str, Any]], size: int) -> list[int]:
    """Where each chunk starts; the chunk list must add up to the file's size."""
    offsets = []
    offset = 0
    for chunk in chunks:
        offsets.append(offset)
        offset += int(chunk["size"])
    if offset != size:
        raise ProtocolError("the proxy's chunk list does not add up to the file size")
    return offsets


@dataclass
class _Transfer:
    """What the threads of one download share."""

    fd: int
    tickets: Tickets
    trouble: _Trouble
    reports: _Reports
    pool: ConnectionPool
    stopped: threading.Event = field(default_factory=threading.Event)  # the deadline passed


def _fetch_all(
    transfer: _Transfer,
    chunks: list[dict[str, Any]],
    offsets: list[int],
    sha1: str,
    progress: Progress | None,
    deadline: Deadline,
    have: set[int],
) -> None:
    """Fetch every chunk but those in ``have`` (already verified in the file), then check the whole."""
    size = sum(int(chunk["size"]) for chunk in chunks)
    done = sum(int(chunks[i]["size"]) for i in have)
    lock = threading.Lock()
    if progress:
        progress("receiving", done, size)

    def on_bytes(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress:
                progress("receiving", done, size)

    whole = hashlib.sha1()
    missing = [i for i in range(len(chunks)) if i not in have]
    if len(missing) == 1 and len(chunks) == 1:  # a small file: no thread pool to start
        _fetch_alone(transfer, chunks[0], deadline, on_bytes)
        _hash_region(transfer.fd, 0, int(chunks[0]["size"]), whole)
    else:
        _fetch_in_window(transfer, chunks, offsets, missing, deadline, on_bytes, whole)
    if whole.hexdigest() != sha1:
        raise CorruptData("the downloaded file does not match its SHA-1; nothing was saved")


def _fetch_alone(
    transfer: _Transfer, chunk: dict[str, Any], deadline: Deadline, on_bytes: Callable[[int], None]
) -> None:
    """The one chunk of a small file, in this thread; at the deadline this thread's connections are
    broken (only those: the pool may serve other downloads too) and no other copy is tried."""
    mine = transfer.pool.this_thread()

    def stop() -> None:
        transfer.stopped.set()
        mine.abort()

    timer = threading.Timer(deadline.left(), stop)
    timer.daemon = True
    timer.start()
    try:
        _fetch_chunk(transfer, chunk, 0, 0, on_bytes)
    except (FileClusterError, OSError):
        if transfer.stopped.is_set():
            raise deadline.missed() from None
        raise
    finally:
        timer.cancel()


def _fetch_in_window(
    transfer: _Transfer,
    chunks: list[dict[str, Any]],
    offsets: list[int],
    missing: list[int],
    deadline: Deadline,
    on_bytes: Callable[[int], None],
    whole: Any,
) -> None:
    """Fetch the ``missing`` chunks in PARALLEL_TRANSFERS threads while this one hashes the whole
    file in order.  The threads run at most WINDOW chunks ahead of the hashing, so on a busy machine
    the hashing keeps its share of the CPU and finishes with the transfer, not long after it; the
    flusher writes what was hashed to disk meanwhile, so the final fsync has little left to do."""
    futures: dict[int, Future[None]] = {}
    upcoming = iter(missing)
    following = next(upcoming, None)
    with ThreadPoolExecutor(PARALLEL_TRANSFERS) as workers, Flusher(transfer.fd) as flusher:
        try:
            for i, chunk in enumerate(chunks):
                while following is not None and following < i + WINDOW:
                    futures[following] = workers.submit(
                        _fetch_chunk, transfer, chunks[following], following, offsets[following], on_bytes
                    )
                    following = next(upcoming, None)
                if i in futures:
                    futures.pop(i).result(timeout=deadline.left())
                _hash_region(transfer.fd, offsets[i], int(chunk["size"]), whole)
                flusher.wrote(int(chunk["size"]))
        except BaseException as exc:  # a failed chunk, the deadline, Ctrl-C or SIGTERM: break all
            for future in futures.values():
                future.cancel()
            transfer.pool.abort()
            if isinstance(exc, FutureTimeout):
                raise deadline.missed() from None
            raise


def _hash_region(fd: int, offset: int, length: int, digest: Any) -> None:
    end = offset + length
    while offset < end:
        block = os.pread(fd, min(READ_SIZE, end - offset), offset)
        if not block:
            raise CorruptData("the temp file is shorter than expected")
        digest.update(block)
        offset += len(block)


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
        self._lock = threading.Lock()

    def sources(self, index: int) -> tuple[int, list[tuple[dict[str, Any], dict[str, Any]]]]:
        """(the tickets' expiry, [(server, ticket header)]) for chunk ``index``."""
        with self._lock:
            info = self._info
        common = info.get("ticket") or {}
        servers = info["chunks"][index]["servers"]
        return int(common.get("exp", 0)), [
            (s, {"exp": common.get("exp"), "who": common.get("who"), "mac": s.get("ticket")}) for s in servers
        ]

    def renew(self, seen_exp: int) -> bool:
        """Fresh tickets (once for all threads); False if there is no way to get them."""
        with self._lock:
            if int((self._info.get("ticket") or {}).get("exp", 0)) != seen_exp:
                return True  # another thread renewed them already
            fresh = self._locate_again()
            if fresh is None:
                return False
            if [c["id"] for c in fresh["chunks"]] != [c["id"] for c in self._info["chunks"]]:
                raise Conflict("the file changed during the download; nothing was saved, try again")
            self._info = fresh
        return True

    def _locate_again(self) -> dict[str, Any] | None:
        lease = self._lease()
        if lease is not None and self._proxy is not None:
            try:
                return self._proxy.call(MsgType.LOCATE, {"lease": lease})
            except NotFound:  # the lease ended (it expired): locate the file afresh, if we can
                if self._relocate is None:
                    raise
        return None if self._relocate is None else self._relocate()

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


class _Trouble:
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


class _Reports:
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


class _WrongSize(RemoteProtocolError):
    """A copy whose size is not the one the catalog records."""


def _fetch_chunk(
    transfer: _Transfer,
    chunk: dict[str, Any],
    index: int,
    offset: int,
    on_bytes: Callable[[int], None],
) -> None:
    chunk_id, size = str(chunk["id"]), int(chunk["size"])
    errors: list[str] = []
    for attempt in range(2):
        exp, sources = transfer.tickets.sources(index)
        expired = False
        for server, ticket in transfer.trouble.order(index, sources):
            if transfer.stopped.is_set():
                raise Unavailable("the download was stopped")
            try:
                _fetch_from(transfer.pool, server, ticket, transfer.fd, chunk_id, size, offset, on_bytes)
                return
            except Forbidden as exc:  # the tickets expired (a long download): renew them, once
                expired = True
                errors.append(f"server {server.get('id', '?')}: {exc}")
            except (FileClusterError, OSError) as exc:
                errors.append(f"server {server.get('id', '?')}: {exc}")
                problem = copy_problem(exc)
                if problem is not None:
                    transfer.reports.add(chunk_id, server, ticket, problem)
                elif isinstance(exc, Unavailable):  # timed out, refused, dropped: try it last
                    transfer.trouble.failed(server)
        if not (expired and attempt == 0 and transfer.tickets.renew(exp)):
            break
    detail = "; ".join(errors) or "no server holds it"
    raise Unavailable(f"chunk {chunk_id[:12]} cannot be read from any copy ({detail})")


def copy_problem(exc: BaseException) -> str | None:
    """What REPORT_BAD calls a copy that failed with ``exc``; None if the copy may well be fine."""
    if isinstance(exc, CorruptData):
        return "corrupt"
    if isinstance(exc, NotFound):
        return "missing"
    if isinstance(exc, _WrongSize):
        return "short"
    return None


def _fetch_from(
    pool: ConnectionPool,
    server: dict[str, Any],
    ticket: dict[str, Any],
    fd: int,
    chunk_id: str,
    size: int,
    offset: int,
    on_bytes: Callable[[int], None],
) -> None:
    position = offset

    def write(piece: bytes | memoryview) -> None:
        nonlocal position
        os.pwrite(fd, piece, position)
        position += len(piece)
        on_bytes(len(piece))

    try:
        read_chunk(pool, server, ticket, chunk_id, size, write)
    except CorruptData:
        on_bytes(-size)
        raise


def read_chunk(
    pool: ConnectionPool,
    server: dict[str, Any],
    ticket: dict[str, Any],
    chunk_id: str,
    size: int,
    sink: Callable[[bytes | memoryview], None],
) -> None:
    """Read one copy of a chunk (GET_CHUNK with its ticket), each piece handed to ``sink`` as it
    arrives (valid only until the next); CorruptData once all came if their SHA-256 is not the id,
    so the caller must not use them before this returns.  The gateway reads chunks with it too."""
    conn = pool.get(server)
    conn.send(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": ticket})
    reply = conn.expect_reply(MsgType.GET_CHUNK)
    if reply.header["id"] != chunk_id or reply.payload_len != size:
        conn.close()
        wrong = _WrongSize if reply.header["id"] == chunk_id else RemoteProtocolError
        raise wrong(f"asked for chunk {chunk_id[:12]} ({size} bytes), got something else")
    digest = hashlib.sha256()
    for piece in conn.payload():
        digest.update(piece)
        sink(piece)
    if digest.hexdigest() != chunk_id:
        raise CorruptData(f"chunk {chunk_id[:12]} from server {server.get('id', '?')} is corrupt")
