"""The client's connection to a proxy: request/reply calls with the session attached."""

from __future__ import annotations

from typing import Any

from common.config import source_address
from common.errors import NOT_TAKEN, NotAFrame, PeerClosed, PeerReset, RemoteProtocolError, Unavailable
from common.messages import MsgType
from common.transport import Connection

TIMEOUT = 60.0


class ProxyLink:
    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self._conn: Connection | None = None
        self._answered = False  # whether the proxy has answered a request on this connection

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def call(
        self, msg_type: MsgType, header: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        header = dict(header or {})
        if session:
            header["session"] = self.token or ""
        conn = self._connection()
        fresh = not self._answered
        try:
            reply = conn.request(msg_type, header)
        except (PeerClosed, PeerReset):
            if fresh:  # closed at the door, unanswered (common.admission), or the proxy just went down
                raise PeerClosed(
                    f"the proxy at {self.address} closed the connection without answering: it may be "
                    "serving too many connections (from this address, or in all), or stopping; try again"
                ) from None
            raise
        except NotAFrame as exc:  # not a filecluster daemon at all: a link gateway's port, say
            raise NotAFrame(
                f"{self.address} is not a filecluster proxy ({exc}); --proxy and FILECLUSTER_PROXY "
                "take the proxy's HOST:PORT, not a link gateway's"
            ) from None
        except RemoteProtocolError as exc:  # a filecluster daemon that is not the proxy: a storage server
            if NOT_TAKEN not in exc.message:
                raise
            raise RemoteProtocolError(
                f"{self.address} is not the filecluster proxy ({exc.message}); --proxy and "
                "FILECLUSTER_PROXY take the proxy's HOST:PORT"
            ) from None
        self._answered = True
        return reply

    def _connection(self) -> Connection:
        if self._conn is not None and self._conn.is_dropped():
            self.close()  # the proxy dropped this idle connection: open a fresh one, resend nothing
        if self._conn is None or self._conn.closed:
            try:
                self._conn = Connection.connect(
                    self.host, self.port, timeout=self.timeout, what="proxy", source_address=source_address()
                )
            except Unavailable as exc:
                raise Unavailable(
                    f"{exc.message}; is it running (here: ./run_cluster.sh status)? For a proxy at another "
                    "address: --proxy HOST:PORT or FILECLUSTER_PROXY"
                ) from None
            self._answered = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ProxyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
