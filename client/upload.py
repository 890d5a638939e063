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
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from client.pool import ConnectionPool
from client.proxy_link import ProxyLink
from common.cluster_auth import aggregate
from common.config import PARALLEL_TRANSFERS
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RemoteProtocolError,
    ReplicationFailed,
    SourceShrank,
    StorageServerFailed,
    Unavailable,
)
from common.hashing import Manifest, manifest_of, proof_digest
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
        proofs = prove(file, manifest, begin["challenge"])
        missing = proxy.call(MsgType.UPLOAD_PROVE, {"upload_id": upload_id, "proofs": proofs}, session=True)[
            "missing"
        ]
        renewal = _Renewal(lambda: proxy.call(MsgType.UPLOAD_TICKETS, {"upload_id": upload_id}, session=True))
        receipts = _send_missing(file, manifest, missing, progress, sent, renewal)
        proxy.call(MsgType.UPLOAD_COMMIT, {"upload_id": upload_id, "receipts": receipts}, session=True)
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


def prove(file: BinaryIO, manifest: Manifest, challenge: dict[str, Any]) -> list[str]:
    """Answer the proxy's proof-of-ownership challenge: one digest per distinct chunk, in order.

    Reads only the challenged ranges (4 KiB a chunk), at explicit offsets (proxy.ownership)."""
    offsets: dict[str, int] = {}
    for chunk in manifest.chunks:
        offsets.setdefault(chunk.id, chunk.offset)
    nonce, ranges = challenge.get("nonce"), challenge.get("ranges")
    if not isinstance(nonce, str) or not isinstance(ranges, list) or len(ranges) != len(offsets):
        raise RemoteProtocolError("the proxy's proof-of-ownership challenge does not fit the file")
    proofs = []
    for chunk_id, item in zip(offsets, ranges, strict=True):
        offset, length = int(item[0]), int(item[1])
        data = os.pread(file.fileno(), length, offsets[chunk_id] + offset)
        if len(data) != length:
            raise SourceShrank(f"the file shrank while it was being uploaded ({chunk_id[:12]})")
        proofs.append(proof_digest(nonce, chunk_id, data))
    return proofs


class _Renewal:
    """Fresh PUT tickets from the proxy when one expires mid-upload (one request for all threads)."""

    def __init__(self, fetch: Callable[[], dict[str, Any]]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._tickets: dict[str, dict[str, Any]] = {}

    def fresh(self, item: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            current = self._tickets.get(item["id"])
            if current is None or current["ticket"]["exp"] <= item["ticket"]["exp"]:
                self._tickets = {m["id"]: m for m in self._fetch()["missing"]}
            renewed = self._tickets.get(item["id"])
        if renewed is None:
            raise Conflict("the proxy no longer expects this chunk; upload again")
        return renewed


def _send_missing(
    file: BinaryIO,
    manifest: Manifest,
    missing: list[dict[str, Any]],
    progress: Progress | None,
    sent: _Sent,
    renewal: _Renewal,
) -> list[list[Any]]:
    """Send the missing chunks, several at a time; at the first failure, start no more.

    Returns, per storage server, the aggregate of the receipts it gave for them (for the commit)."""
    offsets: dict[str, int] = {}
    for chunk in manifest.chunks:
        offsets.setdefault(chunk.id, chunk.offset)
    total = sum(int(m["size"]) for m in missing)
    done = _Sent()
    if progress:
        progress("sending", 0, total)

    stop = threading.Event()
    receipts: defaultdict[int, list[str]] = defaultdict(list)
    receipts_lock = threading.Lock()

    def send_one(pool: ConnectionPool, item: dict[str, Any]) -> None:
        if stop.is_set():
            return
        try:
            try:
                got = _put_chunk(pool, file, item, offsets[item["id"]])
            except Forbidden:  # the ticket expired (a slow upload): once more with a fresh one
                got = _put_chunk(pool, file, renewal.fresh(item), offsets[item["id"]])
            with receipts_lock:
                for server_id, receipt in got:
                    receipts[server_id].append(receipt)
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
    return [[server_id, aggregate(macs)] for server_id, macs in sorted(receipts.items())]


def _put_chunk(pool: ConnectionPool, file: BinaryIO, item: dict[str, Any], offset: int) -> list[Any]:
    """PUT one chunk to the head of its chain; returns the receipts of every server that stored it."""
    servers = item["servers"]
    head = servers[0]  # it forwards to the rest of the chain, which the ticket names
    size = int(item["size"])
    try:
        conn = pool.get(head)
        conn.send_head(MsgType.PUT_CHUNK, {"id": item["id"], "size": size, "ticket": item["ticket"]}, size)
        conn.send_file(file, offset, size)
        reply = conn.read_reply(MsgType.PUT_CHUNK)
    except ReplicationFailed as exc:  # a replica behind the head failed: the proxy checks which
        raise StorageServerFailed(exc.message, [s["id"] for s in servers]) from None
    except Unavailable as exc:  # the head itself failed
        raise StorageServerFailed(exc.message, [head["id"]]) from None
    receipts = reply.get("receipts")
    if not isinstance(receipts, list) or not all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[1], str) for r in receipts
    ):
        raise RemoteProtocolError(f"storage server {head['id']} stored a chunk but gave no receipts")
    return receipts
