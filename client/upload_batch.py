"""Uploading many small files: a few requests per batch of files instead of a few per file.

Each batch (at most MAX_FILES_PER_BATCH files, MAX_CHUNKS_PER_BATCH chunks and
BATCH_BYTES bytes) is one UPLOAD_BEGIN_MANY (every file's manifest), one
UPLOAD_PROVE_MANY (every file's proofs, against one challenge), the chunks
the proxy lacks sent BATCH_STREAMS at a time on connections kept open
for the whole command (client.pool), and one UPLOAD_COMMIT_MANY, which the
proxy journals with one fsync.  The batches go through a pipeline of one
thread a stage, so each stage takes them in their order: while one batch is
being sent, the next two are hashed (one thread) and declared and proven
(another, so the proxy's round trips overlap the hashing), and the one
before is committed (so batches commit in their order).  The first batch is
small and each next one may be twice as big: chunks start flowing at once,
and the hashing of a batch takes about as long as the sending of the one
before.  At most three batches' files are open at once (768).

Each file still succeeds or fails on its own: the proxy answers one result per
file, and a file whose chunks could not be stored is aborted (parked, so a
retry resumes it) and then uploaded alone, as client.upload does, with a
fresh placement.  A file bigger than a batch takes the single-file path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from client.pool import ConnectionPool, Deadline, ProxyCaller, SharedProxy
from client.put_many import Part, group, put_group
from client.upload import (
    UploadResult,
    _failed_servers,
    _Renewal,
    _Replacer,
    _store,
    open_for_upload,
    prove,
    upload,
)
from common.cluster_auth import aggregate
from common.errors import (
    Conflict,
    CorruptData,
    FileClusterError,
    InvalidRequest,
    ProtocolError,
    SourceShrank,
    StorageServerFailed,
    error_from_wire,
)
from common.hashing import Manifest, manifest_of
from common.limits import MAX_CHUNKS_PER_BATCH, MAX_FILES_PER_BATCH, MIB
from common.messages import MsgType
from common.names import NameSet, check_file_name

FIRST_FILES = 32  # files in the first batch; each next one may take twice as many, to MAX_FILES_PER_BATCH
BATCH_BYTES = 32 * MIB  # the most file bytes in one batch (its deadline is that of one such file)
SMALL_FILE = 8 * MIB  # what a caller should batch; bigger files stream better alone
AHEAD = 2  # batches hashed and declared ahead of the one being sent
BATCH_STREAMS = 16  # chunks in flight at once: small PUTs wait mostly on the servers' fsyncs

Outcome = UploadResult | FileClusterError
Done = Callable[[int, Outcome], None]  # (index of the item, its outcome), in the items' order


@dataclass(frozen=True)
class BatchItem:
    path: Path
    name: str | None = None  # None: the file's base name


@dataclass
class _File:
    """One file of a batch, from its hashing to its commit."""

    index: int
    path: Path
    name: str
    file: BinaryIO
    manifest: Manifest
    upload_id: str = ""
    missing: list[dict[str, Any]] = field(default_factory=list)
    error: FileClusterError | None = None
    retry: bool = False  # its storage servers failed it: upload it alone, on a fresh placement
    sent: int = 0
    receipts: defaultdict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    result: dict[str, Any] = field(default_factory=dict)


def upload_many(proxy: ProxyCaller, items: Sequence[BatchItem], chunk_size: int, done: Done) -> None:
    """Upload ``items``, in batches; ``done`` hears each file's outcome (an UploadResult, or the
    error that failed that file alone), in order.  Raises only what ends the whole command (Ctrl-C,
    SIGTERM), after parking the uploads in flight."""
    talk = SharedProxy(proxy)
    with (
        ThreadPoolExecutor(BATCH_STREAMS) as workers,
        ThreadPoolExecutor(1) as hasher,
        ThreadPoolExecutor(1) as declarer,
        ThreadPoolExecutor(1) as committer,
    ):
        sender = _Sender(talk, workers, chunk_size, done)
        ahead: deque[Future[list[_File]]] = deque()  # batches being hashed and declared, in order
        committing: Future[None] | None = None
        try:
            for batch in _batches(items, chunk_size, sender):
                opened = hasher.submit(sender.open_all, batch)
                ahead.append(declarer.submit(sender.declare, opened))
                if len(ahead) > AHEAD:
                    committing = sender.finish(ahead.popleft().result(), committer, committing)
            while ahead:
                committing = sender.finish(ahead.popleft().result(), committer, committing)
            if committing is not None:
                committing.result()
        except BaseException:
            for prepared in ahead:
                with contextlib.suppress(BaseException):
                    sender.abort(prepared.result())
            raise
        finally:
            sender.pool.close()
        sender.flush(len(items))


def _batches(
    items: Sequence[BatchItem], chunk_size: int, sender: _Sender
) -> Iterator[list[tuple[int, BatchItem, int]]]:
    """Groups of items, each within the batch bounds by size (files too big go alone, as one)."""
    batch: list[tuple[int, BatchItem, int]] = []
    chunks = size = 0
    names = NameSet()
    most = FIRST_FILES  # small first batches: their chunks flow while the bigger ones are hashed
    for index, item in enumerate(items):
        try:
            length = item.path.stat().st_size
        except OSError:
            length = 0  # opening it says what is wrong
        count = max(1, -(-length // chunk_size))
        if count > MAX_CHUNKS_PER_BATCH or length > BATCH_BYTES:
            if batch:
                yield batch
                batch, chunks, size, names = [], 0, 0, NameSet()
            sender.alone(index, item)
            continue
        try:
            name = check_file_name(item.path.name if item.name is None else item.name)
        except FileClusterError:
            name = ""  # opening it says what is wrong
        if batch and (
            len(batch) >= most
            or chunks + count > MAX_CHUNKS_PER_BATCH
            or size + length > BATCH_BYTES
            or (name != "" and names.conflict(name) is not None)
        ):
            yield batch
            batch, chunks, size, names = [], 0, 0, NameSet()
            most = min(2 * most, MAX_FILES_PER_BATCH)
        batch.append((index, item, length))
        if name:
            names.add(name)
        chunks += count
        size += length
    if batch:
        yield batch


class _Sender:
    def __init__(self, talk: SharedProxy, workers: ThreadPoolExecutor, chunk_size: int, done: Done) -> None:
        self.talk = talk
        self.pool = ConnectionPool()  # kept for the whole command: one connection per thread and server
        self.workers = workers
        self.chunk_size = chunk_size
        self.done = done
        self.batched = True  # False once the proxy turned out not to know the batch messages
        self.pending: list[tuple[int, Outcome]] = []  # outcomes known before their batch ends
        self.lock = threading.Lock()

    def _say(self, index: int, outcome: Outcome) -> None:
        with self.lock:
            self.pending.append((index, outcome))

    def flush(self, upto: int) -> None:
        """Report every outcome of an item before ``upto`` (in order)."""
        with self.lock:
            ready = sorted((p for p in self.pending if p[0] < upto), key=lambda p: p[0])
            self.pending = [p for p in self.pending if p[0] >= upto]
        for index, outcome in ready:
            self.done(index, outcome)

    def alone(self, index: int, item: BatchItem) -> None:
        """A file too big for a batch: by the single-file path (reported in its turn)."""
        self._say(index, self._single(item.path, item.name))

    def _single(self, path: Path, name: str | None) -> Outcome:
        try:
            return upload(self.talk, path, name=name, chunk_size=self.chunk_size)
        except FileClusterError as exc:
            return exc

    # -- before sending: hash, declare, prove (the next batch, while this one is sent) --------------
    def open_all(self, batch: list[tuple[int, BatchItem, int]]) -> list[_File]:
        """Open and hash a batch's files (a file that cannot be is reported, and left out)."""
        files: list[_File] = []
        try:
            for index, item, _ in batch:
                try:
                    files.append(_open(index, item, self.chunk_size))
                except FileClusterError as exc:
                    self._say(index, exc)
        except BaseException:
            for f in files:
                f.file.close()
            raise
        return files

    def declare(self, opened: Future[list[_File]]) -> list[_File]:
        """Declare a hashed batch to the proxy and prove it (UPLOAD_BEGIN_MANY, UPLOAD_PROVE_MANY)."""
        files = opened.result()
        try:
            if files and self.batched:
                self._begin(files)
                self._prove([f for f in files if f.error is None])
        except BaseException:
            self.abort(files)
            raise
        return files

    def _begin(self, files: list[_File]) -> None:
        declared = [
            {
                "name": f.name,
                "size": f.manifest.size,
                "sha1": f.manifest.sha1,
                "chunks": [[c.id, c.size] for c in f.manifest.chunks],
            }
            for f in files
        ]
        try:
            header = {"chunk_size": self.chunk_size, "files": declared}
            reply = self._for_all(files, MsgType.UPLOAD_BEGIN_MANY, header, unknown=True)
        except ProtocolError:  # a proxy from before batches: each file alone
            self.batched = False
            return
        if reply is None:
            return
        for f, result in zip(files, _results(reply, len(files)), strict=True):
            if "error" in result:
                f.error = _error(result)
                continue
            f.upload_id = str(result["upload_id"])
            try:
                f.result = {"proofs": prove(f.file, f.manifest, result["challenge"])}
            except (OSError, SourceShrank):
                f.error = Conflict(f"{f.path} changed while it was being uploaded; try again")
            except FileClusterError as exc:
                f.error = exc

    def _prove(self, files: list[_File]) -> None:
        files = [f for f in files if f.error is None]
        if not files:
            return
        header = {"uploads": [[f.upload_id, f.result.pop("proofs")] for f in files]}
        reply = self._for_all(files, MsgType.UPLOAD_PROVE_MANY, header)
        if reply is None:
            return
        by_index: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        for item in reply.get("missing") or []:
            by_index[int(item.pop("file"))].append(item)
        for index, (f, result) in enumerate(zip(files, _results(reply, len(files)), strict=True)):
            if "error" in result:
                f.error = _error(result)
            else:
                f.missing = by_index[index]

    # -- sending and committing ---------------------------------------------------------------------
    def finish(
        self, files: list[_File], committer: ThreadPoolExecutor, committing: Future[None] | None
    ) -> Future[None] | None:
        """Send a prepared batch's chunks, then give its commit to ``committer`` (which commits
        and reports each file, in order) once the commit before it (``committing``) is over; what
        the committer is doing now (None if nothing)."""
        try:
            if not self.batched:
                for f in files:
                    f.file.close()
                    self._say(f.index, self._single(f.path, f.name))
                return committing
            self._send(files)
        except BaseException:
            self.abort(files)
            raise
        finally:
            for f in files:
                f.file.close()  # sent: a file retried alone is opened again by its path
        if committing is not None:
            try:
                committing.result()  # it failed as a whole: so does the command
            except BaseException:
                self.abort(files)  # sent, never to be committed: parked
                raise
        return committer.submit(self._conclude, files)

    def _conclude(self, files: list[_File]) -> None:
        """Commit a sent batch and report each file (in order); a file whose servers failed it is
        then uploaded alone."""
        try:
            self._commit([f for f in files if f.error is None])
            for f in files:
                if f.error is not None and f.upload_id:
                    self._abort(f)
                if f.retry:
                    self._say(f.index, self._single(f.path, f.name))
                elif f.error is not None:
                    self._say(f.index, f.error)
                else:
                    version = int(f.result.get("version", 1))
                    self._say(
                        f.index, UploadResult(f.name, f.manifest.size, f.manifest.sha1, f.sent, version)
                    )
        except BaseException:
            self.abort(files)
            raise
        self.flush(max(f.index for f in files) + 1 if files else 0)

    def _send(self, files: list[_File]) -> None:
        live = [f for f in files if f.error is None and f.missing]
        if not live:
            return
        total = sum(f.manifest.size for f in live)
        deadline = Deadline.start(f"the upload of {len(live)} files", "nothing was stored", total)
        parts: list[Part[_Sending]] = []
        for f in live:
            offsets: dict[str, int] = {}
            for chunk in f.manifest.chunks:
                offsets.setdefault(chunk.id, chunk.offset)
            sending = _Sending(
                f,
                _Renewal(lambda f=f: self._ask(f, MsgType.UPLOAD_TICKETS, {})),  # type: ignore[misc]
                _Replacer(
                    lambda chunks, avoid, f=f: self._ask(  # type: ignore[misc]
                        f, MsgType.UPLOAD_REPLACE, {"chunks": chunks, "avoid": avoid}
                    )
                ),
            )
            parts += [Part(sending, item, f.file, offsets[item["id"]]) for item in f.missing]
        groups, alone = group(parts, self.chunk_size)
        jobs = [self.workers.submit(self._group, members) for members in groups]
        jobs += [self.workers.submit(self._one, part) for part in alone]
        try:
            for job in jobs:
                job.result(timeout=deadline.left())
        except BaseException as exc:  # the deadline, Ctrl-C or SIGTERM: start nothing more, break all
            for job in jobs:
                job.cancel()
            self.pool.abort()
            self.pool.close()
            self.pool = ConnectionPool()  # for the batches after this one
            if not isinstance(exc, FutureTimeout):
                raise
            for f in live:
                f.error = f.error or deadline.missed()

    def _ask(self, f: _File, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        return self.talk.call(msg_type, {"upload_id": f.upload_id, **header}, session=True)

    def _group(self, members: list[Part[_Sending]]) -> None:
        """Store small chunks of one chain with one PUT_CHUNKS; each chunk that was not stored
        on every server of its chain then goes the one-chunk way (_one), which retries."""
        results: list[list[Any] | FileClusterError]
        try:
            results = put_group(self.pool, members)
        except FileClusterError as exc:  # the request as a whole: every chunk the one-chunk way
            results = [exc] * len(members)
        except OSError as exc:  # a file that cannot be read: _one says which, for its file alone
            results = [InvalidRequest(f"cannot read a file: {exc.strerror or exc}")] * len(members)
        for part, result in zip(members, results, strict=True):
            if isinstance(result, list):
                self._stored(part.owner.file, part.item, result)
                continue
            failed = _failed_servers(result, part.item["servers"])
            if failed:  # so the retry takes a fresh chain at once, as _store would after its own try
                part.owner.replacer.failed(failed)
            self._one(part)

    def _stored(self, f: _File, item: dict[str, Any], receipts: list[Any]) -> None:
        with self.lock:
            for server_id, receipt in receipts:
                f.receipts[server_id].append(receipt)
            f.sent += int(item["size"])

    def _one(self, part: Part[_Sending]) -> None:
        """Store one chunk of a file; a failure fails that file alone (its other chunks are skipped)."""
        sending, item = part.owner, part.item
        f, stop = sending.file, sending.stop
        if stop.is_set():
            return
        try:
            got = _store(self.pool, f.file, item, part.offset, sending.renewal, sending.replacer, stop)
        except FileClusterError as exc:
            stop.set()
            with self.lock:
                if f.error is None:
                    f.error = exc
                    f.retry = isinstance(exc, StorageServerFailed)
                    if isinstance(exc, (CorruptData, SourceShrank)):
                        f.error = Conflict(
                            f"{f.path} changed while it was being uploaded; nothing was stored"
                        )
            return
        except OSError as exc:
            stop.set()
            with self.lock:
                f.error = f.error or InvalidRequest(f"cannot read {f.path}: {exc.strerror or exc}")
            return
        self._stored(f, item, got)

    def _commit(self, files: list[_File]) -> None:
        if not files:
            return
        uploads = [
            [f.upload_id, [[s, aggregate(macs)] for s, macs in sorted(f.receipts.items())]] for f in files
        ]
        reply = self._for_all(files, MsgType.UPLOAD_COMMIT_MANY, {"uploads": uploads})
        if reply is None:
            return
        for f, result in zip(files, _results(reply, len(files)), strict=True):
            if "error" in result:
                f.error = _error(result)
            else:
                f.result = dict(result.get("file") or {})

    def _for_all(
        self, files: list[_File], msg_type: MsgType, header: dict[str, Any], *, unknown: bool = False
    ) -> dict[str, Any] | None:
        """A batch request; None if the proxy refused it as a whole, which is then every file's
        error.  With ``unknown``, a proxy that does not know the message raises ProtocolError."""
        try:
            return self.talk.call(msg_type, header, session=True)
        except FileClusterError as exc:
            if unknown and isinstance(exc, ProtocolError):
                raise
            for f in files:
                f.error = exc
            return None

    def _abort(self, f: _File, suspects: list[int] | None = None) -> None:
        if suspects is None and isinstance(f.error, StorageServerFailed):
            suspects = f.error.suspects
        with contextlib.suppress(FileClusterError):
            self.talk.call(
                MsgType.UPLOAD_ABORT, {"upload_id": f.upload_id, "unreachable": suspects or []}, session=True
            )
        f.upload_id = ""

    def abort(self, files: list[_File]) -> None:
        """Park every upload of a batch that has not committed (the command is ending)."""
        for f in files:
            if f.upload_id and not f.result.get("name"):
                self._abort(f)
            f.file.close()


@dataclass
class _Sending:
    """A file whose chunks are being sent: its ticket renewal, its chain replacer, and the event
    that stops its other chunks once one failed for good."""

    file: _File
    renewal: _Renewal
    replacer: _Replacer
    stop: threading.Event = field(default_factory=threading.Event)


def _open(index: int, item: BatchItem, chunk_size: int) -> _File:
    file, name = open_for_upload(item.path, item.name)
    try:
        manifest = manifest_of(file, chunk_size)
        if os.fstat(file.fileno()).st_size != manifest.size:
            raise Conflict(f"{item.path} changed while it was being read; try again")
    except OSError as exc:
        file.close()
        raise InvalidRequest(f"cannot read {item.path}: {exc.strerror or exc}") from None
    except BaseException:
        file.close()
        raise
    return _File(index, item.path, name, file, manifest)


def _results(reply: dict[str, Any], count: int) -> list[dict[str, Any]]:
    results = reply.get("results")
    if (
        not isinstance(results, list)
        or len(results) != count
        or not all(isinstance(r, dict) for r in results)
    ):
        raise ProtocolError(f"the proxy's batch reply does not have {count} results")
    return results


def _error(result: dict[str, Any]) -> FileClusterError:
    error = result["error"]
    if not isinstance(error, dict):
        return ProtocolError("the proxy's batch reply has a malformed error")
    return error_from_wire(str(error.get("code", "")), str(error.get("message", "")))
