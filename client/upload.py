"""Uploading one file: hash it once, ask the proxy what is missing, stream that, commit.

The file is read once to build its manifest (SHA-1 of the whole, SHA-256 of
each chunk).  The proxy answers which chunks it lacks and which servers take
each; the client streams just those, several at a time, each straight from
the file to the first server with ``sendfile`` (that server forwards it to
the replicas), then commits.  If a storage server fails, the client aborts,
naming the servers it could not reach (the proxy checks them and marks the
dead ones down) and tries once more with a fresh placement.  Nothing is in
the catalog until the commit succeeds.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from client.pool import ConnectionPool
from client.proxy_link import ProxyLink
from common.config import PARALLEL_TRANSFERS
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    InvalidRequest,
    NotFound,
    ReplicationFailed,
    SourceShrank,
    StorageServerFailed,
    Unavailable,
)
from common.hashing import Manifest, manifest_of
from common.limits import MAX_CHUNKS_PER_FILE
from common.messages import MsgType
from common.names import check_file_name

Progress = Callable[[str, int, int], None]  # (phase, bytes done, bytes total)
ATTEMPTS = 2


@dataclass(frozen=True)
class UploadResult:
    name: str
    size: int
    sha1: str
    sent: int  # chunk bytes the client actually sent to storage servers


def open_for_upload(path: Path) -> tuple[Any, str]:
    """Open a regular file for reading, with a clear error for every way that can fail."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidRequest(f"{path} is a directory; upload takes files")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidRequest(f"{path} is not a regular file")
    name = check_file_name(path.name, new=True)
    try:
        return open(path, "rb"), name
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None


def upload(proxy: ProxyLink, path: Path, progress: Progress | None = None) -> UploadResult:
    path = Path(path)
    file, name = open_for_upload(path)
    with file:
        chunk_size = int(proxy.call(MsgType.HELLO)["chunk_size"])
        size = os.fstat(file.fileno()).st_size
        if size > chunk_size * MAX_CHUNKS_PER_FILE:
            raise InvalidRequest(
                f"{path} is too large for this cluster: at most {chunk_size * MAX_CHUNKS_PER_FILE} bytes"
            )
        hashed = 0

        def on_hash(n: int) -> None:
            nonlocal hashed
            hashed += n
            if progress:
                progress("hashing", hashed, size)

        try:
            manifest = manifest_of(file, chunk_size, on_hash)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
        if os.fstat(file.fileno()).st_size != manifest.size:
            raise Conflict(f"{path} changed while it was being read; try again")
        sent = _Sent()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _attempt(proxy, file, path, name, manifest, progress, sent)
                return UploadResult(name, manifest.size, manifest.sha1, sent.bytes)
            except StorageServerFailed:
                if attempt == ATTEMPTS:
                    raise
    raise AssertionError("unreachable")


class _Sent:
    """Chunk bytes sent to storage servers, over every attempt, counted as each chunk is acknowledged."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> int:
        with self.lock:
            self.bytes += n
            return self.bytes


def _attempt(
    proxy: ProxyLink,
    file: BinaryIO,
    path: Path,
    name: str,
    manifest: Manifest,
    progress: Progress | None,
    sent: _Sent,
) -> None:
    begin = proxy.call(
        MsgType.UPLOAD_BEGIN,
        {
            "name": name,
            "size": manifest.size,
            "sha1": manifest.sha1,
            "chunk_size": manifest.chunk_size,
            "chunks": [[c.id, c.size] for c in manifest.chunks],
        },
        session=True,
    )
    upload_id = begin["upload_id"]
    try:
        _send_missing(file, manifest, begin["missing"], progress, sent)
        proxy.call(MsgType.UPLOAD_COMMIT, {"upload_id": upload_id}, session=True)
    except BaseException as exc:
        suspects = exc.suspects if isinstance(exc, StorageServerFailed) else []
        with contextlib.suppress(FileClusterError):
            proxy.call(MsgType.UPLOAD_ABORT, {"upload_id": upload_id, "unreachable": suspects}, session=True)
        if isinstance(exc, (CorruptData, SourceShrank)):  # bytes differ, or the file shrank
            raise Conflict(
                f"{path} changed while it was being uploaded; nothing was stored, try again"
            ) from None
        if isinstance(exc, OSError):
            raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
        raise


def _send_missing(
    file: BinaryIO, manifest: Manifest, missing: list[dict[str, Any]], progress: Progress | None, sent: _Sent
) -> None:
    """Send the missing chunks, several at a time; at the first failure, start no more."""
    offsets: dict[str, int] = {}
    for chunk in manifest.chunks:
        offsets.setdefault(chunk.id, chunk.offset)
    total = sum(int(m["size"]) for m in missing)
    done = _Sent()
    if progress:
        progress("sending", 0, total)

    stop = threading.Event()

    def send_one(pool: ConnectionPool, item: dict[str, Any]) -> None:
        if stop.is_set():
            return
        try:
            _put_chunk(pool, file, item, offsets[item["id"]])
        except BaseException:
            stop.set()
            raise
        sent.add(int(item["size"]))
        now = done.add(int(item["size"]))
        if progress:
            progress("sending", now, total)

    with ConnectionPool() as pool, ThreadPoolExecutor(PARALLEL_TRANSFERS) as workers:
        futures: list[Future[None]] = []
        try:
            for item in missing:
                futures.append(workers.submit(send_one, pool, item))
            errors = [f.exception() for f in futures]
        except BaseException:  # Ctrl-C or SIGTERM: start nothing more, break what is in flight
            stop.set()
            for future in futures:
                future.cancel()
            pool.abort()
            raise
    failures = [e for e in errors if e is not None]
    if failures:
        trouble = [e for e in failures if isinstance(e, StorageServerFailed)]
        if trouble and len(trouble) == len(failures):
            suspects = sorted({s for e in trouble for s in e.suspects})
            raise StorageServerFailed(trouble[0].message, suspects)
        raise failures[0]


def _put_chunk(pool: ConnectionPool, file: BinaryIO, item: dict[str, Any], offset: int) -> None:
    servers = item["servers"]
    head, forward = servers[0], servers[1:]
    size = int(item["size"])
    try:
        conn = pool.get(head)
        conn.send_head(MsgType.PUT_CHUNK, {"id": item["id"], "size": size, "forward": forward}, size)
        conn.send_file(file, offset, size)
        conn.read_reply(MsgType.PUT_CHUNK)
    except ReplicationFailed as exc:  # a replica behind the head failed: the proxy checks which
        raise StorageServerFailed(exc.message, [s["id"] for s in servers]) from None
    except Unavailable as exc:  # the head itself failed
        raise StorageServerFailed(exc.message, [head["id"]]) from None
