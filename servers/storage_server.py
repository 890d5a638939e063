"""The storage server's request handlers: put, get, has, delete chunks.

PUT_CHUNK is where replication happens.  The header names the servers that
must also keep the chunk (``forward``, in order).  The server takes a
connection to the first of them (servers.downstream keeps them for reuse),
passes the rest along, and streams every
payload piece both into its own :class:`ChunkWriter` and downstream, so the
client sends a chunk's bytes once whatever the replica count.  It answers OK
only once its own copy is verified and on disk and the downstream server
has answered OK too; the reply lists every server that holds the chunk.  When
the downstream copy fails, the ERROR (``replication_failed``) names the server
that failed (``server``, the deepest one known) and its error code (``cause``).

Self-healing (issue 7), for the proxy (all signed with the cluster secret):

- VERIFY_CHUNKS ``{ids, max_age?}`` -> ``{good: [[id, size]...], bad: [ids],
  missing: [ids]}``.  A copy written or verified less than ``max_age`` seconds
  ago is good without a re-read; any other is re-read in full now, and a bad
  one is quarantined (servers.chunk_store).
- REPLICATE ``{id, size, sources: [{id, host, port, ticket}]}``: the server
  fetches the chunk itself, GET_CHUNK from each source in order with its GET
  ticket, into its own verifying writer, until one succeeds ->
  ``{stored, source, corrupt_sources, failed_sources}``.  A good copy already
  here is ``stored: true, source: null``; a local fault (disk full) is an ERROR.
- DELETE_CHUNKS ``older_than`` spares copies written or verified since then.
- PING also says ``free`` (bytes available, less the reserve) and ``quarantined``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from common.cluster_auth import ClusterKey, chain_after, server_audience
from common.config import MAX_CHUNK_SIZE
from common.errors import (
    CorruptData,
    FileClusterError,
    InternalError,
    InvalidRequest,
    NotFound,
)
from common.frame_server import FileBody, FrameServer, Handler, Reply, Request
from common.hashing import check_chunk_id, proof_digest
from common.limits import (
    MAX_IDS_PER_REQUEST,
    MAX_PROOF_RANGE,
    MAX_SERVER_ID,
    STORAGE_MAX_HEADER,
    ServerLimits,
)
from common.messages import Auth, MsgType
from common.transport import Connection
from servers.chunk_store import DIRECT_FROM, READ_STAGES, ChunkStore
from servers.downstream import DownstreamPool
from servers.memory_store import MemoryChunkStore
from servers.put_many import Room, check_tickets, parse_items, put_chunks, replication_failed

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 10.0  # a hung replica is reported before the client's own 15 s timeout fires
FETCH_TIMEOUT = 10.0  # REPLICATE: per source, between bytes
MAX_SOURCES = 16
Store = ChunkStore | MemoryChunkStore
Outcome = Literal["stored", "corrupt", "failed"]


def check_ids(raw: object) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_IDS_PER_REQUEST:
        raise InvalidRequest(f"ids must be a list of at most {MAX_IDS_PER_REQUEST} chunk ids")
    return [check_chunk_id(item) for item in raw]


def _number(raw: object, what: str) -> float | None:
    """An optional non-negative number from a header (the schema already refused other types)."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not raw >= 0:
        raise InvalidRequest(f"{what} must be a number of seconds, 0 or more")
    return float(raw)


def check_sources(raw: object) -> list[dict[str, Any]]:
    """REPLICATE's sources: 1..MAX_SOURCES servers, each with the GET ticket the proxy signed for it."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SOURCES:
        raise InvalidRequest(f"sources must be a list of 1..{MAX_SOURCES} servers")
    sources = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"id", "host", "port", "ticket"}:
            raise InvalidRequest("each source is {id, host, port, ticket}")
        sid, host, port, ticket = item["id"], item["host"], item["port"], item["ticket"]
        if type(sid) is not int or not 1 <= sid <= MAX_SERVER_ID:
            raise InvalidRequest(f"a source id must be 1..{MAX_SERVER_ID}")
        if not isinstance(host, str) or not 0 < len(host) <= 255:
            raise InvalidRequest("a source host must be a non-empty name")
        if type(port) is not int or not 0 < port < 65536:
            raise InvalidRequest("a source port must be 1..65535")
        if not (
            isinstance(ticket, dict)
            and set(ticket) == {"exp", "who", "mac"}
            and type(ticket["exp"]) is int
            and isinstance(ticket["who"], str)
            and isinstance(ticket["mac"], str)
        ):
            raise InvalidRequest("a source ticket is {exp, who, mac}")
        sources.append({"id": sid, "host": host, "port": port, "ticket": ticket})
    return sources


class StorageService:
    """What one storage server does with each request; the socket side is common.frame_server."""

    def __init__(
        self, server_id: int, store: Store, key: ClusterKey, *, max_chunk: int = MAX_CHUNK_SIZE
    ) -> None:
        self.id = server_id
        self.store = store
        self.key = key  # checks the proxy's tickets and signed requests; signs nothing itself
        self.max_chunk = max_chunk
        self.downstream = DownstreamPool(FORWARD_TIMEOUT)  # connections to the next servers of chains
        self.room = Room()  # temp files PUT_CHUNKS requests hold open (servers.put_many)

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.PUT_CHUNK: self.put_chunk,
            MsgType.PUT_CHUNKS: self.put_chunks,
            MsgType.GET_CHUNK: self.get_chunk,
            MsgType.HAS_CHUNKS: self.has_chunks,
            MsgType.DELETE_CHUNKS: self.delete_chunks,
            MsgType.PING: self.ping,
            MsgType.PROVE_CHUNKS: self.prove_chunks,
            MsgType.VERIFY_CHUNKS: self.verify_chunks,
            MsgType.REPLICATE: self.replicate,
        }

    def authenticate(self, need: Auth, req: Request) -> str | None:
        """The door for PUT_CHUNK and GET_CHUNK: a ticket the proxy signed for this chunk and server.

        Checked here, with no round trip to the proxy; nothing is written for a refused request."""
        if need is not Auth.TICKET:
            raise InternalError(f"a storage server cannot check {need.value!r}")
        if req.type is MsgType.PUT_CHUNKS:
            return check_tickets(self.key, parse_items(req.header["chunks"], self.max_chunk), self.id)
        chunk_id = check_chunk_id(req.header["id"])
        ticket = req.header.get("ticket")
        if req.type is MsgType.PUT_CHUNK:
            self.key.check_put(ticket, chunk_id, self.id)
        else:
            self.key.check_get(ticket, chunk_id, self.id)
        assert isinstance(ticket, dict)
        return str(ticket["who"])

    def put_chunk(self, req: Request) -> Reply:
        chunk_id = check_chunk_id(req.header["id"])
        size = req.header["size"]
        if size != req.payload_len or not 0 < size <= self.max_chunk:
            raise InvalidRequest(f"chunk size must match the payload and be 1..{self.max_chunk} bytes")
        ticket = req.header["ticket"]
        forward = chain_after(ticket, self.id)  # the rest of the chain the proxy chose (checked at the door)
        header = {"id": chunk_id, "size": size, "ticket": ticket}
        downstream, down_error = self.open_downstream(MsgType.PUT_CHUNK, header, size, forward)
        local_error: FileClusterError | None = None
        try:
            writer = self.store.writer(chunk_id, size)
        except FileClusterError as exc:
            local_error, writer = exc, None
        try:
            for piece in req.body:
                if writer is not None and local_error is None:
                    try:
                        writer.write(piece)
                    except FileClusterError as exc:
                        local_error = exc
                if downstream is not None:
                    try:
                        downstream.send_piece(piece)
                    except FileClusterError as exc:
                        downstream.close()
                        down_error, downstream = exc, None
            if writer is not None and local_error is None:
                try:
                    writer.commit()
                except FileClusterError as exc:
                    local_error = exc
        except BaseException:  # the sender vanished mid-chunk: cut the replica's copy short too
            if downstream is not None:
                downstream.close()
            raise
        finally:
            if writer is not None:
                writer.abort()
        stored = [] if local_error else [self.id]
        receipts = [] if local_error else [[self.id, self.key.receipt(chunk_id, self.id, str(ticket["who"]))]]
        if downstream is not None:
            try:
                answer = downstream.read_reply(MsgType.PUT_CHUNK)
                stored += answer.get("stored", [])
                receipts += answer.get("receipts", [])
                self.downstream.put_back(forward[0]["host"], forward[0]["port"], downstream)
            except FileClusterError as exc:
                down_error = exc
                downstream.close()
        if local_error is not None:
            raise local_error
        if down_error is not None:
            raise replication_failed(self.id, forward[0], down_error)
        return Reply({"stored": stored, "receipts": receipts})

    def put_chunks(self, req: Request) -> Reply:
        return put_chunks(self, self.room, req)

    def open_downstream(
        self, msg_type: MsgType, header: dict[str, Any], size: int, forward: list[dict[str, Any]]
    ) -> tuple[Connection | None, FileClusterError | None]:
        """Start forwarding a PUT to the next server of the chain: a kept connection to it and the
        request's head sent, or the error that stopped it (None, None: this server ends the chain)."""
        if not forward:
            return None, None
        target = forward[0]
        try:
            downstream = self.downstream.get(target["host"], target["port"], f"storage server {target['id']}")
            downstream.send_head(msg_type, header, size)
        except FileClusterError as exc:
            return None, exc
        return downstream, None

    def get_chunk(self, req: Request) -> Reply:
        chunk_id = check_chunk_id(req.header["id"])
        file, size = self.store.open(chunk_id)
        body = FileBody(file, 0, size, READ_STAGES if size >= DIRECT_FROM else None)
        return Reply({"id": chunk_id, "size": size}, MsgType.CHUNK_DATA, body)

    def has_chunks(self, req: Request) -> Reply:
        ids = check_ids(req.header["ids"])
        return Reply({"present": [c for c in ids if self.store.has(c)]})

    def delete_chunks(self, req: Request) -> Reply:
        ids = check_ids(req.header["ids"])
        deleted = self.store.delete(ids, older_than=_number(req.header.get("older_than"), "older_than"))
        if deleted:
            log.info("deleted %d chunk(s) no file references", deleted)
        return Reply({"deleted": deleted})

    def prove_chunks(self, req: Request) -> Reply:
        """Answer a proof-of-ownership challenge from this server's copies (proxy.ownership)."""
        nonce, ranges = req.header["nonce"], req.header["ranges"]
        if not isinstance(ranges, list) or len(ranges) > MAX_IDS_PER_REQUEST:
            raise InvalidRequest(f"ranges must be a list of at most {MAX_IDS_PER_REQUEST} items")
        digests: list[str | None] = []
        for item in ranges:
            if not (isinstance(item, list) and len(item) == 3 and all(type(v) is int for v in item[1:])):
                raise InvalidRequest("each range is [chunk id, offset, length]")
            chunk_id, offset, length = check_chunk_id(item[0]), item[1], item[2]
            if offset < 0 or not 0 < length <= MAX_PROOF_RANGE:
                raise InvalidRequest(f"a proof range is 1..{MAX_PROOF_RANGE} bytes at a positive offset")
            try:
                file, size = self.store.open(chunk_id)
            except NotFound:
                digests.append(None)
                continue
            with file:
                if offset + length > size:
                    raise InvalidRequest(f"a proof range past the end of chunk {chunk_id[:12]}")
                file.seek(offset)
                digests.append(proof_digest(nonce, chunk_id, file.read(length)))
        return Reply({"digests": digests})

    def verify_chunks(self, req: Request) -> Reply:
        ids = check_ids(req.header["ids"])
        max_age = _number(req.header.get("max_age"), "max_age")
        good: list[list[Any]] = []
        bad: list[str] = []
        missing: list[str] = []
        for chunk_id in dict.fromkeys(ids):
            age = self.store.verified_age(chunk_id) if max_age is not None else None
            verdict = "good" if age is not None and max_age is not None and age < max_age else None
            verdict = verdict or self.store.verify(chunk_id)
            if verdict == "good":
                try:
                    good.append([chunk_id, self.store.size(chunk_id)])
                    continue
                except NotFound:  # deleted just now
                    verdict = "missing"
            (bad if verdict == "bad" else missing).append(chunk_id)
        if bad:
            log.warning("VERIFY_CHUNKS found %d bad copy(ies), now quarantined", len(bad))
        return Reply({"good": good, "bad": bad, "missing": missing})

    def replicate(self, req: Request) -> Reply:
        """Fetch a chunk from the first source that serves it whole and true (the proxy's repair)."""
        chunk_id = check_chunk_id(req.header["id"])
        size = req.header["size"]
        if not 0 < size <= self.max_chunk:
            raise InvalidRequest(f"chunk size must be 1..{self.max_chunk} bytes")
        sources = check_sources(req.header["sources"])
        if any(source["id"] == self.id for source in sources):
            raise InvalidRequest(f"server {self.id} cannot replicate a chunk from itself")
        reply: dict[str, Any] = {"stored": False, "source": None, "corrupt_sources": [], "failed_sources": []}
        if self.store.has(chunk_id) and self.store.verify(chunk_id) == "good":
            reply["stored"] = True
            return Reply(reply)
        for source in sources:
            outcome = self._fetch(chunk_id, size, source)
            if outcome == "stored":
                reply.update(stored=True, source=source["id"])
                log.info("replicated chunk %s from server %d", chunk_id[:12], source["id"])
                break
            reply[f"{outcome}_sources"].append(source["id"])
        return Reply(reply)

    def _fetch(self, chunk_id: str, size: int, source: dict[str, Any]) -> Outcome:
        """One GET_CHUNK from ``source`` into a new writer.  The source's faults are its outcome;
        a fault of our own (disk full, disk error) is raised: no other source would help."""
        with self.store.writer(chunk_id, size) as writer:
            try:
                conn = Connection.connect(
                    source["host"],
                    source["port"],
                    timeout=FETCH_TIMEOUT,
                    what=f"storage server {source['id']}",
                )
            except FileClusterError as exc:
                log.warning("replicate %s: server %d: %s", chunk_id[:12], source["id"], exc)
                return "failed"
            with conn:
                try:
                    conn.send(MsgType.GET_CHUNK, {"id": chunk_id, "ticket": source["ticket"]})
                    head = conn.expect_reply(MsgType.GET_CHUNK)
                except FileClusterError as exc:
                    log.warning("replicate %s: server %d: %s", chunk_id[:12], source["id"], exc)
                    return "failed"
                if head.header.get("size") != size or head.payload_len != size:
                    log.warning(
                        "replicate %s: server %d sent %d bytes, not %d",
                        chunk_id[:12],
                        source["id"],
                        head.payload_len,
                        size,
                    )
                    return "corrupt"
                pieces = iter(conn.payload())
                while True:
                    try:
                        piece = next(pieces, None)
                    except FileClusterError as exc:
                        log.warning("replicate %s: server %d: %s", chunk_id[:12], source["id"], exc)
                        return "failed"
                    if piece is None:
                        break
                    try:
                        writer.write(piece)
                    except CorruptData:
                        return "corrupt"
                try:
                    writer.commit()
                except CorruptData:
                    log.warning(
                        "replicate %s: server %d sent bytes that do not match", chunk_id[:12], source["id"]
                    )
                    return "corrupt"
        return "stored"

    def ping(self, req: Request) -> Reply:
        return Reply(
            {
                "id": self.id,
                "chunks": self.store.count,
                "used": self.store.used,
                "free": self.store.available(),
                "quarantined": self.store.quarantined_count(),
            }
        )


def make_storage_server(
    service: StorageService, address: tuple[str, int], limits: ServerLimits | None = None
) -> FrameServer:
    return FrameServer(
        address,
        service.handlers(),
        max_header=STORAGE_MAX_HEADER,
        max_payload=service.max_chunk,
        authenticate=service.authenticate,
        cluster=service.key,
        audience=server_audience(service.id),  # a message the proxy signed for another server is refused
        limits=limits,
    )
