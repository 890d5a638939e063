"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, cast


def fsync_dir(path: Path) -> None:
    """Make ``path``'s entries durable.  A folder one may write in but not read (mode 0311) cannot
    be opened to fsync: the whole system's flush (sync, which waits on Linux) then covers them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        os.sync()
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.urandom(16).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Make sure ``path`` is a folder only its owner can enter (0700, whatever the umask).

    Missing folders on the way are created 0700 too; an existing ``path`` with looser permissions
    is tightened (a folder made by an older version); existing parents are left alone."""
    missing = []
    at = Path(path)
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)


def tighten(path: Path, mode: int) -> None:
    """Take away any permission ``path`` has beyond ``mode`` (no-op when it has none more)."""
    current = os.stat(path).st_mode & 0o777
    if current & ~mode:
        os.chmod(path, current & mode)


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for :func:`open` that creates files 0600, whatever the umask."""
    return os.open(path, flags, PRIVATE_FILE)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], call)


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE: Final = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` of ``fd`` to disk, without
    waiting (Linux sync_file_range with SYNC_FILE_RANGE_WRITE).  This is no durability promise, only
    a head start: the fsync that makes a file durable then has little left to wait for, and the disk
    works while the rest of the file is still arriving.  Elsewhere, or on any failure, it does nothing."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _kernel_reports_syncfs_errors() -> bool:
    """Linux 5.8 and later: syncfs(2) reports a writeback error that happened since its file
    descriptor was opened (before that, it said nothing of failed writes)."""
    if os.uname().sysname != "Linux":
        return False
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def _syncfs() -> Callable[[int], int] | None:
    if not _kernel_reports_syncfs_errors():
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int,)
    call.restype = ctypes.c_int
    return cast(Callable[[int], int], call)


_SYNCFS = _syncfs()


class FilesystemFlush:
    """Many files made durable with one call: syncfs(2) on the filesystem of ``folder``.

    Open it *before* the files it is to cover are written: syncfs reports any writeback error on
    that filesystem since its descriptor was opened, so an error while our bytes were written is
    never missed.  It covers only files on the same filesystem (:meth:`covers`).  Where syncfs
    cannot be trusted to report errors (not Linux, or Linux before 5.8), or the folder cannot be
    opened, :attr:`works` is False and callers fsync file by file, as always."""

    def __init__(self, folder: Path) -> None:
        self._fd: int | None = None
        self._dev = -1
        if _SYNCFS is None:
            return
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return
        self._fd, self._dev = fd, os.fstat(fd).st_dev

    @property
    def works(self) -> bool:
        return self._fd is not None

    def covers(self, folder: Path) -> bool:
        """True if files in ``folder`` are on the filesystem this flush makes durable."""
        try:
            return self.works and os.stat(folder).st_dev == self._dev
        except OSError:
            return False

    def flush(self) -> None:
        """Everything written to the filesystem (data, and names linked or renamed) durable now;
        OSError if the flush or any writeback since this was opened failed."""
        if self._fd is None or _SYNCFS is None:
            raise OSError(0, "no filesystem flush here")
        if _SYNCFS(self._fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def try_flush(self) -> bool:
        """:meth:`flush`, saying whether it made everything durable: False if there is no flush
        here or it failed (the caller then fsyncs file by file, which says what failed)."""
        try:
            self.flush()
        except OSError:
            return False
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FilesystemFlush:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
