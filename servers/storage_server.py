"""The storage server's request handlers: put, get, has, delete chunks.

PUT_CHUNK is where replication happens.  The header names the servers that
must also keep the chunk (``forward``, in order).  The server opens a
connection to the first of them, passes the rest along, and streams every
payload piece both into its own :class:`ChunkWriter` and downstream, so the
client sends a chunk's bytes once whatever the replica count.  It answers OK
only once its own copy is verified and on disk and the downstream server
has answered OK too; the reply lists every server that holds the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from common.config import MAX_CHUNK_SIZE
from common.errors import FileClusterError, InvalidRequest, ReplicationFailed
from common.frame_server import FileBody, FrameServer, Handler, Reply, Request
from common.hashing import check_chunk_id
from common.limits import MAX_IDS_PER_REQUEST, STORAGE_MAX_HEADER
from common.messages import MsgType
from common.transport import Connection
from servers.chunk_store import ChunkStore, MemoryChunkStore

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 30.0
Store = ChunkStore | MemoryChunkStore


def parse_targets(raw: object) -> list[dict[str, Any]]:
    """The ``forward`` list: objects with an int ``id``, a str ``host`` and an int ``port``."""
    if not isinstance(raw, list) or len(raw) > 16:
        raise InvalidRequest("forward must be a list of at most 16 servers")
    targets = []
    for item in raw:
        if not (
            isinstance(item, dict)
            and _is_int(item.get("id"))
            and isinstance(item.get("host"), str)
            and _is_int(item.get("port"))
        ):
            raise InvalidRequest("each forward target needs an int id, a host and an int port")
        targets.append({"id": item["id"], "host": item["host"], "port": item["port"]})
    return targets


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ids(raw: object) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_IDS_PER_REQUEST:
        raise InvalidRequest(f"ids must be a list of at most {MAX_IDS_PER_REQUEST} chunk ids")
    return [check_chunk_id(item) for item in raw]


class StorageService:
    """What one storage server does with each request; the socket side is common.frame_server."""

    def __init__(self, server_id: int, store: Store, *, max_chunk: int = MAX_CHUNK_SIZE) -> None:
        self.id = server_id
        self.store = store
        self.max_chunk = max_chunk

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.PUT_CHUNK: self.put_chunk,
            MsgType.GET_CHUNK: self.get_chunk,
            MsgType.HAS_CHUNKS: self.has_chunks,
            MsgType.DELETE_CHUNKS: self.delete_chunks,
            MsgType.PING: self.ping,
        }

    def put_chunk(self, req: Request) -> Reply:
        chunk_id = check_chunk_id(req.header["id"])
        size = req.header["size"]
        if size != req.payload_len or not 0 < size <= self.max_chunk:
            raise InvalidRequest(f"chunk size must match the payload and be 1..{self.max_chunk} bytes")
        forward = parse_targets(req.header.get("forward") or [])
        downstream, down_error = self._open_downstream(chunk_id, size, forward)
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
        if downstream is not None:
            try:
                stored += downstream.read_reply(MsgType.PUT_CHUNK).get("stored", [])
            except FileClusterError as exc:
                down_error = exc
            finally:
                downstream.close()
        if local_error is not None:
            raise local_error
        if down_error is not None:
            target = forward[0]
            raise ReplicationFailed(
                f"chunk stored on server {self.id} but its replica on server {target['id']} "
                f"({target['host']}:{target['port']}) failed: {down_error}"
            )
        return Reply({"stored": stored})

    def _open_downstream(
        self, chunk_id: str, size: int, forward: list[dict[str, Any]]
    ) -> tuple[Connection | None, FileClusterError | None]:
        if not forward:
            return None, None
        target = forward[0]
        try:
            downstream = Connection.connect(
                target["host"], target["port"], timeout=FORWARD_TIMEOUT, what=f"storage server {target['id']}"
            )
            downstream.send_head(
                MsgType.PUT_CHUNK, {"id": chunk_id, "size": size, "forward": forward[1:]}, size
            )
        except FileClusterError as exc:
            return None, exc
        return downstream, None

    def get_chunk(self, req: Request) -> Reply:
        chunk_id = check_chunk_id(req.header["id"])
        file, size = self.store.open(chunk_id)
        return Reply({"id": chunk_id, "size": size}, MsgType.CHUNK_DATA, FileBody(file, 0, size))

    def has_chunks(self, req: Request) -> Reply:
        ids = check_ids(req.header["ids"])
        return Reply({"present": [c for c in ids if self.store.has(c)]})

    def delete_chunks(self, req: Request) -> Reply:
        ids = check_ids(req.header["ids"])
        deleted = self.store.delete(ids)
        if deleted:
            log.info("deleted %d chunk(s) no file references", deleted)
        return Reply({"deleted": deleted})

    def ping(self, req: Request) -> Reply:
        return Reply({"id": self.id, "chunks": self.store.count, "used": self.store.used})


def make_storage_server(service: StorageService, address: tuple[str, int]) -> FrameServer:
    return FrameServer(
        address, service.handlers(), max_header=STORAGE_MAX_HEADER, max_payload=service.max_chunk
    )
