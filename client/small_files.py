"""Many small files downloaded as a group (client.batch): their chunks asked for all at once on each
server's connection, and the files made durable together.

client.download takes a file from start to end alone: its partial opened, its chunk fetched (a round
trip), written, fsynced, linked into place, its folder fsynced.  For a thousand files of 64 KiB that
is a thousand round trips and two thousand fsyncs, each waited for in turn, and the threads that
overlap them spend their time handing the GIL to each other (measured: 188 futex calls a file).
Here one thread takes a *group* of small files (one chunk each, of at most :data:`SMALL` bytes; a
LOCATE_MANY batch at most) through the same steps together:

1. each file's folder is made and its partial opened as client.download does (client.destination,
   client.partial);
2. every chunk is asked for at once: a server's GET_CHUNKs are sent together on its connection and
   its replies read in order (a server answers a connection's requests in turn); the copy read is
   spread over the copies, servers in trouble last (client.chunk_sources.Trouble).  Each chunk is
   checked against its SHA-256 and the file's SHA-1 before a byte of it is written; it is then
   written to its partial, one buffer reused for all, and the disk is given it at once
   (POSIX_FADV_DONTNEED starts the write-back without waiting for it);
3. each partial is made durable and linked into place, never over an existing file, then the links
   are made durable; only then does a file count as downloaded.  For a group of FLUSH_FROM files or
   more, on Linux 5.8 or later, "durable" is one filesystem flush (syncfs, common.atomic.
   FilesystemFlush, opened before the group's first byte is written so that any write error is
   reported) for all the data, then one for all the links: two waits instead of a fsync per file
   and per folder.  Otherwise, or if a flush fails, each partial is fsynced (by then the disk has
   had all of them together) and each folder once.

The guarantees are client.download's: nothing unverified is written, nothing gets its name before it
is on disk, nothing existing is replaced, memory stays at one buffer.  Whatever is not the plain case
is handed to client.download, which knows what to do with it: a name already taken (by the same file
or another), a partial left by an interrupted download (resumed), a copy that cannot be read or is
corrupt, missing or of the wrong size (the others tried), an expired ticket (renewed), a local disk
that fails (said in one line).  A bad copy seen here is reported to the proxy (REPORT_BAD) as
client.download reports one.  The group has a deadline of its own (common.config.transfer_deadline of
its bytes): when it passes, its connections are broken and its files left to client.download.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client import watchdog
from client.chunk_sources import (
    Reports,
    Tickets,
    Trouble,
    ask_for_chunks,
    copy_problem,
    receive_chunk_into,
)
from client.destination import destination, link_into_place
from client.download import DownloadResult, write_at
from client.partial import PARTIAL_DIR, Partial, clean_stale_parts, open_partial, partial_dir, partial_key
from client.pool import ConnectionPool, ProxyCaller
from common.atomic import FilesystemFlush, fsync_dir
from common.config import transfer_deadline
from common.errors import CorruptData, FileClusterError, Forbidden, InvalidRequest, NotFound, Unavailable
from common.names import check_file_name
from common.transport import Connection

if TYPE_CHECKING:
    from client.batch import Outcome, Wanted

SMALL = 256 * 1024  # a file of one chunk at most this big is downloaded in a group
FLUSH_FROM = 16  # files in a group from which one filesystem flush (syncfs) beats a fsync each
_START_WRITEBACK = getattr(os, "POSIX_FADV_DONTNEED", None)  # absent where there is no posix_fadvise


def is_small(info: dict[str, Any]) -> bool:
    """True for a LOCATE reply of a file of one chunk of at most SMALL bytes."""
    chunks = info.get("chunks")
    try:
        return (
            isinstance(chunks, list)
            and len(chunks) == 1
            and 0 < int(info["size"]) <= SMALL
            and int(chunks[0]["size"]) == int(info["size"])
        )
    except (KeyError, TypeError, ValueError):
        return False


@dataclass
class _File:
    item: Wanted
    info: dict[str, Any]
    name: str  # the file's name in the catalog
    folder: Path
    file_name: str  # its name there
    partial: Partial
    size: int
    sha1: str
    chunk_id: str
    written: bool = False  # its verified bytes are in the partial
    open: bool = True  # the partial is not closed yet


@dataclass
class _Asked:
    """The GET_CHUNKs sent on one connection, in the order of their replies."""

    conn: Connection
    server: dict[str, Any]
    files: list[tuple[_File, dict[str, Any]]] = field(default_factory=list)  # (file, ticket)


class SmallFiles:
    """Downloads groups of small files into ``out_dir`` (one group at a time, from one thread).

    ``finished(item, result)`` hears of each file downloaded; ``alone(item, info)`` takes a file
    to download by client.download instead (and then ends its lease); ``release(lease)`` ends the
    lease of a file done here."""

    def __init__(
        self,
        out_dir: Path,
        pool: ConnectionPool,
        proxy: ProxyCaller,
        swept: set[Path],
        finished: Outcome,
        alone: Callable[[Wanted, dict[str, Any]], None],
        release: Callable[[str], None],
        trouble: Trouble | None = None,
    ) -> None:
        self._out_dir = out_dir
        self._pool = pool
        self._proxy = proxy
        self._swept = swept  # folders whose stale partials were swept in this run (once each)
        self._finished = finished
        self._alone = alone
        self._release = release
        self._trouble = trouble or Trouble()  # for the whole run: a server that failed once is tried last
        self._turns = itertools.count()  # spreads the reads over the copies (next() is atomic)

    def download(self, group: list[tuple[Wanted, dict[str, Any]]]) -> None:
        """Download ``group`` (of small files, is_small); groups may run in several threads at once."""
        files: list[_File] = []
        made: dict[tuple[str, ...], Path] = {}  # the folders made (and checked) for this group
        hidden: dict[Path, Path] = {}  # their partials' hidden folders (client.partial.partial_dir)
        flush: FilesystemFlush | None = None
        try:
            for item, info in group:
                prepared = self._prepare(item, info, made, hidden)
                if prepared is None:
                    self._alone(item, info)
                else:
                    files.append(prepared)
            # opened before a byte is written, so a flush reports any write error of this group's
            flush = FilesystemFlush(self._out_dir) if len(files) >= FLUSH_FROM else None
            self._fetch(files, bytearray(SMALL))
            self._make_durable([f for f in files if f.written], flush)
        finally:  # Ctrl-C or SIGTERM: nothing half-done is named; a verified partial is kept
            if flush is not None:
                flush.close()
            for f in files:
                if f.open:
                    f.open = False
                    f.partial.close(keep=f.written and f.partial.resumable, tidy=False)
                    self._end_lease(f)

    def _prepare(
        self, item: Wanted, info: dict[str, Any], made: dict[tuple[str, ...], Path], hidden: dict[Path, Path]
    ) -> _File | None:
        """The file with its folder made and its partial open; None if it is not the plain case
        (client.download then takes it, and says what is wrong if anything is)."""
        try:
            name = check_file_name(info["name"])
            folder, file_name = destination(self._out_dir, name, item.save_as, made)
            if folder not in self._swept:
                clean_stale_parts(folder / PARTIAL_DIR)
                self._swept.add(folder)
            if os.path.lexists(folder / file_name):  # the same file, or another: client.download sees
                return None
            size, sha1 = int(info["size"]), str(info["sha1"])
            if folder not in hidden:
                hidden[folder] = partial_dir(folder)
            partial = open_partial(folder, partial_key(sha1, size, file_name), hidden[folder])
        except (FileClusterError, OSError, KeyError, TypeError, ValueError):
            return None
        if partial.existing:  # an interrupted download's: client.download checks it and goes on
            partial.close(keep=True, tidy=False)
            return None
        return _File(item, info, name, folder, file_name, partial, size, sha1, str(info["chunks"][0]["id"]))

    def _fetch(self, files: list[_File], buffer: bytearray) -> None:
        """Ask for every file's chunk at once (each server's requests in one write), then read,
        verify and write each as it comes."""
        plan: dict[tuple[str, int], tuple[dict[str, Any], list[tuple[_File, dict[str, Any]]]]] = {}
        for f in files:
            _, sources = Tickets(f.info, None).sources(0)
            server, ticket = next(iter(self._trouble.order(next(self._turns), sources)), ({}, {}))
            try:
                key = (str(server["host"]), int(server["port"]))
            except (KeyError, TypeError, ValueError) as exc:
                self._failed(server, ticket, f, exc)
                continue
            plan.setdefault(key, (server, []))[1].append((f, ticket))
        asked: dict[tuple[str, int], _Asked] = {}
        for key, (server, wanted) in plan.items():
            try:
                conn = self._pool.get(server)
                ask_for_chunks(conn, [(f.chunk_id, ticket) for f, ticket in wanted])
            except (FileClusterError, OSError) as exc:
                for f, ticket in wanted:
                    self._failed(server, ticket, f, exc)
                continue
            asked[key] = _Asked(conn, server, wanted)
        if not asked:
            return
        at = time.monotonic() + transfer_deadline(sum(f.size for f in files))
        alarm = watchdog.schedule(at, self._pool.this_thread().abort)
        try:
            for each in asked.values():
                self._receive(each, buffer)
        finally:
            alarm.cancel()

    def _receive(self, asked: _Asked, buffer: bytearray) -> None:
        """The replies on one connection, in order; after a failure the connection is given up and
        its files not read yet go to client.download."""
        pending = list(asked.files)
        while pending:
            f, ticket = pending.pop(0)
            view = memoryview(buffer)[: f.size]
            try:
                receive_chunk_into(asked.conn, asked.server, f.chunk_id, f.size, view)
            except (FileClusterError, OSError) as exc:
                self._failed(asked.server, ticket, f, exc)
                if isinstance(exc, (CorruptData, NotFound, Forbidden)):  # read whole, or an ERROR reply:
                    continue  # the connection is in step
                asked.conn.close()
                for later, _ in pending:
                    self._hand_over(later)
                return
            if hashlib.sha1(view).hexdigest() != f.sha1:  # the catalog's, not the copy's: let it say so
                self._hand_over(f)
                continue
            try:
                write_at(f.partial.fd, view, 0)
                if _START_WRITEBACK is not None:
                    os.posix_fadvise(f.partial.fd, 0, 0, _START_WRITEBACK)
            except OSError:  # the local disk: client.download says what is wrong
                self._hand_over(f)
                continue
            f.written = True

    def _make_durable(self, files: list[_File], flush: FilesystemFlush | None) -> None:
        """Make each written partial durable and link it into place, then make the links durable,
        and only then count the files as downloaded.  Durable means one filesystem flush for the
        whole group where it can be had (``flush``: the data before any link, then the links), else
        a fsync of each partial and of each folder once."""
        together = self._flushed(files, flush)
        placed: list[tuple[_File, Path]] = []
        for f in files:
            try:
                if id(f) not in together:
                    os.fsync(f.partial.fd)
                final = link_into_place(f.partial.path, f.folder, f.file_name, (f.size, f.sha1))
            except (FileClusterError, OSError):
                self._hand_over(f)  # its verified bytes stay in the partial: client.download keeps them
                continue
            f.open = False
            f.partial.close(keep=False, tidy=False)
            placed.append((f, final))
        folders = {f.folder for f, _ in placed if id(f) not in together}
        if flush is not None and together and not flush.try_flush():  # the links
            folders |= {f.folder for f, _ in placed}
        failed: dict[Path, str] = {}
        for folder in folders:
            try:
                fsync_dir(folder)
            except OSError as exc:
                failed[folder] = exc.strerror or str(exc)
        for f, final in placed:
            self._end_lease(f)
            if f.folder in failed:
                self._finished(f.item, InvalidRequest(f"cannot write in {f.folder}: {failed[f.folder]}"))
            else:
                self._finished(f.item, DownloadResult(f.name, final, f.size, f.sha1, fetched=True))

    @staticmethod
    def _flushed(files: list[_File], flush: FilesystemFlush | None) -> set[int]:
        """The files (by id) whose bytes one flush of their filesystem made durable; empty if there
        is no flush, the group is small, or the flush failed (each is then fsynced on its own)."""
        if flush is None or not flush.works or len(files) < FLUSH_FROM:
            return set()
        covered: dict[Path, bool] = {}
        for f in files:
            if f.folder not in covered:
                covered[f.folder] = flush.covers(f.folder)
        together = {id(f) for f in files if covered[f.folder]}
        return together if together and flush.try_flush() else set()

    def _failed(self, server: dict[str, Any], ticket: dict[str, Any], f: _File, exc: BaseException) -> None:
        """A copy that could not be read: reported if it is bad, its server tried last if it is
        unreachable, and the file handed to client.download (which tries the other copies)."""
        problem = copy_problem(exc)
        if problem is not None:
            reports = Reports()
            reports.add(f.chunk_id, server, ticket, problem)
            reports.send(Tickets(f.info, None, self._proxy))
        elif isinstance(exc, Unavailable) and server:
            self._trouble.failed(server)
        self._hand_over(f)

    def _hand_over(self, f: _File) -> None:
        if f.open:
            f.open = False
            f.partial.close(keep=f.written and f.partial.resumable, tidy=False)
        self._alone(f.item, f.info)

    def _end_lease(self, f: _File) -> None:
        lease = f.info.get("lease")
        if isinstance(lease, str) and lease:
            with contextlib.suppress(FileClusterError, OSError):
                self._release(lease)
