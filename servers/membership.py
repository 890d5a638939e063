"""A storage server's membership in the cluster: registration and heartbeats.

On start, and whenever the proxy says it does not know us (it restarted),
the server registers: its id, the address clients should use, its capacity
and usage, the cluster id it belongs to, and its inventory (32 raw bytes per
chunk id, as the payload).  Then it sends a heartbeat every interval.  When
the proxy cannot be reached it keeps trying, quietly, until it can.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.cluster_auth import ClusterKey
from common.errors import AuthError, Conflict, FileClusterError, NotFound
from common.messages import MsgType
from common.transport import Connection
from servers.storage_server import Store

log = logging.getLogger(__name__)


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
    ) -> None:
        self.server_id = server_id
        self.advertise = advertise
        self.proxy = proxy
        self.store = store
        self.key = key
        self.capacity = capacity
        self.interval = interval
        self.cluster_file = state_dir / "cluster_id"
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="membership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drop()

    def _capacity(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return self.store.used + self.store.free()

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
                    self._heartbeat()
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
            self._stop.wait(wait)

    def _register(self) -> None:
        ids = bytearray()
        for chunk_id in self.store.ids():
            ids += bytes.fromhex(chunk_id)
        header = {
            "id": self.server_id,
            "host": self.advertise[0],
            "port": self.advertise[1],
            "capacity": self._capacity(),
            "used": self.store.used,
            "chunks": len(ids) // 32,
            "cluster_id": self._cluster_id(),
            "inventory_sha256": hashlib.sha256(ids).hexdigest(),
        }
        reply = self._signed_call(MsgType.SERVER_REGISTER, header, bytes(ids))
        self._remember_cluster(str(reply["cluster_id"]))
        beat = reply.get("heartbeat")
        if isinstance(beat, (int, float)) and 0 < beat < self.interval:
            self.interval = float(beat)  # the proxy judges liveness by its own interval
        self.registered.set()
        log.info("registered with the proxy at %s:%d (%d chunks)", *self.proxy, header["chunks"])

    def _heartbeat(self) -> None:
        self._signed_call(
            MsgType.HEARTBEAT,
            {
                "id": self.server_id,
                "capacity": self._capacity(),
                "used": self.store.used,
                "chunks": self.store.count,
            },
        )
