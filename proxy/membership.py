"""The proxy's side of storage server membership: SERVER_REGISTER and HEARTBEAT.

A registration carries the server's inventory (32 raw bytes per chunk id,
streamed: the ids are kept, the raw bytes are not).  The proxy brings the
catalog's chunk locations in line with it (asking the server again before it
forgets any copy, since a chunk may have been stored after the inventory was
read), journals the server's address, counts it up, and queues the chunks the
catalog does not know as orphans, unless the server has lost its cluster id
(then it keeps what it holds).  A heartbeat refreshes the figures; from a
server not registered since this proxy started it gets ``not_found``, which
makes the server register again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

from common.errors import AuthError, Conflict, FileClusterError, InvalidRequest, NotFound, RemoteProtocolError
from common.frame_server import Handler, Reply, Request
from common.limits import MAX_SERVER_ID
from common.messages import MsgType
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.placement import ServerRef
from proxy.registry import Registry

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self, catalog: Catalog, registry: Registry, collector: Collector, *, heartbeat: float
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.collector = collector
        self.heartbeat_interval = heartbeat

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {MsgType.SERVER_REGISTER: self.server_register, MsgType.HEARTBEAT: self.heartbeat}

    def server_register(self, req: Request) -> Reply:
        h = req.header
        if req.payload_len != 32 * h["chunks"]:
            raise RemoteProtocolError("SERVER_REGISTER inventory does not match its chunk count")
        if not 1 <= h["id"] <= MAX_SERVER_ID or not 0 < h["port"] < 65536:
            raise InvalidRequest(f"a server needs an id from 1 to {MAX_SERVER_ID} and a valid port")
        if h.get("cluster_id") and h["cluster_id"] != self.catalog.cluster_id:
            raise Conflict(
                f"server {h['id']} belongs to cluster {h['cluster_id']}, "
                f"but this proxy runs cluster {self.catalog.cluster_id}"
            )
        present: set[str] = set()
        partial = b""
        digest = hashlib.sha256()
        for piece in req.body:  # streamed: ids are kept, the raw bytes are not
            digest.update(piece)
            data = partial + bytes(piece)
            whole = len(data) - len(data) % 32
            present.update(data[i : i + 32].hex() for i in range(0, whole, 32))
            partial = data[whole:]
        if digest.hexdigest() != h["inventory_sha256"]:  # the MAC covers the header, this the payload
            raise AuthError("SERVER_REGISTER inventory does not match its signed digest")
        ref = ServerRef(h["id"], h["host"], h["port"])
        with self.collector.lock:  # no commit records a copy on this server meanwhile
            absent = self.catalog.listed_but_absent(h["id"], present)
            # the inventory was read before it was sent: ask again before forgetting any copy
            try:
                still_there = self.collector.storage.has_chunks(ref, absent) if absent else set()
            except FileClusterError as exc:
                log.warning("server %d did not confirm its inventory (%s); forgetting nothing", h["id"], exc)
                still_there = set(absent)
            orphans = self.catalog.reconcile_server(h["id"], present, set(absent) - still_there)
        self.catalog.remember_server(h["id"], h["host"], h["port"])
        self.registry.register(h["id"], h["host"], h["port"], h["capacity"], h["used"], h["chunks"])
        if h.get("cluster_id"):  # a server that lost its cluster id keeps what it holds
            self.collector.queue_orphans(h["id"], orphans)
        elif orphans:
            log.warning(
                "server %d holds %d chunk(s) the catalog lacks but has no cluster id: keeping them",
                h["id"],
                len(orphans),
            )
        log.info(
            "storage server %d registered from %s:%d with %d chunk(s)",
            h["id"],
            h["host"],
            h["port"],
            h["chunks"],
        )
        return Reply({"cluster_id": self.catalog.cluster_id, "heartbeat": self.heartbeat_interval})

    def heartbeat(self, req: Request) -> Reply:
        h = req.header
        if not self.registry.heartbeat(h["id"], h["capacity"], h["used"], h["chunks"]):
            raise NotFound("unknown server; register again")
        return Reply({})
