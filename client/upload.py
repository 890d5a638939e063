"""Uploading one file: hash it once, ask the proxy what is missing, stream that, commit.

The file is read once to build its manifest (SHA-1 of the whole, SHA-256 of
each chunk).  The proxy answers which chunks it lacks and which servers take
each; the client streams just those, several at a time, each straight from
the file to the first server with ``sendfile`` (that server forwards it to
the replicas), then commits.  Nothing is in the catalog until the commit
succeeds.

Routing around trouble: when a chunk's chain fails (its head cannot be
reached or times out, is out of room, or a replica behind it fails), the
client asks the proxy for a new chain for that chunk alone (UPLOAD_REPLACE),
avoiding every server that has failed in this upload, and sends that chunk
again; only the receipts of the PUT that succeeded go to the commit.  A chunk
not yet sent whose chain includes a failed server is re-placed before it is
sent.  After MAX_REPLACEMENTS re-placements of one chunk (or with a proxy
that cannot re-place) the client aborts, naming the servers that failed (the
proxy checks them and marks the dead ones down), and tries once more with a
fresh placement.  The whole upload has a deadline
(common.config.transfer_deadline).

Resume: whatever ends an upload early (Ctrl-C, SIGTERM, an error) sends
UPLOAD_ABORT, and the proxy keeps what it stored for a while (proxy.uploads),
so the same upload run again sends only what the cluster lacks; ``sent``
counts only the bytes sent by this run.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from client.pool import ConnectionPool, Deadline, ProxyCaller, SharedProxy
from common.cluster_auth import aggregate
from common.config import PARALLEL_TRANSFERS
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    ProtocolError,
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
MAX_REPLACEMENTS = 3  # new chains for one chunk before the upload gives up on this placement


@dataclass(frozen=True)
class UploadResult:
    name: str
    size: int
    sha1: str
    sent: int  # chunk bytes the client actually sent to storage servers
    version: int = 1  # the file's version this upload became (> 1: the name existed)


def open_for_upload(path: Path, name: str | None = None) -> tuple[Any, str]:
    """Open a regular file for reading, with a clear error for every way that can fail; the name
    to upload it under (``name``, else the file's base name), checked."""
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
    if name is None:  # the file's own name: one the cluster refuses can be replaced with --as
        try:
            name = check_file_name(path.name, new=True)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{exc.message} (upload it with --as NAME)") from None
    else:
        name = check_file_name(name, new=True)
    try:
        return open(path, "rb"), name
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None


def upload(
    proxy: ProxyCaller,
    path: Path,
    progress: Progress | None = None,
    *,
    name: str | None = None,
    chunk_size: int | None = None,
) -> UploadResult:
    """Upload one file; ``chunk_size``: the cluster's, if a HELLO already said it."""
    path = Path(path)
    file, name = open_for_upload(path, name)
    with file:
        if chunk_size is None:
            chunk_size = int(proxy.call(MsgType.HELLO)["chunk_size"])
        size = os.fstat(file.fileno()).st_size
        if size > chunk_size * MAX_CHUNKS_PER_FILE:
            raise InvalidRequest(
                f"{path} is too large for this cluster: at most {chunk_size * MAX_CHUNKS_PER_FILE} bytes"
            )
        from client import upload_stream as streamed  # it builds on this module's parts

        if size >= streamed.STREAM_FROM:  # big: hashed as it is sent
            return _upload_streamed(proxy, file, path, name, size, chunk_size, progress)
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
        deadline = Deadline.start(f"the upload of {name}", "nothing was stored", manifest.size)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                stored = _attempt(proxy, file, path, name, manifest, progress, sent, deadline)
                version = int(stored.get("version", 1))  # a proxy from before versions sends none
                return UploadResult(name, manifest.size, manifest.sha1, sent.bytes, version)
            except StorageServerFailed:
                if attempt == ATTEMPTS:
                    raise
    raise AssertionError("unreachable")


def _upload_streamed(
    proxy: ProxyCaller,
    file: BinaryIO,
    path: Path,
    name: str,
    size: int,
    chunk_size: int,
    progress: Progress | None,
) -> UploadResult:
    from client import upload_stream as streamed  # it builds on this module's parts

    sent = _Sent()
    deadline = Deadline.start(f"the upload of {name}", "nothing was stored", size)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            file.seek(0)
            stored, sha1 = streamed.attempt_streamed(
                proxy, file, path, name, size, chunk_size, progress, sent, deadline
            )
            return UploadResult(name, size, sha1, sent.bytes, int(stored.get("version", 1)))
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
    proxy: ProxyCaller,
    file: BinaryIO,
    path: Path,
    name: str,
    manifest: Manifest,
    progress: Progress | None,
    sent: _Sent,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """One try; the file as the proxy recorded it (UPLOAD_COMMIT's ``file``)."""
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
        shared = SharedProxy(proxy)  # worker threads share the proxy's one connection

        def ask(msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
            return shared.call(msg_type, {"upload_id": upload_id, **header}, session=True)

        renewal = _Renewal(lambda: ask(MsgType.UPLOAD_TICKETS, {}))
        replacer = _Replacer(
            lambda chunks, avoid: ask(MsgType.UPLOAD_REPLACE, {"chunks": chunks, "avoid": avoid})
        )
        receipts = _send_missing(
            file, manifest, missing, progress, sent, renewal, replacer=replacer, deadline=deadline
        )
        committed = proxy.call(
            MsgType.UPLOAD_COMMIT, {"upload_id": upload_id, "receipts": receipts}, session=True
        )
        return dict(committed.get("file") or {})
    except BaseException as exc:
        finish_attempt(proxy, upload_id, path, exc)
        raise


def finish_attempt(proxy: ProxyCaller, upload_id: str, path: Path, exc: BaseException) -> None:
    """An attempt ended by ``exc``: park its upload (UPLOAD_ABORT, naming the servers that failed
    it), then raise what the user should see instead of ``exc``, if anything (else the caller
    re-raises ``exc``)."""
    suspects = exc.suspects if isinstance(exc, StorageServerFailed) else []
    if upload_id:
        with contextlib.suppress(FileClusterError):
            proxy.call(MsgType.UPLOAD_ABORT, {"upload_id": upload_id, "unreachable": suspects}, session=True)
    if isinstance(exc, (CorruptData, SourceShrank)):  # bytes differ, or the file shrank
        raise Conflict(f"{path} changed while it was being uploaded; nothing was stored, try again") from None
    if isinstance(exc, OSError):
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None


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


class _Replacer:
    """New chains from the proxy (UPLOAD_REPLACE) for chunks whose chain failed, never through a
    server that has failed once in this upload (``avoid`` only grows)."""

    def __init__(self, fetch: Callable[[list[str], list[int]], dict[str, Any]]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self.avoid: set[int] = set()
        self._works = True  # False once the proxy turned out not to know UPLOAD_REPLACE

    def failed(self, servers: list[int]) -> None:
        with self._lock:
            self.avoid.update(servers)

    def avoids(self, item: dict[str, Any]) -> bool:
        """True if ``item``'s chain goes through a server that failed in this upload."""
        with self._lock:
            return any(s["id"] in self.avoid for s in item["servers"])

    def replace(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """``item`` on a new chain, with a fresh ticket; None if the proxy cannot give one (it does
        not know UPLOAD_REPLACE, or has too few servers left): the upload then gives up on this
        placement as a whole."""
        with self._lock:
            if not self._works:
                return None
            avoid = sorted(self.avoid)
        try:
            reply = self._fetch([item["id"]], avoid)
        except ProtocolError:  # a proxy from before UPLOAD_REPLACE
            self._works = False
            return None
        except Unavailable:  # not enough servers left, or the proxy is unreachable
            return None
        fresh = next((m for m in reply.get("missing", []) if m.get("id") == item["id"]), None)
        if fresh is None:
            raise Conflict("the proxy no longer expects this chunk; upload again")
        return dict(fresh)


def _send_missing(
    file: BinaryIO,
    manifest: Manifest,
    missing: list[dict[str, Any]],
    progress: Progress | None,
    sent: _Sent,
    renewal: _Renewal,
    *,
    replacer: _Replacer | None = None,
    deadline: Deadline | None = None,
) -> list[list[Any]]:
    """Send the missing chunks, several at a time, each re-placed when its chain fails; at the
    first failure re-placing cannot mend, start no more.

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
            got = _store(pool, file, item, offsets[item["id"]], renewal, replacer, stop)
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
            errors = [f.exception(timeout=None if deadline is None else deadline.left()) for f in futures]
        except BaseException as exc:  # the deadline, Ctrl-C or SIGTERM: start nothing more, break all
            stop.set()
            for future in futures:
                future.cancel()
            pool.abort()
            if isinstance(exc, FutureTimeout) and deadline is not None:
                raise deadline.missed() from None
            raise
    failures = [e for e in errors if e is not None]
    if failures:
        trouble = [e for e in failures if isinstance(e, StorageServerFailed)]
        if trouble and len(trouble) == len(failures):
            suspects = sorted({s for e in trouble for s in e.suspects})
            raise StorageServerFailed(trouble[0].message, suspects)
        raise failures[0]
    return [[server_id, aggregate(macs)] for server_id, macs in sorted(receipts.items())]


def _store(
    pool: ConnectionPool,
    file: BinaryIO,
    item: dict[str, Any],
    offset: int,
    renewal: _Renewal,
    replacer: _Replacer | None,
    stop: threading.Event,
) -> list[Any]:
    """Store one chunk: PUT it to its chain, on a new chain each time one fails (at most
    MAX_REPLACEMENTS times).  Returns the receipts of the PUT that succeeded."""
    replaced = 0

    def can_replace() -> bool:
        return replacer is not None and replaced < MAX_REPLACEMENTS and not stop.is_set()

    while True:
        if replacer is not None and can_replace() and replacer.avoids(item):
            fresh = replacer.replace(item)  # its chain has a server that failed: not worth a try
            if fresh is not None:
                item, replaced = fresh, replaced + 1
        try:
            try:
                return _put_chunk(pool, file, item, offset)
            except Forbidden:  # the ticket expired (a slow upload): once more with a fresh one
                item = renewal.fresh(item)
                return _put_chunk(pool, file, item, offset)
        except FileClusterError as exc:
            failed = _failed_servers(exc, item["servers"])
            if failed is None:
                raise
            if replacer is None:
                raise _as_before(exc, item["servers"], failed) from None
            replacer.failed(failed)
            fresh = replacer.replace(item) if can_replace() else None
            if fresh is None:
                raise _as_before(exc, item["servers"], sorted(replacer.avoid)) from None
            item, replaced = fresh, replaced + 1


def _failed_servers(exc: FileClusterError, servers: list[dict[str, Any]]) -> list[int] | None:
    """The servers a PUT that failed with ``exc`` shows to be failing; None if a new chain would not
    help (the ticket, the bytes, the file)."""
    head = servers[0]["id"]
    if isinstance(exc, ReplicationFailed):  # a replica behind the head: the ERROR names it, if known
        return [exc.server] if exc.server is not None else [s["id"] for s in servers]
    if isinstance(exc, (Unavailable, InsufficientStorage)):  # the head: unreachable, silent or full
        return [head]
    return None


def _as_before(exc: FileClusterError, servers: list[dict[str, Any]], suspects: list[int]) -> FileClusterError:
    """The error that ends this placement: the suspects go to UPLOAD_ABORT, whose proxy checks them
    before the one fresh placement; a full disk is not a fault to report, so it stays as it is."""
    if isinstance(exc, InsufficientStorage):
        return exc
    if isinstance(exc, ReplicationFailed):  # the proxy checks the whole chain, as before
        suspects = sorted(set(suspects) | {s["id"] for s in servers})
    return StorageServerFailed(exc.message, suspects)


def _put_chunk(pool: ConnectionPool, file: BinaryIO, item: dict[str, Any], offset: int) -> list[Any]:
    """PUT one chunk to the head of its chain; returns the receipts of every server that stored it."""
    servers = item["servers"]
    head = servers[0]  # it forwards to the rest of the chain, which the ticket names
    size = int(item["size"])
    conn = pool.get(head)
    conn.send_head(MsgType.PUT_CHUNK, {"id": item["id"], "size": size, "ticket": item["ticket"]}, size)
    conn.send_file(file, offset, size)
    reply = conn.read_reply(MsgType.PUT_CHUNK)
    receipts = reply.get("receipts")
    if not isinstance(receipts, list) or not all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[1], str) for r in receipts
    ):
        raise RemoteProtocolError(f"storage server {head['id']} stored a chunk but gave no receipts")
    return receipts
