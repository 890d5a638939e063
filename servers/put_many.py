"""PUT_CHUNKS: many small chunks for one chain in one request, stored as one group.

A batch of small files is mostly small chunks; one PUT_CHUNK each costs a
request, a thread hand-off, a fsync and a folder fsync on every server of
the chain.  PUT_CHUNKS ``{chunks: [{id, size, ticket}...]}`` carries up to
MAX_CHUNKS_PER_PUT chunks whose bytes follow one another in the payload (at
most one chunk's worth in all, the server's max chunk size):

- **The door** checks every ticket as PUT_CHUNK's would be checked (its MAC,
  its expiry, this server in its chain) and asks that all name the same
  servers after this one, so the batch is forwarded as a whole.  Each chunk's
  receipt is bound to its own ticket's holder (each file's upload).  One
  bad ticket refuses the whole request, before a byte is written.
- **The payload** is forwarded downstream while it is received, piece by
  piece, as PUT_CHUNK does; each chunk's bytes go to their own verifying
  writer (servers.chunk_store).
- **The group commit** (``commit_all``): every chunk is checked against its
  SHA-256; from FLUSH_FROM chunks (8) one flush of the filesystem (syncfs,
  opened before the first byte so that it reports any writeback error of
  theirs) makes all of them durable, they are renamed into place, and a
  second flush makes the names durable.  A smaller group, or one whose flush
  fails, has the writeback of all started, each fsynced, renamed into place,
  and each fan-out folder fsynced once.  All before the reply.
- **The reply** is ``{results: [...]}``, one per chunk in order: ``{receipts:
  [[server id, receipt]...]}`` when every server of the chain holds it
  (verified, on disk), else ``{code, message, server?, cause?}``, the error
  PUT_CHUNK would have answered (``replication_failed`` naming the server
  down the chain that failed).  Each chunk succeeds or fails on its own.

Bounds: a request's chunks are bounded in number, header bytes and payload
bytes; it holds one more descriptor (its flush) while it runs; its temp files
are open at once, so the server holds at most OPEN_FOR_GROUPS of them for all
PUT_CHUNKS together, and a request that finds no room within ROOM_WAIT seconds
is answered ``unavailable`` (its sender can fall back to PUT_CHUNK).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from common.cluster_auth import ClusterKey, chain_after
from common.errors import FileClusterError, InvalidRequest, ReplicationFailed, Unavailable, error_to_wire
from common.frame_server import Reply, Request
from common.hashing import check_chunk_id
from common.limits import MAX_CHUNKS_PER_PUT
from common.messages import MsgType, put_results
from servers.chunk_store import ChunkWriter

if TYPE_CHECKING:
    from servers.storage_server import StorageService

OPEN_FOR_GROUPS: Final = 1024  # temp files all PUT_CHUNKS of a server may hold open at once
ROOM_WAIT: Final = 5.0  # seconds a request may wait for that room


@dataclass(frozen=True)
class Item:
    id: str
    size: int
    ticket: dict[str, Any]


def parse_items(raw: object, max_chunk: int) -> list[Item]:
    """The ``chunks`` of a PUT_CHUNKS: 1..MAX_CHUNKS_PER_PUT of ``{id, size, ticket}``."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHUNKS_PER_PUT:
        raise InvalidRequest(f"chunks must be a list of 1..{MAX_CHUNKS_PER_PUT} chunks")
    items = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"id", "size", "ticket"}:
            raise InvalidRequest("each chunk is {id, size, ticket}")
        size, ticket = entry["size"], entry["ticket"]
        if type(size) is not int or not 0 < size <= max_chunk:
            raise InvalidRequest(f"a chunk's size must be 1..{max_chunk} bytes")
        if not isinstance(ticket, dict):
            raise InvalidRequest("each chunk needs its ticket")
        items.append(Item(check_chunk_id(entry["id"]), size, ticket))
    return items


def check_tickets(key: ClusterKey, items: list[Item], server_id: int) -> str:
    """The door: each ticket the proxy's, for its chunk and this server, and all with the same
    servers after this one.  Returns the first ticket's holder (each chunk's receipt is bound to
    its own ticket's holder: a batch of files has one upload, so one holder, per file)."""
    forward = key.check_put(items[0].ticket, items[0].id, server_id)
    for item in items[1:]:
        if key.check_put(item.ticket, item.id, server_id) != forward:
            raise InvalidRequest("the chunks of one PUT_CHUNKS must go down the same chain")
    return str(items[0].ticket["who"])


class Room:
    """How many temp files PUT_CHUNKS requests hold open, bounded; a request takes all it needs
    at once (so two requests never wait on each other's half) or waits, at most ``wait`` s."""

    def __init__(self, capacity: int = OPEN_FOR_GROUPS, wait: float = ROOM_WAIT) -> None:
        self.capacity, self.wait = capacity, wait
        self._free = capacity
        self._changed = threading.Condition()

    def take(self, n: int) -> None:
        if n > self.capacity:
            raise Unavailable(f"this server stores at most {self.capacity} chunks at once; send fewer")
        deadline = time.monotonic() + self.wait
        with self._changed:
            while self._free < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable("this server is storing too many chunks at once; try again")
                self._changed.wait(left)
            self._free -= n

    def give_back(self, n: int) -> None:
        with self._changed:
            self._free += n
            self._changed.notify_all()


def put_chunks(service: StorageService, room: Room, req: Request) -> Reply:
    """Store every chunk of the request here and down its chain; one result per chunk."""
    items = parse_items(req.header["chunks"], service.max_chunk)
    total = sum(item.size for item in items)
    if total != req.payload_len or total > service.max_chunk:
        raise InvalidRequest(f"the chunks must add up to the payload, {service.max_chunk} bytes at most")
    ticket = items[0].ticket
    forward = chain_after(ticket, service.id)  # the same for every chunk (checked at the door)
    room.take(len(items))
    group: _Group | None = None
    try:
        group = _Group(service, items, forward)
        try:
            group.receive(req.body)
        except BaseException:  # the sender vanished mid-payload: cut the replica's copies short too
            group.close_downstream()
            raise
        group.commit()
        down = group.downstream_results()
    finally:
        if group is not None:
            group.abort()  # whatever was not committed leaves no temp file (and no open one)
        room.give_back(len(items))
    results: list[dict[str, Any]] = []
    for item, error, below in zip(items, group.errors, down, strict=True):
        if error is None and isinstance(below, FileClusterError):
            error = replication_failed(service.id, forward[0], below)
        if error is not None:
            results.append(error_to_wire(error))
            continue
        assert isinstance(below, list)
        results.append(
            {
                "receipts": [
                    [service.id, service.key.receipt(item.id, service.id, str(item.ticket["who"]))],
                    *below,
                ]
            }
        )
    return Reply({"results": results})


class _Group:
    """One request's chunks: their writers here, and the connection to the next server."""

    def __init__(self, service: StorageService, items: list[Item], forward: list[dict[str, Any]]) -> None:
        self.service, self.items, self.forward = service, items, forward
        self.writers: list[ChunkWriter | None] = []
        self.errors: list[FileClusterError | None] = []
        chunks = [{"id": item.id, "size": item.size, "ticket": item.ticket} for item in items]
        total = sum(item.size for item in items)
        self.fits = service.store.fits(total)  # all of them: no need to ask the disk for each
        self.downstream, self.down_error = service.open_downstream(
            MsgType.PUT_CHUNKS, {"chunks": chunks}, total, forward
        )
        self.flush = service.store.group_flush(len(items))  # opened before their first byte is written

    def receive(self, body: Iterable[bytes | memoryview]) -> None:
        """Split the payload into its chunks' writers, forwarding every piece as it comes."""
        index, left = -1, 0
        for piece in body:
            self._forward(piece)
            view = memoryview(piece)
            while view:
                if left == 0:
                    index += 1
                    left = self.items[index].size
                    self._open(index)
                part, view = view[:left], view[left:]
                left -= len(part)
                writer = self.writers[index]
                if writer is not None and self.errors[index] is None:
                    try:
                        writer.write(part)
                    except FileClusterError as exc:
                        self.errors[index] = exc

    def _open(self, index: int) -> None:
        item = self.items[index]
        try:
            self.writers.append(self.service.store.writer(item.id, item.size, fits=self.fits))
            self.errors.append(None)
        except FileClusterError as exc:
            self.writers.append(None)
            self.errors.append(exc)

    def _forward(self, piece: bytes | memoryview) -> None:
        if self.downstream is None:
            return
        try:
            self.downstream.send_piece(piece)
        except FileClusterError as exc:
            self.close_downstream()
            self.down_error = exc

    def close_downstream(self) -> None:
        if self.downstream is not None:
            self.downstream.close()
            self.downstream = None

    def commit(self) -> None:
        """The group commit: every verified chunk durable and in place, or its error."""
        live = [i for i, writer in enumerate(self.writers) if writer is not None and self.errors[i] is None]
        writers = [self.writers[i] for i in live]
        committed = self.service.store.commit_all(writers, self.flush)  # type: ignore[arg-type]
        for i, error in zip(live, committed, strict=True):
            self.errors[i] = error

    def abort(self) -> None:
        """Drop every writer's temp file that was not installed (a no-op for those that were)."""
        for writer in self.writers:
            if writer is not None:
                writer.abort()
        if self.flush is not None:
            self.flush.close()
            self.flush = None

    def downstream_results(self) -> list[list[Any] | FileClusterError]:
        """Per chunk, the receipts of the servers down the chain, or what failed there."""
        count = len(self.items)
        if not self.forward:
            return [[] for _ in range(count)]
        if self.downstream is not None:
            try:
                answer = self.downstream.read_reply(MsgType.PUT_CHUNKS)
                results = put_results(answer, count)
                target = self.forward[0]
                self.service.downstream.put_back(target["host"], target["port"], self.downstream)
                self.downstream = None
                return results
            except FileClusterError as exc:
                self.close_downstream()
                self.down_error = exc
        assert self.down_error is not None
        return [self.down_error] * count


def replication_failed(me: int, target: dict[str, Any], below: FileClusterError) -> ReplicationFailed:
    """What a server answers for a chunk it stored whose copy down the chain failed: it names the
    deepest server known to have failed, and that server's error code."""
    deeper = below.server is not None  # the replica names a failure further down
    return ReplicationFailed(
        f"chunk stored on server {me} but its replica on server {target['id']} "
        f"({target['host']}:{target['port']}) failed: {below}",
        server=below.server if deeper else target["id"],
        cause=(below.cause or below.code) if deeper else below.code,
    )
