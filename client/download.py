"""Downloading one file: locate it, fetch chunks in parallel, verify, then show it.

Chunks are fetched several at a time straight from the storage servers and
written at their offsets into a temp file in a hidden folder of its own,
``.filecluster-partial/`` inside the destination folder (0700; the file is
created exclusively), so a temp file can never collide with a user's file,
and the sweep of stale temp files never looks anywhere else.
Each chunk's SHA-256 is checked as it arrives; a server that is down, lacks
the chunk or sends bad bytes is skipped for the chunk's next copy.  The
whole file's SHA-1 is computed in order, as chunks complete, and checked at
the end; only then is the file fsynced and linked into place under its
name, never over an existing file (a different file of that name is kept,
and the download gets a name like ``report (1).pdf``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.pool import ConnectionPool
from common.atomic import fsync_dir
from common.config import PARALLEL_TRANSFERS
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    ProtocolError,
    Unavailable,
)
from common.hashing import READ_SIZE
from common.messages import MsgType
from common.names import MAX_NAME_BYTES, check_file_name

Progress = Callable[[str, int, int], None]
STALE_PART_SECONDS = 3600
PARTIAL_DIR = ".filecluster-partial"
_PART_NAME = re.compile(r"[0-9a-f]{16}\.part\Z")


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    size: int
    sha1: str
    fetched: bool  # False when an identical file was already there


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _candidates(folder: Path, name: str) -> Iterator[Path]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``...; the stem shortened to fit 255 bytes."""
    yield folder / name
    stem, dot, suffix = name.partition(".") if not name.startswith(".") else (name, "", "")
    if len(f"{dot}{suffix}".encode()) > 200:  # a name that is nearly all extension
        stem, dot, suffix = name, "", ""
    n = 1
    while True:
        tail = f" ({n}){dot}{suffix}"
        room = MAX_NAME_BYTES - len(tail.encode())
        short = stem.encode()[:room].decode("utf-8", "ignore")
        yield folder / f"{short}{tail}"
        n += 1


def _partial_dir(out_dir: Path) -> Path:
    """The hidden folder for ``out_dir``'s temp files: made 0700 if missing; it must be a real
    folder of ours (not a symlink someone planted)."""
    folder = out_dir / PARTIAL_DIR
    try:
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        info = os.lstat(folder)
    except OSError as exc:
        raise InvalidRequest(f"cannot write in {out_dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise InvalidRequest(f"{folder} is not a folder of yours; move it away and try again")
    if info.st_mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
    return folder


def _open_part(out_dir: Path) -> tuple[Path, int]:
    """A new temp file (created exclusively, never through a symlink) and its descriptor.  Its mode
    is the one the downloaded file will keep; while it is partial, the 0700 folder hides it."""
    for _ in range(3):  # another download may remove the emptied folder between mkdir and open
        tmp = _partial_dir(out_dir) / f"{uuid.uuid4().hex[:16]}.part"
        try:
            return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _remove_if_empty(tmp.parent)
            raise InvalidRequest(f"cannot write in {out_dir}: {exc.strerror}") from None
    raise InvalidRequest(f"cannot write in {out_dir}: its {PARTIAL_DIR} folder keeps disappearing")


def _clean_stale_parts(folder: Path) -> None:
    """Remove temp files of downloads that were killed (untouched for an hour).  Only our own
    hidden folder is looked at, and in it only regular files with our temp names."""
    cutoff = time.time() - STALE_PART_SECONDS
    if folder.is_symlink() or not folder.is_dir():
        return
    with contextlib.suppress(OSError):
        for part in folder.iterdir():
            with contextlib.suppress(OSError):
                info = part.lstat()
                if _PART_NAME.match(part.name) and stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    part.unlink()
    _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: another download is using it, or left a part
        folder.rmdir()


def download(
    info: dict[str, Any],
    out_dir: Path,
    progress: Progress | None = None,
    relocate: Callable[[], dict[str, Any]] | None = None,
) -> DownloadResult:
    """Fetch the file described by a LOCATE reply into ``out_dir``.

    ``relocate`` repeats the LOCATE, for fresh tickets if a long download outlives them."""
    name = check_file_name(info["name"])
    size, sha1 = int(info["size"]), str(info["sha1"])
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot create folder {out_dir}: {exc.strerror}") from None
    if not out_dir.is_dir():
        raise InvalidRequest(f"{out_dir} is not a folder")
    _clean_stale_parts(out_dir / PARTIAL_DIR)
    try:
        for candidate in _candidates(out_dir, name):
            if not candidate.exists() and not candidate.is_symlink():
                break
            if candidate.is_file() and candidate.stat().st_size == size and file_sha1(candidate) == sha1:
                return DownloadResult(name, candidate, size, sha1, fetched=False)
    except OSError as exc:
        raise InvalidRequest(f"cannot look in {out_dir}: {exc.strerror or exc}") from None
    tmp, fd = _open_part(out_dir)
    try:
        try:
            os.ftruncate(fd, size)
            _fetch_all(fd, Tickets(info, relocate), info["chunks"], size, sha1, progress)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = _link_into_place(tmp, out_dir, name)
    finally:
        tmp.unlink(missing_ok=True)
        _remove_if_empty(tmp.parent)
    fsync_dir(out_dir)
    return DownloadResult(name, final, size, sha1, fetched=True)


def _link_into_place(tmp: Path, out_dir: Path, name: str) -> Path:
    """Give the verified temp file its name without ever replacing an existing file."""
    for candidate in _candidates(out_dir, name):
        try:
            os.link(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise InvalidRequest(f"cannot write {candidate}: {exc.strerror}") from None
            if candidate.exists():  # no hard links here: check, then rename
                continue
            os.replace(tmp, candidate)
            return candidate
    raise AssertionError("unreachable")


def _fetch_all(
    fd: int,
    tickets: Tickets,
    chunks: list[dict[str, Any]],
    size: int,
    sha1: str,
    progress: Progress | None,
) -> None:
    offsets = []
    offset = 0
    for chunk in chunks:
        offsets.append(offset)
        offset += int(chunk["size"])
    if offset != size:
        raise ProtocolError("the proxy's chunk list does not add up to the file size")
    done = 0
    lock = threading.Lock()
    if progress:
        progress("receiving", 0, size)

    def on_bytes(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress:
                progress("receiving", done, size)

    whole = hashlib.sha1()
    with ConnectionPool() as pool, ThreadPoolExecutor(PARALLEL_TRANSFERS) as workers:
        futures: list[Future[None]] = []
        try:
            for i, chunk in enumerate(chunks):
                futures.append(
                    workers.submit(_fetch_chunk, pool, fd, chunk, i, tickets, offsets[i], on_bytes)
                )
            for i, future in enumerate(futures):
                future.result()
                _hash_region(fd, offsets[i], int(chunks[i]["size"]), whole)
        except BaseException:  # a failed chunk, Ctrl-C or SIGTERM: break what is in flight
            for future in futures:
                future.cancel()
            pool.abort()
            raise
    if whole.hexdigest() != sha1:
        raise CorruptData("the downloaded file does not match its SHA-1; nothing was saved")


def _hash_region(fd: int, offset: int, length: int, digest: Any) -> None:
    end = offset + length
    while offset < end:
        block = os.pread(fd, min(READ_SIZE, end - offset), offset)
        if not block:
            raise CorruptData("the temp file is shorter than expected")
        digest.update(block)
        offset += len(block)


class Tickets:
    """The GET tickets of a LOCATE reply; renewed by locating the file again once they expire."""

    def __init__(self, info: dict[str, Any], relocate: Callable[[], dict[str, Any]] | None) -> None:
        self._info = info
        self._relocate = relocate
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
        """LOCATE again (once for all threads); False if there is no way to."""
        if self._relocate is None:
            return False
        with self._lock:
            if int((self._info.get("ticket") or {}).get("exp", 0)) != seen_exp:
                return True  # another thread renewed them already
            fresh = self._relocate()
            if [c["id"] for c in fresh["chunks"]] != [c["id"] for c in self._info["chunks"]]:
                raise Conflict("the file changed during the download; nothing was saved, try again")
            self._info = fresh
        return True


def _fetch_chunk(
    pool: ConnectionPool,
    fd: int,
    chunk: dict[str, Any],
    index: int,
    tickets: Tickets,
    offset: int,
    on_bytes: Callable[[int], None],
) -> None:
    chunk_id, size = str(chunk["id"]), int(chunk["size"])
    errors: list[str] = []
    for attempt in range(2):
        exp, sources = tickets.sources(index)
        expired = False
        for server, ticket in sources:
            try:
                _fetch_from(pool, server, ticket, fd, chunk_id, size, offset, on_bytes)
                return
            except Forbidden as exc:  # the tickets expired (a long download): locate again, once
                expired = True
                errors.append(f"server {server.get('id', '?')}: {exc}")
            except (FileClusterError, OSError) as exc:
                errors.append(f"server {server.get('id', '?')}: {exc}")
        if not (expired and attempt == 0 and tickets.renew(exp)):
            break
    detail = "; ".join(errors) or "no server holds it"
    raise Unavailable(f"chunk {chunk_id[:12]} cannot be read from any copy ({detail})")


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
    conn = pool.get(server)
    conn.send(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": ticket})
    reply = conn.expect_reply(MsgType.GET_CHUNK)
    if reply.header["id"] != chunk_id or reply.payload_len != size:
        conn.close()
        raise ProtocolError(f"asked for chunk {chunk_id[:12]} ({size} bytes), got something else")
    digest = hashlib.sha256()
    position = offset
    for piece in conn.payload():
        digest.update(piece)
        os.pwrite(fd, piece, position)
        position += len(piece)
        on_bytes(len(piece))
    if digest.hexdigest() != chunk_id:
        on_bytes(-size)
        raise CorruptData(f"chunk {chunk_id[:12]} from server {server.get('id', '?')} is corrupt")
