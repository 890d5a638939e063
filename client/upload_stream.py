"""Uploading a big file while it is hashed: its first chunks go out before its last are read.

The file is read once, in order, in batches of chunks (FIRST_BATCH, then twice
as many each time up to MAX_BATCH).  Each batch is declared to the proxy
(UPLOAD_BEGIN with ``streamed``, then with the ``upload_id``), proven
(UPLOAD_PROVE: the proxy's challenge covers the batch's chunks not declared
before) and what the proxy lacks is handed to the sending threads, while the
next batch is hashed.  At most LOOKAHEAD chunks wait to be sent, so the reader
never runs far ahead of the network (tickets stay fresh, memory flat).  The
commit carries the whole file's SHA-1, computed on the way; the proxy commits
only once every chunk the size calls for was declared and proven.

Dedup, proof of ownership, quotas (checked at the first UPLOAD_BEGIN, for the
whole size), re-placing a failed chain, resume (UPLOAD_ABORT parks what was
stored) and the upload's deadline work as for a file hashed whole
(client.upload).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from client.pool import ConnectionPool, Deadline, ProxyCaller, SharedProxy
from client.upload import Progress, _Renewal, _Replacer, _Sent, _store, finish_attempt, prove
from common.cluster_auth import aggregate
from common.config import PARALLEL_TRANSFERS
from common.errors import Conflict, SourceShrank, StorageServerFailed
from common.hashing import READ_SIZE, ChunkRef, Manifest
from common.limits import MIB
from common.messages import MsgType

# files at least this big are streamed; smaller ones are hashed whole first (at ~1 GiB/s that costs
# them at most a quarter of a second, and their proofs are all asked before any chunk is sent: a
# storage server that hangs mid-transfer is not asked for proofs, so it is not counted down)
STREAM_FROM = 256 * MIB
FIRST_BATCH = 2  # chunks hashed before the first bytes go out
MAX_BATCH = 64
LOOKAHEAD = 2 * MAX_BATCH  # chunks hashed and declared but not yet sent, at most
HASH_BUFFERS = 4  # read buffers (of 1 MiB) the SHA-1 thread may still be hashing


def attempt_streamed(
    proxy: ProxyCaller,
    file: BinaryIO,
    path: Path,
    name: str,
    size: int,
    chunk_size: int,
    progress: Progress | None,
    sent: _Sent,
    deadline: Deadline,
) -> tuple[dict[str, Any], str]:
    """One try: the file as the proxy recorded it (UPLOAD_COMMIT's ``file``) and its SHA-1."""
    stream = _Stream(proxy, file, size, chunk_size, progress, sent)
    upload_id = ""
    try:
        with ConnectionPool() as pool, ThreadPoolExecutor(PARALLEL_TRANSFERS) as workers:
            try:
                upload_id = stream.run(name, pool, workers, deadline)
                receipts = stream.wait(deadline)
            except BaseException:
                stream.stop.set()
                pool.abort()
                raise
        whole = stream.sha1()
        header = {"upload_id": upload_id, "receipts": receipts, "sha1": whole}
        committed = proxy.call(MsgType.UPLOAD_COMMIT, header, session=True)
        return dict(committed.get("file") or {}), whole
    except BaseException as exc:
        finish_attempt(proxy, stream.upload_id, path, exc)
        raise
    finally:
        stream.sha1_thread.shutdown(wait=True, cancel_futures=True)


class _Stream:
    def __init__(
        self,
        proxy: ProxyCaller,
        file: BinaryIO,
        size: int,
        chunk_size: int,
        progress: Progress | None,
        sent: _Sent,
    ) -> None:
        self.proxy = SharedProxy(proxy)  # threads renew tickets and re-place chunks: one request at a time
        self.file = file
        self.size = size
        self.chunk_size = chunk_size
        self.progress = progress
        self.sent = sent
        self.whole = hashlib.sha1()
        self.sha1_thread = ThreadPoolExecutor(1)  # one thread: the pieces reach the SHA-1 in order
        self.buffers = [bytearray(min(READ_SIZE, chunk_size)) for _ in range(HASH_BUFFERS)]
        self.pending: list[Future[None] | None] = [None] * HASH_BUFFERS
        self.turn = 0
        self.upload_id = ""
        self.stop = threading.Event()
        self.room = threading.BoundedSemaphore(LOOKAHEAD)
        self.jobs: list[Future[None]] = []  # sends not known to be over
        self.errors: list[BaseException] = []  # what failed sends raised, in order
        self.receipts: defaultdict[int, list[str]] = defaultdict(list)
        self.lock = threading.Lock()
        self.done = _Sent()  # bytes sent or found stored, for the progress bar

    def ask(self, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        return self.proxy.call(msg_type, header, session=True)

    def run(self, name: str, pool: ConnectionPool, workers: ThreadPoolExecutor, deadline: Deadline) -> str:
        """Hash, declare, prove and hand out every batch; returns the upload's id."""
        renewal = _Renewal(lambda: self.ask(MsgType.UPLOAD_TICKETS, {"upload_id": self.upload_id}))
        replacer = _Replacer(
            lambda chunks, avoid: self.ask(
                MsgType.UPLOAD_REPLACE, {"upload_id": self.upload_id, "chunks": chunks, "avoid": avoid}
            )
        )
        declared: set[str] = set()
        offsets: dict[str, int] = {}
        offset, count = 0, FIRST_BATCH
        if self.progress:
            self.progress("sending", 0, self.size)
        while True:
            refs = self._hash(offset, count)
            offset += sum(r.size for r in refs)
            header: dict[str, Any] = {
                "name": name,
                "size": self.size,
                "chunk_size": self.chunk_size,
                "chunks": [[r.id, r.size] for r in refs],
            }
            header.update({"upload_id": self.upload_id} if self.upload_id else {"streamed": True})
            begun = self.ask(MsgType.UPLOAD_BEGIN, header)
            self.upload_id = str(begun["upload_id"])
            new: dict[str, ChunkRef] = {}
            for r in refs:
                offsets.setdefault(r.id, r.offset)
                if r.id not in declared:
                    new.setdefault(r.id, r)
            declared.update(new)
            proofs = prove(
                self.file, Manifest(0, "", self.chunk_size, tuple(new.values())), begun["challenge"]
            )
            missing = self.ask(MsgType.UPLOAD_PROVE, {"upload_id": self.upload_id, "proofs": proofs})[
                "missing"
            ]
            self._count(sum(r.size for r in refs) - sum(int(m["size"]) for m in missing))
            for item in missing:
                while not self.room.acquire(timeout=0.5):
                    self._check(deadline)
                self._check(deadline)
                job = workers.submit(self._send, pool, item, offsets[item["id"]], renewal, replacer)
                self.jobs.append(job)
                if len(self.jobs) > 2 * LOOKAHEAD:  # flat memory for any number of chunks
                    self.jobs = [j for j in self.jobs if not j.done()]
            if offset >= self.size:
                break
            count = min(MAX_BATCH, count * 2)
        if os.fstat(self.file.fileno()).st_size != self.size:
            raise SourceShrank("the file changed while it was being read")
        return self.upload_id

    def _check(self, deadline: Deadline) -> None:
        if self.stop.is_set():
            raise self._failure()
        if deadline.left() <= 0:
            raise deadline.missed()

    def _hash(self, offset: int, count: int) -> list[ChunkRef]:
        """The next ``count`` chunks from ``offset`` (read in order), their SHA-256s; the whole file's
        SHA-1 is computed beside, in the SHA-1 thread, on the same buffers (hashlib lets go of the
        GIL), so reading is not held up by two hashes one after the other."""
        refs = []
        for _ in range(count):
            want = min(self.chunk_size, self.size - offset)
            if want <= 0:
                break
            part = hashlib.sha256()
            got = 0
            while got < want:
                slot = self.turn % len(self.buffers)
                self.turn += 1
                busy = self.pending[slot]
                if busy is not None:
                    busy.result()  # the SHA-1 thread is done with this buffer
                view = memoryview(self.buffers[slot])
                n = self.file.readinto(view[: min(len(view), want - got)])  # type: ignore[attr-defined]
                if not n:
                    raise SourceShrank("the file changed while it was being read")
                self.pending[slot] = self.sha1_thread.submit(self.whole.update, view[:n])
                part.update(view[:n])
                got += n
            refs.append(ChunkRef(part.hexdigest(), offset, got))
            offset += got
        return refs

    def sha1(self) -> str:
        """The whole file's SHA-1, once every piece read has gone through it."""
        for slot, job in enumerate(self.pending):
            if job is not None:
                job.result()
                self.pending[slot] = None
        return self.whole.hexdigest()

    def _send(
        self, pool: ConnectionPool, item: dict[str, Any], offset: int, renewal: _Renewal, replacer: _Replacer
    ) -> None:
        try:
            if self.stop.is_set():
                return
            got = _store(pool, self.file, item, offset, renewal, replacer, self.stop)
            with self.lock:
                for server_id, receipt in got:
                    self.receipts[server_id].append(receipt)
            self.sent.add(int(item["size"]))
            self._count(int(item["size"]))
        except BaseException as exc:
            with self.lock:
                self.errors.append(exc)
            self.stop.set()
            raise
        finally:
            self.room.release()

    def _count(self, n: int) -> None:
        now = self.done.add(n)
        if self.progress:
            self.progress("sending", now, self.size)

    def _failure(self) -> BaseException:
        """The error that ends the upload: its first failed chunk's (the suspects of every failed
        chain, if they all failed for their servers)."""
        with self.lock:
            failures = list(self.errors)
        trouble = [e for e in failures if isinstance(e, StorageServerFailed)]
        if trouble and len(trouble) == len(failures):
            return StorageServerFailed(trouble[0].message, sorted({s for e in trouble for s in e.suspects}))
        return failures[0] if failures else Conflict("the upload stopped")

    def wait(self, deadline: Deadline) -> list[list[Any]]:
        """Every chunk sent; the receipts per server, aggregated, for the commit."""
        for job in self.jobs:
            try:
                job.exception(timeout=deadline.left())
            except TimeoutError:
                raise deadline.missed() from None
        if self.errors:
            raise self._failure()
        return [[server_id, aggregate(macs)] for server_id, macs in sorted(self.receipts.items())]
