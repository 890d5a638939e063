"""A storage server's membership in the cluster: registration, heartbeats, inventories.

On start, and whenever the proxy says it does not know us (it restarted),
the server registers: its id, the address clients should use, its capacity,
usage and ``free`` bytes (less the reserve), the cluster id it belongs to,
and its inventory (32 raw bytes per chunk id, as the payload).  Then it sends
a heartbeat every interval: figures, ``free``, ``quarantined``, the
scrubber's ``scrub`` progress (if it runs) and ``lost``, up to
LOST_PER_HEARTBEAT ids of copies quarantined since (taken off the store's
lost queue only once the proxy answered OK).  Every ``inventory_interval``
seconds (``--inventory-interval``, default 120), and when the scrubber ends a
pass, it sends INVENTORY (a block report: the registration's payload) on the
same connection; ``not_found`` means register again.  When the proxy cannot
be reached it keeps trying, quietly, every RETRY seconds (or its interval, if shorter), so that
a restarted proxy hears from every server within about one interval of its start (the proxy's
listings wait that long for them: proxy.registry.Registry.wait_for_rejoin).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.cluster_auth import ClusterKey
from common.errors import AuthError, Conflict, FileClusterError, NotFound
from common.limits import LOST_PER_HEARTBEAT
from common.messages import MsgType
from common.transport import Connection
from servers.storage_server import Store

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds between attempts to reach a proxy that could not be reached


class Membership:
    def __init__(
        self,
        *,
        server_id: int,
        advertise: tuple[str, int],
        proxy: tuple[str, int],
        store: Store,
        key: ClusterKey,
        capacity: int | None,
        interval: float,
        state_dir: Path,
        inventory_interval: float = 120.0,
        scrub: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.server_id = server_id
        self.advertise = advertise
        self.proxy = proxy
        self.store = store
        self.key = key
        self.capacity = capacity
        self.interval = interval
        self.inventory_interval = inventory_interval
        self.scrub = scrub  # the scrubber's progress(), if one runs
        self.cluster_file = state_dir / "cluster_id"
        self.registered = threading.Event()
        self.inventories = 0  # INVENTORY messages the proxy took
        self._stop = threading.Event()
        self._wake = threading.Event()  # stop, or an inventory asked for
        self._inventory_asked = threading.Event()
        self._last_beat = self._last_inventory = 0.0
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._drop()

    def request_inventory(self) -> None:
        """Send an INVENTORY soon (the scrubber calls this at the end of a pass); thread-safe."""
        self._inventory_asked.set()
        self._wake.set()

    def _capacity(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return self.store.used + self.store.available()

    def _cluster_id(self) -> str | None:
        try:
            return self.cluster_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _remember_cluster(self, cluster_id: str) -> None:
        if self._cluster_id() == cluster_id:
            return
        write_atomic(self.cluster_file, (cluster_id + "\n").encode())

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = Connection.connect(*self.proxy, timeout=10.0, what="proxy")
        return self._conn

    def _signed_call(self, msg_type: MsgType, header: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        """A request signed with the cluster key, whose reply must be signed by the proxy too."""
        signed = self.key.sign(msg_type, header)
        return self.key.verify_reply(signed, self._connection().request(msg_type, signed, payload))

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        complained = False
        while not self._stop.is_set():
            wait = self.interval
            try:
                if self.registered.is_set():
                    wait = self._tick()
                else:
                    self._register()
                complained = False
            except NotFound:  # the proxy restarted and forgot us
                self.registered.clear()
                wait = 0
            except (Conflict, AuthError) as exc:  # another cluster, or another cluster secret
                log.error("the proxy refused this server: %s", exc)
                self.registered.clear()
                wait = max(self.interval, 10.0)
            except FileClusterError as exc:
                if not complained:
                    log.warning("proxy at %s:%d unreachable (%s); retrying", *self.proxy, exc)
                    complained = True
                self.registered.clear()
                self._drop()
                wait = min(self.interval, RETRY)  # one connection attempt: a restarting proxy's
            self._wake.wait(wait)
            self._wake.clear()

    def _tick(self) -> float:
        """A heartbeat and an inventory, each if due; returns how long until the next is."""
        now = time.monotonic()
        if now - self._last_beat >= self.interval * 0.99:
            self._heartbeat()
            self._last_beat = now
        if self._inventory_asked.is_set() or now - self._last_inventory >= self.inventory_interval:
            self._inventory_asked.clear()
            self._send_inventory()
            self._last_inventory = now
        due = min(self._last_beat + self.interval, self._last_inventory + self.inventory_interval)
        return max(due - time.monotonic(), 0.0)

    def _inventory(self) -> tuple[bytes, dict[str, Any]]:
        """Every chunk id held, 32 raw bytes each, and the header fields that describe it."""
        ids = bytearray()
        for chunk_id in self.store.ids():
            ids += bytes.fromhex(chunk_id)
        return bytes(ids), {"chunks": len(ids) // 32, "inventory_sha256": hashlib.sha256(ids).hexdigest()}

    def _register(self) -> None:
        payload, inventory = self._inventory()
        header = {
            "id": self.server_id,
            "host": self.advertise[0],
            "port": self.advertise[1],
            "capacity": self._capacity(),
            "used": self.store.used,
            "free": self.store.available(),
            "disk": self.store.disk(),
            "cluster_id": self._cluster_id(),
            **inventory,
        }
        reply = self._signed_call(MsgType.SERVER_REGISTER, header, payload)
        self._remember_cluster(str(reply["cluster_id"]))
        beat = reply.get("heartbeat")
        if isinstance(beat, (int, float)) and 0 < beat < self.interval:
            self.interval = float(beat)  # the proxy judges liveness by its own interval
        self.registered.set()
        self._last_beat = self._last_inventory = time.monotonic()  # registering told it all
        self._inventory_asked.clear()
        log.info("registered with the proxy at %s:%d (%d chunks)", *self.proxy, header["chunks"])

    def _send_inventory(self) -> None:
        payload, inventory = self._inventory()
        self._signed_call(MsgType.INVENTORY, {"id": self.server_id, **inventory}, payload)
        self.inventories += 1
        log.debug("sent the proxy an inventory of %d chunk(s)", inventory["chunks"])

    def _heartbeat(self) -> None:
        lost = self.store.lost.take(LOST_PER_HEARTBEAT)
        header: dict[str, Any] = {
            "id": self.server_id,
            "capacity": self._capacity(),
            "used": self.store.used,
            "chunks": self.store.count,
            "free": self.store.available(),
            "quarantined": self.store.quarantined_count(),
        }
        if lost:
            header["lost"] = lost
        if self.scrub is not None:
            header["scrub"] = self.scrub()
        try:
            self._signed_call(MsgType.HEARTBEAT, header)
        except BaseException:
            self.store.lost.put_back(lost)  # told nobody: tell the proxy next time
            raise
