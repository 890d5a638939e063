"""Where a storage server keeps its chunks: the storage seam (Swift's DiskFile shape).

A chunk is stored under its SHA-256, ``ServerFiles/ab/abcdef...``.  Writing
goes through a :class:`ChunkWriter`: bytes are hashed as they are written to
a temp file in the same filesystem; ``commit`` refuses a size or hash
mismatch, fsyncs the file, renames it into place and fsyncs the directory.
A group of chunks (PUT_CHUNKS, :meth:`ChunkStore.commit_all`) is made durable
with two flushes of the filesystem instead (syncfs: the data, then the names)
when it has FLUSH_FROM chunks or more, and chunk by chunk if a flush fails.
A temp file that was never committed is removed, so a reader never sees a
half-written chunk.  :class:`servers.memory_store.MemoryChunkStore` is the in-memory twin for
tests.

Only the server's user can read chunks: files are 0600 and every folder
(the root, the fan-out folders, ``tmp``, ``quarantine``) 0700, whatever the
umask; a store made by an older version is tightened when it opens.

Self-healing (issue 7). A chunk file's mtime is when its copy was last known
good: the commit sets it, and :meth:`ChunkStore.verify` (a full re-read and
SHA-256) touches it again. Both also stamp the file with an extended attribute
(``user.filecluster.verified``: that time and the mtime then), so a file
modified in place since is not taken as verified (:meth:`verified_age`).
``delete(ids, older_than=T)`` removes only copies whose mtime is before ``T``,
so a copy stored or verified after the proxy decided to delete it survives
without the proxy holding a lock across the network. A copy found bad (wrong
bytes, unreadable with EIO, not a regular file) is never deleted: it is moved
to ``quarantine/<id>.<unix time>`` (out of ``ids()`` and the usage figures)
and its id is queued in :attr:`lost`, which membership drains into heartbeats
so the proxy repairs it from another copy. ``reserve`` bytes of the disk are
kept free (Swift's fallocate_reserve): a chunk that would eat into them is
refused as ``insufficient_storage``, and :meth:`available` (what the server
advertises) leaves them out.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import math
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from common.atomic import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    FilesystemFlush,
    fsync_dir,
    make_private_dir,
    start_writeback,
    tighten,
)
from common.direct_io import STAGE, StagePool, Stager, open_direct
from common.errors import (
    CorruptData,
    FileClusterError,
    InsufficientStorage,
    InternalError,
    InvalidRequest,
    NotFound,
    StorageIOError,
)
from common.hashing import check_chunk_id

log = logging.getLogger(__name__)

TMP_DIR = "tmp"
QUARANTINE_DIR = "quarantine"
READ_PIECE = 1024 * 1024  # verify() reads and paces this much at a time
_TEMP_PREFIX = uuid.uuid4().hex[:12]  # temp names: this process's random prefix and a counter
_temp_numbers = itertools.count()
WRITEBACK_STEP = 1024 * 1024  # a writer starts the disk writing every this many bytes (start_writeback)
VERIFIED_XATTR = "user.filecluster.verified"  # "<unix time> <st_mtime_ns>" of the last full check
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # a temp file, never reused
DIRECT_FROM = STAGE  # a chunk this big or bigger is written around the page cache (common.direct_io)
_STAGES = StagePool(8)  # stages for direct writes, for all the stores of this process (8 MiB at most)
READ_STAGES = StagePool(8)  # and for reads around the page cache (common.transport.send_file): 8 MiB
# a group of this many chunks or more is made durable by two filesystem flushes (syncfs) instead of
# a fsync per chunk and per fan-out folder (measured, 64 chunks of 64 KiB: half the CPU and the wait)
FLUSH_FROM = 8

Verdict = Literal["good", "bad", "missing"]
Pace = Callable[[int], None]  # called with each piece's length as verify() reads it (the scrubber's throttle)


class ChunkWriter(Protocol):
    """What both stores' ``writer()`` returns: write pieces, then commit (verify + install) or abort."""

    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> ChunkWriter: ...
    def __exit__(self, *exc: object) -> None: ...


def _io_error(exc: OSError, what: str) -> FileClusterError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left to {what}")
    return StorageIOError(f"disk error while trying to {what}: {exc.strerror or exc}")


class LostQueue:
    """Ids of copies this server lost (quarantined), waiting to be told to the proxy; thread-safe.

    Membership ``take``s a batch for a heartbeat and ``put_back``s it if the proxy did not answer OK."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, None] = {}  # insertion-ordered, each id once

    def add(self, chunk_id: str) -> None:
        with self._lock:
            self._ids[chunk_id] = None

    def take(self, limit: int) -> list[str]:
        with self._lock:
            batch = list(self._ids)[:limit]
            for chunk_id in batch:
                del self._ids[chunk_id]
        return batch

    def put_back(self, chunk_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids = {**dict.fromkeys(chunk_ids), **self._ids}

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._ids


def _bytes(info: os.stat_result) -> int:
    """What an entry at a chunk's path adds to ``used``: its size if it is a file, else nothing."""
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _Usage:
    """Chunk count and bytes used, kept up to date under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.bytes = 0

    def add(self, count: int, size: int) -> None:
        with self.lock:
            self.count += count
            self.bytes += size


def disk_id(path: Path) -> str:
    """A short opaque id of the filesystem under ``path`` on this machine (the machine's id, or its
    host name, and the device number, hashed: it tells nothing about either)."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    seed = f"{machine or socket.gethostname()}:{os.stat(path).st_dev}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


class ChunkStore:
    """Chunks on disk under ``root`` (a server's ``ServerFiles`` folder)."""

    def __init__(self, root: Path, *, reserve: int = 0) -> None:
        if reserve < 0:
            raise InvalidRequest("the reserve cannot be negative")
        self.root = Path(root)
        self.tmp = self.root / TMP_DIR
        self._folders: set[str] = set()  # fan-out folders known to exist (_install)
        self.quarantine_dir = self.root / QUARANTINE_DIR
        self.reserve = reserve
        self.direct = True  # big chunks are written with O_DIRECT, until the filesystem refuses it
        self.lost = LostQueue()
        make_private_dir(self.root)
        make_private_dir(self.tmp)
        make_private_dir(self.quarantine_dir)
        for leftover in self.tmp.iterdir():  # half-written chunks from a crash
            leftover.unlink(missing_ok=True)
        self._usage = _Usage()
        self._quarantined = sum(1 for _ in self.quarantine_dir.iterdir())
        for sub in self.root.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                tighten(sub, PRIVATE_DIR)
        for chunk_id in self.ids():
            path = self._path(chunk_id)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                self._usage.add(1, info.st_size)
                tighten(path, PRIVATE_FILE)
            else:  # counted, as ids() lists it, but has no bytes; verify() quarantines it
                self._usage.add(1, 0)

    def _path(self, chunk_id: str) -> Path:
        check_chunk_id(chunk_id)
        return self.root / chunk_id[:2] / chunk_id

    @property
    def count(self) -> int:
        return self._usage.count

    @property
    def used(self) -> int:
        return self._usage.bytes

    def free(self) -> int:
        usage = os.statvfs(self.root)
        return usage.f_bavail * usage.f_frsize

    def available(self) -> int:
        """Bytes chunks may still take: free disk space less the reserve (never negative)."""
        return max(self.free() - self.reserve, 0)

    def disk(self) -> str:
        """Which filesystem holds the chunks, as an opaque id: equal for servers whose folders are
        on one filesystem of one machine, so `status` counts its free space once."""
        return disk_id(self.root)

    def quarantined_count(self) -> int:
        return self._quarantined

    def ids(self) -> Iterator[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.name in (TMP_DIR, QUARANTINE_DIR) or not sub.is_dir():
                continue
            for entry in sorted(sub.iterdir()):
                if len(entry.name) == 64 and entry.name.startswith(sub.name):
                    yield entry.name

    def has(self, chunk_id: str) -> bool:
        return self._path(chunk_id).is_file()

    def size(self, chunk_id: str) -> int:
        try:
            return self._path(chunk_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no chunk {chunk_id}") from None

    def open(self, chunk_id: str) -> tuple[BinaryIO, int]:
        """An open file on the chunk and its size (the size of what was opened, even if deleted since)."""
        try:
            file = open(self._path(chunk_id), "rb")
        except FileNotFoundError:
            raise NotFound(f"no chunk {chunk_id}") from None
        except OSError as exc:
            raise _io_error(exc, "read a chunk") from None
        return file, os.fstat(file.fileno()).st_size

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes leave the reserve free now (False if the disk cannot say)."""
        try:
            return self.free() - size >= self.reserve
        except OSError:
            return False

    def writer(self, chunk_id: str, size: int, *, fits: bool = False) -> ChunkWriter:
        """A writer for one chunk, refused if it would eat into the reserve.  ``fits``: the caller
        has just checked (:meth:`fits`) that this chunk and the others it writes with it fit, so the
        free space is not asked again for each chunk of a group."""
        chunk_id = check_chunk_id(chunk_id)
        if not fits:
            try:
                free = self.free()
            except OSError as exc:
                raise _io_error(exc, "check the free space") from None
            if free - size < self.reserve:
                raise InsufficientStorage(
                    f"no room for a chunk of {size} bytes: {free} bytes free, {self.reserve} kept in reserve"
                )
        return _DiskWriter(self, chunk_id, size)

    def delete(self, chunk_ids: Iterable[str], older_than: float | None = None) -> int:
        """Delete these copies; with ``older_than`` (Unix time) only those last written or verified
        before it.  The check and the unlink are one step under the lock commits and verifies take."""
        deleted = 0
        for chunk_id in chunk_ids:
            path = self._path(chunk_id)
            with self._usage.lock:
                try:
                    info = path.lstat()
                    if older_than is not None and info.st_mtime >= older_than:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                self._usage.count -= 1
                self._usage.bytes -= _bytes(info)
            deleted += 1
        return deleted

    def verified_age(self, chunk_id: str) -> float | None:
        """Seconds since this copy was written or last fully verified, if it has not been modified
        since (its stamp names its mtime then); ``inf`` if it is not known good; None if missing."""
        path = self._path(chunk_id)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        try:
            when, mtime_ns = os.getxattr(path, VERIFIED_XATTR).decode().split()
            if int(mtime_ns) == info.st_mtime_ns:
                return max(time.time() - float(when), 0.0)
        except (OSError, ValueError):  # no stamp (or no xattrs on this filesystem): not known good
            pass
        return math.inf

    def verify(self, chunk_id: str, pace: Pace | None = None) -> Verdict:
        """Re-read the whole copy and check its SHA-256: "good" (and its mtime says so), "missing",
        or "bad" (then it is quarantined).  No lock is held while reading."""
        path = self._path(chunk_id)
        info: os.stat_result | None = None
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                return self._found_bad(chunk_id, info, "not a regular file")
            digest = hashlib.sha256()
            with open(path, "rb", buffering=0) as file:
                opened = os.fstat(file.fileno())
                while piece := file.read(READ_PIECE):
                    digest.update(piece)
                    if pace is not None:
                        pace(len(piece))
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            if exc.errno != errno.EIO or info is None:
                raise _io_error(exc, "verify a chunk") from None
            return self._found_bad(chunk_id, info, f"unreadable ({exc.strerror})")
        if digest.hexdigest() != chunk_id:
            return self._found_bad(chunk_id, opened, "its bytes do not match their SHA-256")
        with self._usage.lock:  # the copy we read, still in place: mark it verified now
            try:
                if not _same_file(path.lstat(), opened):
                    return "good" if path.is_file() else "missing"  # replaced by a fresh commit
                _mark_verified(path)
            except FileNotFoundError:
                return "missing"
        return "good"

    def _found_bad(self, chunk_id: str, seen: os.stat_result, reason: str) -> Verdict:
        """Quarantine the copy verify() judged, unless it was replaced (or deleted) meanwhile."""
        if self.quarantine(chunk_id, reason, only=seen):
            return "bad"
        return "good" if self.has(chunk_id) else "missing"

    def quarantine(self, chunk_id: str, reason: str, *, only: os.stat_result | None = None) -> bool:
        """Move a copy out of the store into ``quarantine/`` (kept, never deleted) and queue its id
        as lost; ``only``: just if the file there is still that one.  False if there was none."""
        path = self._path(chunk_id)
        with self._usage.lock:
            try:
                info = path.lstat()
            except FileNotFoundError:
                return False
            if only is not None and not _same_file(info, only):
                return False
            target = self.quarantine_dir / f"{chunk_id}.{int(time.time())}"
            n = 0
            while target.exists() or target.is_symlink():
                n += 1
                target = self.quarantine_dir / f"{chunk_id}.{int(time.time())}.{n}"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _io_error(exc, "quarantine a chunk") from None
            self._usage.count -= 1
            self._usage.bytes -= _bytes(info)
            self._quarantined += 1
        with contextlib.suppress(OSError):
            fsync_dir(self.quarantine_dir)
            fsync_dir(path.parent)
        self.lost.add(chunk_id)
        log.warning("quarantined chunk %s (%s) as %s", chunk_id, reason, target.name)
        return True

    def group_flush(self, count: int) -> FilesystemFlush | None:
        """The filesystem flush for a group of ``count`` chunks about to be written, to hand to
        :meth:`commit_all`; None where a fsync each is better (fewer than FLUSH_FROM chunks) or
        syncfs cannot be trusted (common.atomic.FilesystemFlush).  Open it *before* the group's
        first byte is written: it then reports any writeback error of theirs.  The caller closes it."""
        if count < FLUSH_FROM:
            return None
        flush = FilesystemFlush(self.tmp)
        if not flush.works:
            flush.close()
            return None
        return flush

    def commit_all(
        self, writers: Sequence[ChunkWriter], flush: FilesystemFlush | None = None
    ) -> list[FileClusterError | None]:
        """Commit many written chunks as one group (PUT_CHUNKS): what ``commit`` does for each, with
        the disk's work shared.  With ``flush`` (:meth:`group_flush`, opened before the chunks were
        written), one flush of the filesystem makes every verified chunk durable, they are renamed
        into place, and a second flush makes the names durable.  Without it, or if the first flush
        fails, every writer's writeback is started before the first fsync waits, each chunk is
        fsynced, and each fan-out folder is fsynced once, after every rename into it (also if the
        second flush fails).  Returns, per writer, None (its chunk is durable in place) or the error
        that refused it; each succeeds or fails on its own, and nothing is installed that was not
        verified and made durable first."""
        errors: list[FileClusterError | None] = [None] * len(writers)
        disk = [w for w in writers if isinstance(w, _DiskWriter)]
        if len(disk) != len(writers):
            raise InternalError("commit_all takes this store's own writers")

        folders: dict[Path, list[int]] = {}

        def step(indexes: Iterable[int], do: Callable[[_DiskWriter], Path | None]) -> list[int]:
            for i in indexes:
                try:
                    folder = do(disk[i])
                    if folder is not None:
                        folders.setdefault(folder, []).append(i)
                except FileClusterError as exc:
                    errors[i] = exc
            return [i for i in range(len(disk)) if errors[i] is None]

        try:
            live = step(range(len(disk)), _DiskWriter.check)
            flushed = flush is not None and flush.try_flush()
            if flushed:
                live = step(live, _DiskWriter.close)
            else:
                live = step(live, _DiskWriter.start_sync)
                live = step(live, _DiskWriter.sync)
            step(live, lambda writer: writer.install(sync_folder=False))
            if flush is not None and flushed and flush.try_flush():
                return errors  # the renames are durable too
            for folder, members in folders.items():
                try:
                    fsync_dir(folder)
                except OSError as exc:
                    for i in members:
                        errors[i] = _io_error(exc, "store a chunk")
        finally:
            for writer in disk:
                writer.abort()
        return errors

    def _install(self, tmp: Path, final: Path, size: int, *, sync_folder: bool = True) -> None:
        """Rename a verified, fsynced temp file into place; count it once, whatever the race."""
        try:
            self._install_once(tmp, final, size)
        except FileNotFoundError:
            if final.parent.name not in self._folders or not tmp.exists():
                raise
            self._folders.discard(final.parent.name)  # removed behind our back: make it again
            self._install_once(tmp, final, size)
        if sync_folder:
            fsync_dir(final.parent)

    def _install_once(self, tmp: Path, final: Path, size: int) -> None:
        folder = final.parent.name
        if folder not in self._folders and not final.parent.is_dir():
            final.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            fsync_dir(self.root)  # the new folder itself must survive a crash
        self._folders.add(folder)  # known to exist from now on (the store never removes one)
        with self._usage.lock:
            existed = final.exists()
            _mark_verified(tmp)  # mtime = when this copy became known good (delete's older_than)
            os.replace(tmp, final)
            if not existed:
                self._usage.count += 1
                self._usage.bytes += size


def _mark_verified(path: Path) -> None:
    """The file is known good now: its mtime becomes now, and an extended attribute records that
    time and that mtime.  A file modified in place afterwards has another mtime, so its stamp no
    longer counts.  The mtime is set explicitly, so no stat is needed to learn it; a filesystem that
    keeps coarser times than nanoseconds stores another one, and the stamp then never counts (every
    copy is re-read when it must be vouched for, as without xattrs)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))
    with contextlib.suppress(OSError):  # no user xattrs: each copy is re-read when it must be vouched for
        os.setxattr(path, VERIFIED_XATTR, f"{now / 1e9:.3f} {now}".encode())


class _DiskWriter:
    def __init__(self, store: ChunkStore, chunk_id: str, size: int) -> None:
        self.store = store
        self.chunk_id = chunk_id
        self.size = size
        self.written = 0
        self.flushed = 0  # bytes whose writeback has been started (start_writeback)
        self.hash = hashlib.sha256()
        self.tmp_path = store.tmp / f"{chunk_id}.{_TEMP_PREFIX}{next(_temp_numbers)}"
        self.installed = False
        self.stager: Stager | None = None  # a big chunk's direct writes (common.direct_io)
        self._stage = _STAGES.take() if size >= DIRECT_FROM and store.direct else None
        try:
            # a bare descriptor: every piece goes straight to the kernel, and opening is one system
            # call (a file object adds a stat and an ioctl: a small chunk is a handful of calls in all)
            if self._stage is None:
                self.fd: int | None = os.open(self.tmp_path, _CREATE, PRIVATE_FILE)
            else:
                self.fd, direct = open_direct(self.tmp_path, _CREATE, PRIVATE_FILE)
                if direct:
                    self.stager = Stager(self.fd, self._stage, direct=True)
                else:  # this filesystem takes no O_DIRECT: through the page cache from now on
                    store.direct = False
                    self._give_back_stage()
        except OSError as exc:
            self._give_back_stage()
            raise _io_error(exc, "store a chunk") from None

    def _give_back_stage(self) -> None:
        if self.stager is not None:
            self.stager.release()
            self.stager = None
        stage, self._stage = self._stage, None
        if stage is not None:
            _STAGES.give_back(stage)

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)
        if self.written > self.size:
            raise CorruptData(f"chunk {self.chunk_id} is longer than the announced {self.size} bytes")
        self.hash.update(data)
        assert self.fd is not None
        try:
            if self.stager is not None:
                self.stager.write(data)
                if self.written == self.size:  # the last byte: to the disk, and the stage freed at once
                    self.stager.finish()
                    if not self.stager.direct:  # the filesystem refused a direct write: no more tries
                        self.store.direct = False
                    self._give_back_stage()
                return
            view = memoryview(data)
            while view:  # a write may take only part of it
                view = view[os.write(self.fd, view) :]
            if self.written - self.flushed >= WRITEBACK_STEP:
                start_writeback(self.fd, self.flushed, self.written - self.flushed)
                self.flushed = self.written
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None

    def commit(self) -> None:
        try:
            self.check()
            self.sync()
            self.install(sync_folder=True)
        finally:
            self.abort()

    # commit's three steps, which commit_all takes for many writers at once
    def check(self) -> None:
        """Refuse bytes that are not the chunk: too few, or not matching its SHA-256."""
        if self.written != self.size:
            raise CorruptData(f"chunk {self.chunk_id}: got {self.written} of {self.size} bytes")
        if self.hash.hexdigest() != self.chunk_id:
            raise CorruptData(f"chunk {self.chunk_id}: the bytes do not match their SHA-256")

    def start_sync(self) -> None:
        """Start the temp file's writeback without waiting (sync then has less to wait for)."""
        if self.fd is not None:
            start_writeback(self.fd, self.flushed, self.written - self.flushed)

    def close(self) -> None:
        """Close the temp file, whose bytes a filesystem flush made durable (commit_all)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def sync(self) -> None:
        """Make the temp file's bytes durable (fsync) and close it."""
        assert self.fd is not None
        try:
            os.fsync(self.fd)
            fd, self.fd = self.fd, None
            os.close(fd)
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None

    def install(self, *, sync_folder: bool) -> Path:
        """Rename the synced temp file into place; returns its folder (which commit_all fsyncs once
        for all the chunks it installed there when ``sync_folder`` is False)."""
        final = self.store._path(self.chunk_id)
        try:
            self.store._install(self.tmp_path, final, self.size, sync_folder=sync_folder)
        except OSError as exc:
            raise _io_error(exc, "store a chunk") from None
        self.installed = True  # the temp file is now the chunk: nothing left to remove
        return final.parent

    def abort(self) -> None:
        """Drop the temp file; never raises."""
        self._give_back_stage()
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.installed:
            return
        try:
            self.tmp_path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the temp file %s: %s", self.tmp_path, exc)

    def __enter__(self) -> _DiskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
