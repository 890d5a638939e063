"""The partial files of downloads: where they live, what they are named, who may use them, and
what in them can be kept.

A download writes into a *partial file* in a hidden folder of its own, ``.filecluster-partial/``
inside the folder the file goes to (0700, a real folder of the user's, never a symlink), so it
can never collide with a user's file and the sweep of stale partials never looks anywhere else.

Resume.  The partial's name is derived from what is downloaded and where: the first 128 bits of
``SHA-256(sha1 ":" size ":" file name)``.  A download that is interrupted (Ctrl-C, SIGTERM,
SIGKILL, no copy of a chunk reachable, a full disk) keeps its partial; the next download of the
same content (same SHA-1 and size) under the same name into the same folder opens it, checks
every chunk it holds against the chunk's SHA-256 (:func:`verified_chunks`: a few threads, 1 MiB
reads, memory flat) and fetches only the chunks that are missing or wrong.  A partial is never
at the final name: the file is linked into place only once its whole SHA-1 checks out.

Concurrency.  A download holds an exclusive ``flock`` on its partial from open to the end (the
link into place and the removal of the partial happen under it).  A second download of the same
file into the same folder does not wait: it finds the lock taken and writes a private partial of
its own (a random name, removed if that download fails), so neither can corrupt the other.  After
taking the lock a download checks that the name still leads to the very file it locked (not one
that was linked into place and unlinked meanwhile) with one link only; else it opens again.

Anything odd where a partial should be (a symlink, a folder, a FIFO, a file of another user's or
with another name linked to it) is neither followed nor touched: the download uses a private
partial.  Stale partials (untouched for :data:`STALE_PART_SECONDS`, 7 days, and not locked) are
removed by the next download into that folder; only regular files with the names partials get are
looked at.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import InvalidRequest
from common.hashing import READ_SIZE

PARTIAL_DIR = ".filecluster-partial"
STALE_PART_SECONDS = 7 * 24 * 3600  # a partial untouched this long is swept (its download is not resumed)
VERIFY_THREADS = 4
_UID = os.getuid()  # whose partials are ours: asked once, not with every file
# 32 hex digits now; 16 for the temp files of versions before resume (still swept)
_PART_NAME = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?\.part\Z")


@dataclass
class Partial:
    path: Path
    fd: int  # open read-write, with an exclusive flock held until close()
    existing: bool  # it held bytes of an earlier attempt: check them before fetching
    resumable: bool  # named for this file (kept when the download is interrupted), not a private one

    def close(self, *, keep: bool, tidy: bool = True) -> None:
        """Release the partial: removed first (still under the lock) unless ``keep``; then its
        hidden folder too if that is now empty, unless not ``tidy`` (many downloads into one
        folder tidy it once, at the end, instead of removing and making it again for each file)."""
        try:
            if not keep:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
        if tidy:
            remove_if_empty(self.path.parent)


def partial_key(sha1: str, size: int, name: str) -> str:
    """The name stem of the partial for ``name`` with this content: the same for every attempt."""
    return hashlib.sha256(f"{sha1}:{size}:{name}".encode()).hexdigest()[:32]


def partial_dir(folder: Path) -> Path:
    """The hidden folder for ``folder``'s partials: made 0700 if missing; it must be a real folder
    of ours (not a symlink someone planted)."""
    hidden = folder / PARTIAL_DIR
    for attempt in range(5):
        try:
            with contextlib.suppress(FileExistsError):
                hidden.mkdir(mode=0o700)
            info = os.lstat(hidden)
            break
        except FileNotFoundError as exc:  # another download into this folder removed it, empty
            if attempt == 4:
                raise InvalidRequest(f"cannot write in {folder}: {exc.strerror}") from None
        except OSError as exc:
            raise InvalidRequest(f"cannot write in {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != _UID:
        raise InvalidRequest(f"{hidden} is not a folder of yours; move it away and try again")
    if info.st_mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(hidden, 0o700)
    return hidden


_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ODD = (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EACCES, errno.EPERM, errno.ETXTBSY)


def open_partial(folder: Path, key: str, hidden: Path | None = None) -> Partial:
    """The partial for ``key`` in ``folder``'s hidden folder, created if missing, locked; a private
    one if another download holds it or something odd is in its place.  Its mode is the one the
    downloaded file will keep; while it is partial, the 0700 folder hides it.  ``hidden``: that
    folder as partial_dir() returned it a moment ago (many files into one folder check it once)."""
    for _ in range(3):  # another download may remove the emptied folder, or finish with the file
        hidden = hidden or partial_dir(folder)
        path = hidden / f"{key}.part"
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT, 0o644)
        except FileNotFoundError:
            hidden = None  # removed meanwhile: made again
            continue
        except OSError as exc:
            if exc.errno in _ODD:
                return _private(folder)
            remove_if_empty(hidden)
            raise InvalidRequest(f"cannot write in {folder}: {exc.strerror}") from None
        state, info = _take(fd, path)
        if state == "ours" and info is not None:
            if info.st_mtime < time.time() - 1:  # an earlier attempt's: fresh now, so a concurrent
                with contextlib.suppress(OSError):  # sweep leaves it be (a new one is fresh already)
                    os.utime(fd)
            return Partial(path, fd, info.st_size > 0, resumable=True)
        os.close(fd)
        if state != "gone":
            return _private(folder)
        hidden = None
    return _private(folder)


def _take(fd: int, path: Path) -> tuple[str, os.stat_result | None]:
    """Lock the open partial: "ours", "busy" (another download holds it), "gone" (it was linked
    into place and removed meanwhile: open again) or "odd" (not a plain file of ours); and what
    it is once locked (fstat)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy", None
    except OSError:  # no locks on this file system: never share a partial then
        return "odd", None
    info = os.fstat(fd)
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return "gone", info
    if (named.st_dev, named.st_ino) != (info.st_dev, info.st_ino):
        return "gone", info
    if not stat.S_ISREG(info.st_mode) or info.st_uid != _UID or info.st_nlink != 1:
        return "odd", info
    return "ours", info


def _private(folder: Path) -> Partial:
    """A partial of this download's own (created exclusively, random name, removed if it fails)."""
    for _ in range(3):
        hidden = partial_dir(folder)
        path = hidden / f"{os.urandom(16).hex()}.part"
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            continue
        except OSError as exc:
            remove_if_empty(hidden)
            raise InvalidRequest(f"cannot write in {folder}: {exc.strerror}") from None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else has it
        return Partial(path, fd, existing=False, resumable=False)
    raise InvalidRequest(f"cannot write in {folder}: its {PARTIAL_DIR} folder keeps disappearing")


def clean_stale_parts(hidden: Path) -> None:
    """Remove the partials of downloads given up long ago (untouched for STALE_PART_SECONDS and
    not locked by a download).  Only our own hidden folder is looked at, and in it only regular
    files with our partials' names."""
    cutoff = time.time() - STALE_PART_SECONDS
    try:
        if hidden.is_symlink() or not hidden.is_dir():
            return
    except OSError:  # a folder that cannot be looked in: writing into it says what is wrong
        return
    with contextlib.suppress(OSError):
        for part in hidden.iterdir():
            with contextlib.suppress(OSError):
                info = part.lstat()
                if _PART_NAME.match(part.name) and stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    _remove_unless_locked(part)
    remove_if_empty(hidden)


def _remove_unless_locked(part: Path) -> None:
    fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a download is using it
        part.unlink()
    finally:
        os.close(fd)


def remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another download is using it, or left a partial
        folder.rmdir()


def verified_chunks(
    fd: int,
    chunks: list[dict[str, Any]],
    offsets: list[int],
    progress: Callable[[str, int, int], None] | None = None,
) -> set[int]:
    """The indices of the chunks whose bytes in ``fd``, at their offsets, hash to their ids: what an
    earlier attempt got right.  A few threads hash at once, each reading 1 MiB at a time, so memory
    stays flat whatever the size; reports ``("checking", bytes checked, total)``."""
    sizes = [int(chunk["size"]) for chunk in chunks]
    total = sum(sizes)

    def good(index: int) -> bool:
        digest = hashlib.sha256()
        position, end = offsets[index], offsets[index] + sizes[index]
        try:
            while position < end:
                block = os.pread(fd, min(READ_SIZE, end - position), position)
                if not block:
                    return False
                digest.update(block)
                position += len(block)
        except OSError:  # unreadable: fetched again (a disk that fails for good fails the writes too)
            return False
        return bool(digest.hexdigest() == chunks[index]["id"])

    found: set[int] = set()
    checked = 0
    if progress:
        progress("checking", 0, total)
    window = 2 * VERIFY_THREADS  # chunks in flight at once: a Ctrl-C leaves at most these to finish
    pool = ThreadPoolExecutor(VERIFY_THREADS)
    try:
        pending: deque[tuple[int, Future[bool]]] = deque()
        upcoming = iter(range(len(chunks)))
        for index in itertools.islice(upcoming, window):
            pending.append((index, pool.submit(good, index)))
        while pending:
            index, future = pending.popleft()
            if future.result():
                found.add(index)
            checked += sizes[index]
            if progress:
                progress("checking", checked, total)
            for following in itertools.islice(upcoming, 1):
                pending.append((following, pool.submit(good, following)))
    finally:  # Ctrl-C or SIGTERM: the chunks not started yet are not checked
        pool.shutdown(wait=True, cancel_futures=True)
    return found
