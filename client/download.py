"""Downloading one file: locate it, fetch chunks in parallel, verify, then show it.

Chunks are fetched several at a time straight from the storage servers, each
received into a buffer of its own (a few, reused), its SHA-256 checked there,
and only then written at its offset into a partial file in a hidden folder of
its own, ``.filecluster-partial/`` inside the destination folder
(client.partial: its name, lock and sweep).  The whole file's SHA-1 is
computed in order from the same buffers, as chunks complete (the file is read
back only for chunks kept from an interrupted download, or bigger than a
buffer), and checked at the end; only then is the file fsynced and linked into
place under its name, never over an existing file (a different file of that
name is kept, and the download gets a name like ``report (1).pdf``).

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

import contextlib
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import watchdog
from client.chunk_sources import Reports, Tickets, Trouble, from_a_good_copy, read_chunk_into
from client.destination import candidates, destination, file_sha1, holds, link_into_place
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
from common.direct_io import ALIGN, aligned_buffer, reopen_direct, write_direct
from common.errors import (
    AuthError,
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    Gone,
    InvalidRequest,
    NotFound,
    ProtocolError,
)
from common.hashing import READ_SIZE
from common.names import check_file_name

Progress = Callable[[str, int, int], None]
WINDOW = PARALLEL_TRANSFERS + 2  # chunks fetched ahead of the whole file's hashing, at most...
BUFFER_SIZE = 4 * 1024 * 1024  # ...each in a buffer of its size up to this (a bigger one streams through)
# writes into the page cache at most this big: on this kernel (6.18, ext4 with large folios) a big
# aligned write gets large folios, and on this VM copying into them cost far more: for 1 GiB, 4 MiB
# writes took 3-10 times the system time of 1 MiB ones, and 1 MiB ones 1.7 times that of 128 KiB
WRITE_SIZE = 128 * 1024
__all__ = [
    "PARTIAL_DIR",
    "STALE_PART_SECONDS",
    "DownloadResult",
    "download",
    "file_sha1",
]


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    size: int
    sha1: str
    fetched: bool  # False when an identical file was already there
    resumed: int = 0  # bytes found already verified in the partial file of an interrupted download


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
    swept: set[Path] | None = None,
    trouble: Trouble | None = None,
    link: bool = False,
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
    many leases; with ``swept``, the folders whose stale partials were already swept in this
    batch, each destination folder is swept once, not once per file; and with ``trouble``, the
    servers that failed any of them are tried last by all (a hung server costs each thread of the
    batch one timeout, not one per file).

    ``link``: ``info`` is a link's peek (LOCATE ``{token, peek}``: no tickets), and ``relocate``
    the LOCATE that reserves a download of the link's budget; it is made only if a chunk must be
    fetched (a file already here, or whole in its partial, costs the link nothing).  An
    interrupted download keeps its lease (on the partial, as an extended attribute) instead of
    releasing it, and the next attempt fetches the rest under that lease while it holds, so a
    resumed download of a link counts once."""
    tickets = Tickets(info, relocate, proxy, release)
    reports = Reports()
    interrupted = True
    kept: list[str] = []  # the lease, if an interrupted link download kept it for the next attempt
    try:
        result = _download(
            info,
            Path(out_dir),
            progress,
            tickets,
            reports,
            save_as,
            pool,
            swept,
            trouble,
            kept if link else None,
        )
        interrupted = False
        return result
    except Exception:
        interrupted = False
        raise
    finally:
        if not interrupted:  # Ctrl-C or SIGTERM: end now, with no more than a RELEASE
            reports.send(tickets)
        if not kept:
            tickets.release()


def _download(
    info: dict[str, Any],
    out_dir: Path,
    progress: Progress | None,
    tickets: Tickets,
    reports: Reports,
    save_as: str | None,
    pool: ConnectionPool | None = None,
    swept: set[Path] | None = None,
    trouble: Trouble | None = None,
    kept: list[str] | None = None,
) -> DownloadResult:
    name = check_file_name(info["name"])
    size, sha1 = int(info["size"]), str(info["sha1"])
    folder, file_name = destination(out_dir, name, save_as)
    if swept is None or folder not in swept:
        clean_stale_parts(folder / PARTIAL_DIR)
        if swept is not None:
            swept.add(folder)
    try:
        for candidate in candidates(folder, file_name):
            if not candidate.exists() and not candidate.is_symlink():
                break
            if holds(candidate, size, sha1):
                return DownloadResult(name, candidate, size, sha1, fetched=False)
    except OSError as exc:
        raise InvalidRequest(f"cannot look in {folder}: {exc.strerror or exc}") from None
    chunks: list[dict[str, Any]] = info["chunks"]
    if not chunks and kept is not None:
        tickets.claim()  # a link's empty file fetches nothing: its limit is asked here
    offsets = _offsets(chunks, size)
    deadline = Deadline.start(f"the download of {name}", "what arrived is kept for the next try", size)
    partial = open_partial(folder, partial_key(sha1, size, file_name))
    keep = partial.resumable  # interrupted, failed: the next download of this file goes on from it
    if kept is not None and partial.existing:
        saved = _saved_lease(partial.fd)
        if saved:
            tickets.resume_with(saved)
    if kept is not None and keep:  # kept with the partial as soon as there is one, not at the end
        tickets.on_lease = lambda lease: _save_lease(partial.fd, lease)
        located = tickets.lease()
        if located is not None:
            _save_lease(partial.fd, located)
    have: set[int] = set()
    transfer: _Transfer | None = None
    try:
        lacking = _room_lacking(partial.fd, size)
        if lacking:  # said now, rather than once the disk is full (for this user and everyone else)
            keep = partial.existing  # a partial from before keeps what it has; a new one goes
            raise InvalidRequest(f"not enough room in {folder} for {name}: {lacking}")
        os.ftruncate(partial.fd, size)
        have = verified_chunks(partial.fd, chunks, offsets, progress) if partial.existing else set()
        resumed = sum(int(chunks[i]["size"]) for i in have)
        transfer = _Transfer(
            partial.fd,
            tickets,
            trouble or Trouble(),
            reports,
            pool or ConnectionPool(read_timeout(READ_TIMEOUT)),
        )
        if len(chunks) - len(have) > 1 and all(offset % ALIGN == 0 for offset in offsets):
            transfer.direct = reopen_direct(partial.fd)  # a big file: around the page cache
        try:
            _fetch_all(transfer, chunks, offsets, sha1, progress, deadline, have)
        finally:
            transfer.close()
            if pool is None:
                transfer.pool.close()
        if kept is not None:
            _forget_lease(partial.fd)  # the file keeps no trace of the download
        os.fsync(partial.fd)
        final = link_into_place(partial.path, folder, file_name, (size, sha1))
        keep = False  # linked into place: the partial's name goes (the file keeps the other)
    except (CorruptData, Conflict):  # the whole file is wrong, or changed: its chunks help nobody
        keep = False
        raise
    except (Gone, NotFound, Forbidden, AuthError):  # refused: a link used up or ended, a file deleted
        if not have and (transfer is None or not transfer.written):
            keep = False  # before a byte came: nothing to resume, only the file's size held for days
        raise
    except OSError as exc:  # the local disk (full, failing): the partial keeps what it has
        where = ""
        if keep and exc.errno in (errno.ENOSPC, errno.EDQUOT) and transfer is not None and transfer.written:
            where = f" (what arrived is kept in {partial.path.parent} for the next try; delete it for room)"
        raise InvalidRequest(f"cannot write in {folder}: {exc.strerror or exc}{where}") from None
    finally:
        if keep and kept is not None:
            lease = tickets.lease()
            if lease is not None and _save_lease(partial.fd, lease):
                kept.append(lease)
        partial.close(keep=keep, tidy=swept is None)  # a batch tidies its folders at its end
    fsync_dir(folder)
    return DownloadResult(name, final, size, sha1, fetched=True, resumed=resumed)


_LEASE_XATTR = "user.filecluster.lease"  # on a link download's partial: the lease it was fetched under


def _save_lease(fd: int, lease: str) -> bool:
    """Keep ``lease`` with the partial, where the filesystem has user extended attributes."""
    try:
        os.setxattr(fd, _LEASE_XATTR, lease.encode("ascii"))
    except (OSError, AttributeError, UnicodeEncodeError):  # no xattrs here: the next attempt pays
        return False
    return True


def _room_lacking(fd: int, size: int) -> str:
    """What is missing for ``size`` bytes in the partial ``fd`` (beyond the blocks it already has,
    and the free space an unprivileged user may take), or "" if they fit or no one can tell."""
    try:
        st, fs = os.fstat(fd), os.fstatvfs(fd)
    except OSError:
        return ""
    need = size - st.st_blocks * 512
    free = fs.f_bavail * fs.f_frsize
    if fs.f_frsize <= 0 or need <= free:
        return ""
    from client.output import human_size

    return f"it needs {human_size(need)} more, {human_size(free)} is free"


def _forget_lease(fd: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.removexattr(fd, _LEASE_XATTR)


def _saved_lease(fd: int) -> str | None:
    try:
        raw = os.getxattr(fd, _LEASE_XATTR)
    except (OSError, AttributeError):
        return None
    text = raw.decode("ascii", "replace")
    return text if 0 < len(text) <= 64 and text.isprintable() else None


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
    trouble: Trouble
    reports: Reports
    pool: ConnectionPool
    stopped: threading.Event = field(default_factory=threading.Event)  # the deadline passed, or broken off
    direct: int | None = None  # the partial opened again with O_DIRECT (common.direct_io), if it can be
    written: bool = False  # a verified chunk was written into the partial

    def write(self, data: memoryview, offset: int) -> None:
        """Write a verified chunk at ``offset``: what can go around the page cache with ``direct``
        (a buffer of _fetch_in_window's starts on a page), the rest through ``fd``."""
        direct = self.direct
        if direct is not None:
            try:
                done = write_direct(direct, data, offset)
                data, offset = data[done:], offset + done
            except OSError:  # refused (EINVAL on some filesystems), or the disk: the page cache says
                self.direct = None
        write_at(self.fd, data, offset)
        self.written = True

    def close(self) -> None:
        direct, self.direct = self.direct, None
        if direct is not None:
            os.close(direct)


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
        _fetch_alone(transfer, chunks[0], deadline, on_bytes, whole)
    else:
        _fetch_in_window(transfer, chunks, offsets, missing, deadline, on_bytes, whole)
    if whole.hexdigest() != sha1:
        raise CorruptData("the downloaded file does not match its SHA-1; nothing was saved")


def _fetch_alone(
    transfer: _Transfer,
    chunk: dict[str, Any],
    deadline: Deadline,
    on_bytes: Callable[[int], None],
    whole: Any,
) -> None:
    """The one chunk of a small file, in this thread; at the deadline this thread's connections are
    broken (only those: the pool may serve other downloads too) and no other copy is tried."""
    mine = transfer.pool.this_thread()

    def stop() -> None:
        transfer.stopped.set()
        mine.abort()

    size = int(chunk["size"])
    alarm = watchdog.schedule(deadline.at, stop)  # one thread watches every file's deadline
    try:
        held = _fetch_chunk(transfer, chunk, 0, 0, on_bytes, memoryview(bytearray(_buffer_size(size))))
    except (FileClusterError, OSError):
        if transfer.stopped.is_set():
            raise deadline.missed() from None
        raise
    finally:
        alarm.cancel()
    _hash_chunk(transfer.fd, 0, size, held, whole)


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
    file in order.  Each chunk is fetched into a buffer of its own, which the whole file's hashing
    takes from there (no reading back from the file); the threads run at most WINDOW chunks ahead
    of the hashing, so memory stays at WINDOW buffers and on a busy machine the hashing keeps its
    share of the CPU; the flusher writes what was hashed to disk meanwhile, so the final fsync has
    little left to do."""
    futures: dict[int, tuple[Future[memoryview | None], mmap.mmap]] = {}
    spare: list[mmap.mmap] = []  # buffers whose chunk has been hashed, for the next ones (page-aligned)
    buffer_size = _buffer_size(max((int(chunk["size"]) for chunk in chunks), default=0))
    upcoming = iter(missing)
    following = next(upcoming, None)
    with ThreadPoolExecutor(PARALLEL_TRANSFERS) as workers, Flusher(transfer.fd) as flusher:
        try:
            for i, chunk in enumerate(chunks):
                while following is not None and following < i + WINDOW:
                    buf = spare.pop() if spare else aligned_buffer(buffer_size)
                    future = workers.submit(
                        _fetch_chunk,
                        transfer,
                        chunks[following],
                        following,
                        offsets[following],
                        on_bytes,
                        memoryview(buf),
                    )
                    futures[following] = (future, buf)
                    following = next(upcoming, None)
                held: memoryview | None = None
                if i in futures:
                    future, buf = futures.pop(i)
                    held = future.result(timeout=deadline.left())
                    spare.append(buf)
                _hash_chunk(transfer.fd, offsets[i], int(chunk["size"]), held, whole)
                flusher.wrote(int(chunk["size"]))
        except BaseException as exc:  # a failed chunk, the deadline, Ctrl-C or SIGTERM: break all
            for future, _ in futures.values():
                future.cancel()
            transfer.stopped.set()  # the reads broken off now are nobody's fault: no copy is blamed
            transfer.pool.abort()
            if isinstance(exc, FutureTimeout):
                raise deadline.missed() from None
            raise


def _buffer_size(chunk_size: int) -> int:
    return max(1, min(chunk_size, BUFFER_SIZE))


def _hash_chunk(fd: int, offset: int, length: int, held: memoryview | None, digest: Any) -> None:
    """Add a chunk to the whole file's hash: from its buffer if it is ``held`` there, else read
    back from the file (a chunk kept from an interrupted download, or one bigger than a buffer)."""
    if held is not None:
        digest.update(held)  # hashlib lets go of the GIL: the fetching threads go on meanwhile
        return
    end = offset + length
    while offset < end:
        block = os.pread(fd, min(READ_SIZE, end - offset), offset)
        if not block:
            raise CorruptData("the temp file is shorter than expected")
        digest.update(block)
        offset += len(block)


def _fetch_chunk(
    transfer: _Transfer,
    chunk: dict[str, Any],
    index: int,
    offset: int,
    on_bytes: Callable[[int], None],
    buf: memoryview,
) -> memoryview | None:
    """Fetch chunk ``index`` from one of its copies, verify it and write it at ``offset``; the
    chunk's bytes, verified, if they fit in ``buf`` (else None: read them back from the file)."""
    chunk_id, size = str(chunk["id"]), int(chunk["size"])

    def read(server: dict[str, Any], ticket: dict[str, Any]) -> memoryview | None:
        held = _fetch_from(transfer, server, ticket, chunk_id, size, offset, buf)
        on_bytes(size)
        return held

    try:
        return from_a_good_copy(
            transfer.tickets,
            index,
            chunk_id,
            lambda sources: transfer.trouble.order(index, sources),
            read,
            lambda server, ticket, problem: transfer.reports.add(chunk_id, server, ticket, problem),
            failed=transfer.trouble.failed,
            stopped=transfer.stopped,
        )
    except _LocalWriteFailed as exc:  # the local disk's error again: _download says it as such
        raise exc.error from None


class _LocalWriteFailed(Exception):
    """A write to the partial failed (a full disk, an I/O error).  Neither an OSError nor a
    FileClusterError, so from_a_good_copy does not take it for the copy's fault: no other copy
    is tried, no server is blamed, and the download ends saying what is wrong with the disk."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _to_partial(write: Callable[[memoryview, int], None], data: memoryview, offset: int) -> None:
    try:
        write(data, offset)
    except OSError as exc:
        raise _LocalWriteFailed(exc) from exc


def _fetch_from(
    transfer: _Transfer,
    server: dict[str, Any],
    ticket: dict[str, Any],
    chunk_id: str,
    size: int,
    offset: int,
    buf: memoryview,
) -> memoryview | None:
    """One copy of a chunk, read into ``buf`` and written at ``offset`` once verified; a chunk
    bigger than ``buf`` is written piece by piece as it arrives, and only counts once verified."""
    read_chunk_into(
        transfer.pool,
        server,
        ticket,
        chunk_id,
        size,
        buf,
        lambda piece, at: _to_partial(lambda d, o: write_at(transfer.fd, d, o), piece, offset + at),
    )
    if size > len(buf):
        return None
    held = buf[:size]
    _to_partial(transfer.write, held, offset)
    return held


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write ``data`` at ``offset``, WRITE_SIZE at a time."""
    while data:
        n = os.pwrite(fd, data[:WRITE_SIZE], offset)
        data, offset = data[n:], offset + n
