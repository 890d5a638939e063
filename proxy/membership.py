"""The proxy's side of storage server membership: SERVER_REGISTER, HEARTBEAT and INVENTORY.

A registration, and every periodic INVENTORY (block report), carries the
server's inventory (32 raw bytes per chunk id, streamed: the ids are kept, the
raw bytes are not).  The proxy brings the catalog's chunk locations in line
with it (asking the server again before it forgets any copy, since a chunk may
have been stored after the inventory was read; that call is made outside every
lock), and makes the chunks the catalog does not know orphan candidates,
unless the server has lost its cluster id (then it keeps what it holds).  A
registration also journals the server's address and counts it up.  A
heartbeat refreshes the figures (free space, quarantined copies, scrub
progress) and reports copies the server found bad or missing, which the
catalog forgets at once (repair then replaces them); from a server not
registered since this proxy started it gets ``not_found``, which makes the
server register again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from common.errors import AuthError, Conflict, FileClusterError, InvalidRequest, NotFound, RemoteProtocolError
from common.frame_server import Handler, Reply, Request
from common.hashing import check_chunk_id
from common.limits import LOST_PER_HEARTBEAT, MAX_SERVER_ID
from common.messages import MsgType
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.placement import ServerRef
from proxy.registry import Registry

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        catalog: Catalog,
        registry: Registry,
        collector: Collector,
        *,
        heartbeat: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.catalog = catalog
        self.registry = registry
        self.collector = collector
        self.heartbeat_interval = heartbeat
        self.on_change = on_change  # copies appeared or vanished: repair has work
        # chunks a server held when it registered without a cluster id (they may be another
        # cluster's): never orphan candidates, in its later inventories either (until a restart)
        self._kept: dict[int, frozenset[str]] = {}

    def handlers(self) -> Mapping[MsgType, Handler]:
        return {
            MsgType.SERVER_REGISTER: self.server_register,
            MsgType.HEARTBEAT: self.heartbeat,
            MsgType.INVENTORY: self.inventory,
        }

    def server_register(self, req: Request) -> Reply:
        h = req.header
        if not 1 <= h["id"] <= MAX_SERVER_ID or not 0 < h["port"] < 65536:
            raise InvalidRequest(f"a server needs an id from 1 to {MAX_SERVER_ID} and a valid port")
        if h.get("cluster_id") and h["cluster_id"] != self.catalog.cluster_id:
            raise Conflict(
                f"server {h['id']} belongs to cluster {h['cluster_id']}, "
                f"but this proxy runs cluster {self.catalog.cluster_id}"
            )
        present = _read_inventory(req)
        ref = ServerRef(h["id"], h["host"], h["port"])
        orphans = self._reconcile(ref, present)
        self.catalog.remember_server(h["id"], h["host"], h["port"])
        self.registry.register(
            h["id"],
            h["host"],
            h["port"],
            h["capacity"],
            h["used"],
            h["chunks"],
            free=h.get("free"),
            disk=_disk(h.get("disk")),
        )
        if h.get("cluster_id"):  # a server that lost its cluster id keeps what it holds
            self.collector.note_inventory(h["id"], self._candidates(h["id"], orphans))
        elif orphans:
            self._kept[h["id"]] = frozenset(orphans)
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
        self.on_change()
        return Reply({"cluster_id": self.catalog.cluster_id, "heartbeat": self.heartbeat_interval})

    def inventory(self, req: Request) -> Reply:
        """A periodic block report: the catalog's locations follow it, and unknown chunks become
        orphan candidates (proxy.collector frees them after its grace period)."""
        h = req.header
        state = self.registry.get(h["id"])
        if state is None or not state.registered:
            raise NotFound("unknown server; register again")
        present = _read_inventory(req)
        orphans = self._reconcile(state.ref, present)
        self.collector.note_inventory(h["id"], self._candidates(h["id"], orphans))
        self.on_change()
        return Reply({})

    def _candidates(self, server_id: int, orphans: list[str]) -> list[str]:
        """The orphans the collector may free: not those kept from a registration without an id."""
        kept = self._kept.get(server_id)
        return [c for c in orphans if c not in kept] if kept else orphans

    def _reconcile(self, ref: ServerRef, present: set[str]) -> list[str]:
        """Bring the catalog's locations on ``ref`` in line with its inventory; returns the ids it
        holds that the catalog lacks.  The inventory was read before it was sent, so the server is
        asked again (outside every lock) before any copy is forgotten."""
        absent = self.catalog.listed_but_absent(ref.id, present)
        try:
            still_there = self.collector.storage.has_chunks(ref, absent) if absent else set()
        except FileClusterError as exc:
            log.warning("server %d did not confirm its inventory (%s); forgetting nothing", ref.id, exc)
            still_there = set(absent)
        gone = set(absent) - still_there
        if gone:
            log.warning("server %d no longer holds %d cop(ies) the catalog listed", ref.id, len(gone))
        return self.catalog.reconcile_server(ref.id, present, gone)

    def heartbeat(self, req: Request) -> Reply:
        h = req.header
        lost = h.get("lost") or []
        if len(lost) > LOST_PER_HEARTBEAT:
            raise InvalidRequest(f"a heartbeat reports at most {LOST_PER_HEARTBEAT} lost copies")
        lost = [check_chunk_id(c) for c in lost]
        scrub = h.get("scrub")
        if not self.registry.heartbeat(
            h["id"],
            h["capacity"],
            h["used"],
            h["chunks"],
            free=h.get("free"),
            quarantined=h.get("quarantined"),
            scrub=_figures(scrub) if isinstance(scrub, dict) else None,
        ):
            raise NotFound("unknown server; register again")
        dropped = [c for c in lost if self.catalog.drop_location(c, h["id"])]
        if dropped:
            log.warning("server %d reports %d bad or missing cop(ies)", h["id"], len(dropped))
            self.on_change()
        return Reply({})


def _figures(scrub: dict[str, Any]) -> dict[str, Any]:
    """The scrubber's progress as a server reported it: numbers only, a few known keys."""
    keys = ("passes", "checked", "total", "rate", "bad", "last_pass_seconds")
    return {
        k: scrub[k] for k in keys if isinstance(scrub.get(k), (int, float)) and not isinstance(scrub[k], bool)
    }


def _read_inventory(req: Request) -> set[str]:
    """The chunk ids of a SERVER_REGISTER or INVENTORY payload (32 raw bytes each), streamed: the
    ids are kept, the raw bytes are not; the payload must match its signed digest."""
    h = req.header
    if req.payload_len != 32 * h["chunks"]:
        raise RemoteProtocolError(f"{req.type.name} inventory does not match its chunk count")
    present: set[str] = set()
    partial = b""
    digest = hashlib.sha256()
    for piece in req.body:
        digest.update(piece)
        data = partial + bytes(piece)
        whole = len(data) - len(data) % 32
        present.update(data[i : i + 32].hex() for i in range(0, whole, 32))
        partial = data[whole:]
    if digest.hexdigest() != h["inventory_sha256"]:  # the MAC covers the header, this the payload
        raise AuthError(f"{req.type.name} inventory does not match its signed digest")
    return present


def _disk(value: object) -> str | None:
    """A server's disk id as it says it (an opaque string), if it is a short enough string to keep."""
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
