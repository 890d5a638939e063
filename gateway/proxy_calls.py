"""The gateway's requests to the proxy, signed with the cluster secret (common.cluster_auth).

GATEWAY_HELLO, LINK_OPEN and LINK_CLOSE are cluster messages: each is signed for the proxy (whose
audience is "", as for ADMIN) and its OK reply is accepted only if it is signed too, in answer to
this very request.  Requests any client may make (REPORT_BAD, LOCATE by lease) go unsigned.  Each
call uses a connection of its own, so the threads serving HTTP clients never wait on one another.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from common.cluster_auth import ClusterKey
from common.config import source_address
from common.messages import SPECS, Auth, MsgType
from common.transport import Connection

log = logging.getLogger(__name__)

TIMEOUT = 15.0
HELLO_INTERVAL = 30.0


class ProxyCalls:
    """A ProxyCaller (client.pool) for the gateway: ``call`` signs what must be signed."""

    def __init__(self, address: tuple[str, int], key: ClusterKey, timeout: float = TIMEOUT) -> None:
        self.address = address
        self.key = key
        self.timeout = timeout

    @property
    def name(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def call(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        header = dict(header or {})
        signed = SPECS[msg_type].auth is Auth.CLUSTER
        if signed:
            header = self.key.sign(msg_type, header)
        host, port = self.address
        with Connection.connect(
            host, port, timeout=self.timeout, what="proxy", source_address=source_address()
        ) as conn:
            reply = conn.request(msg_type, header)
        return self.key.verify_reply(header, reply) if signed else reply


class Heartbeat:
    """GATEWAY_HELLO {url} now and every ``interval`` seconds, so the proxy prints http:// links."""

    def __init__(self, proxy: ProxyCalls, url: str, interval: float = HELLO_INTERVAL) -> None:
        self.proxy = proxy
        self.url = url
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-hello", daemon=True)
        self._failing = False

    def run_once(self) -> bool:
        try:
            self.proxy.call(MsgType.GATEWAY_HELLO, {"url": self.url})
        except Exception as exc:  # the proxy down or too old: links stay filecluster:// meanwhile
            if not self._failing:
                log.warning("cannot tell the proxy at %s about %s: %s", self.proxy.name, self.url, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("the proxy at %s knows of %s again", self.proxy.name, self.url)
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
