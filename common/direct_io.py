"""Writing big files around the page cache (O_DIRECT), where the filesystem takes it.

Written through the page cache, every 4 KiB of a new file is a page the kernel allocates, fills,
marks dirty, writes back and reclaims later.  On the machine these figures come from (bench/README.md)
that costs about 1.2 s of kernel CPU per GiB, and an upload writes every byte twice (2 copies), on
2 cores that also hash and copy it.  With O_DIRECT the same GiB goes from our buffer to the disk with
about 0.05 s of CPU, and is on the device when the write returns (a fsync then only has the file's
metadata and the device's cache to flush).

O_DIRECT wants the buffer, the file offset and the length aligned (ALIGN).  A :class:`Stager` copies
the pieces it is given into a page-aligned stage (STAGE bytes, from a bounded :class:`StagePool`)
and writes each stage when it is full; :meth:`Stager.finish` writes the last one padded with zeros
to ALIGN and truncates the file back to its length.  Nothing here changes what is durable when: the
callers fsync exactly as before.

Where the filesystem refuses O_DIRECT (tmpfs before Linux 6.6, some network filesystems), the file is
opened without it (:func:`open_direct` says which it got); a write that is refused anyway (EINVAL)
turns O_DIRECT off for that file and is made again through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from typing import Final

ALIGN: Final = 4096  # offsets, lengths and buffers of direct writes are multiples of this
STAGE: Final = 1024 * 1024  # bytes staged between two direct writes
_DIRECT: Final = getattr(os, "O_DIRECT", 0)  # 0 where the platform has none: never direct


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class StagePool:
    """At most ``limit`` stages (page-aligned buffers of STAGE bytes) out at once, kept for reuse: a
    fresh anonymous page costs a fault the first time it is touched.  ``take`` gives None when all
    are out (the caller then writes through the page cache), so memory stays at ``limit`` stages."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._out = 0
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap | None:
        with self._lock:
            if self._free:
                self._out += 1
                return self._free.pop()
            if self._out >= self._limit:
                return None
            self._out += 1
        return mmap.mmap(-1, STAGE)

    def give_back(self, stage: mmap.mmap) -> None:
        with self._lock:
            self._out -= 1
            self._free.append(stage)


def open_direct(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> tuple[int, bool]:
    """``os.open`` with O_DIRECT added; (the descriptor, whether it is direct).  A filesystem that
    refuses O_DIRECT (EINVAL) gets the file opened without it."""
    if _DIRECT:
        try:
            return os.open(path, flags | _DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


def _buffered(fd: int) -> None:
    """Turn O_DIRECT off for ``fd`` (Linux allows it on an open file)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)


class Stager:
    """Writes the bytes given to :meth:`write` one after another into ``fd`` from its start, a stage
    at a time; :meth:`finish` writes what is left.  ``direct``: ``fd`` was opened with O_DIRECT (else
    the same writes simply go through the page cache).  The stage is the caller's: it gives it back
    to its pool after :meth:`finish` or on failure."""

    def __init__(self, fd: int, stage: mmap.mmap, *, direct: bool) -> None:
        self.fd = fd
        self.direct = direct
        self._view = memoryview(stage)
        self._filled = 0
        self._offset = 0  # where the stage's first byte goes

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), STAGE - self._filled)
            self._view[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == STAGE:
                self._flush(STAGE)

    def finish(self) -> None:
        """Write the last, partial stage (padded with zeros to ALIGN, the file then truncated back to
        its length).  Releases the view on the stage: the caller may give the stage back."""
        try:
            filled = self._filled
            if filled:
                length = self._offset + filled
                padded = _round_up(filled) if self.direct else filled
                self._view[filled:padded] = bytes(padded - filled)
                self._flush(padded)
                if padded != filled:
                    os.ftruncate(self.fd, length)
        finally:
            self._view.release()

    def release(self) -> None:
        """Let go of the stage without writing (after a failure)."""
        self._view.release()

    def _flush(self, count: int) -> None:
        part = self._view[:count]
        done = 0
        while done < count:
            try:
                done += os.pwrite(self.fd, part[done:], self._offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                _buffered(self.fd)  # the filesystem took O_DIRECT at open, not for this write
                self.direct = False
        self._offset += count
        self._filled = 0


def aligned_buffer(size: int) -> mmap.mmap:
    """A buffer of ``size`` bytes that starts on a page (so a direct write can take it as it is)."""
    return mmap.mmap(-1, max(size, 1))


def reopen_direct(fd: int, access: int = os.O_WRONLY) -> int | None:
    """A second descriptor on the file open as ``fd``, for writing (or, with ``access``
    ``os.O_RDONLY``, reading) around the page cache (through /proc/self/fd, so it is the same file
    whatever its name is now); None where that cannot be had."""
    if not _DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", access | _DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def write_direct(fd: int, data: memoryview, offset: int) -> int:
    """Write the longest part of ``data`` that direct I/O can take (``data`` starting on a page,
    ``offset`` a multiple of ALIGN; the length rounded down to ALIGN) at ``offset`` with ``fd``, a
    descriptor opened with O_DIRECT; how many bytes were written (the caller writes the rest through
    the page cache).  Raises OSError (EINVAL where the filesystem refuses the write)."""
    if offset % ALIGN:
        return 0
    count = len(data) - len(data) % ALIGN
    done = 0
    while done < count:
        n = os.pwrite(fd, data[done:count], offset + done)
        if n % ALIGN:  # a short write that broke the alignment: the rest through the page cache
            return done + n
        done += n
    return done


def read_direct(fd: int, offset: int, count: int, stage: mmap.mmap) -> Iterator[memoryview]:
    """The ``count`` bytes of the file at ``offset``, read with ``fd`` (opened with O_DIRECT) into
    ``stage`` (STAGE bytes, page-aligned) a stage at a time: each view is valid until the next is
    asked for.  Fewer bytes in all if the file ends first.  Raises OSError (EINVAL where the
    filesystem refuses a direct read: nothing has been yielded then)."""
    view = memoryview(stage)
    try:
        end = offset + count
        pos = offset - offset % ALIGN  # direct reads start on a block
        while pos < end:
            n = os.preadv(fd, [view[: min(STAGE, _round_up(end - pos))]], pos)
            if n <= 0:
                return
            lo, hi = max(offset - pos, 0), min(n, end - pos)
            if hi > lo:
                yield view[lo:hi]
            pos += n
            if n % ALIGN:  # the file's end
                return
    finally:
        view.release()
