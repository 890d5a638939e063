"""The threaded frame server both daemons are built on (the socketserver shape).

A :class:`FrameServer` accepts connections, one thread each.  Its handler
reads a frame, hands it to the server's ``dispatch`` table, and loops until
the peer leaves.  A :class:`FileClusterError` raised by a handler becomes an
ERROR frame and the connection goes on; a protocol error or anything
unexpected closes that one connection (logged), never the server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from typing import Any

from common.errors import FileClusterError, InternalError, ProtocolError, Unavailable
from common.messages import Message, MsgType
from common.transport import Connection

Handler = Callable[[Connection, Message], None]
log = logging.getLogger(__name__)


class _FrameHandler(socketserver.BaseRequestHandler):
    server: FrameServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.server.idle_timeout)
        conn = Connection(sock, max_header=self.server.max_header, max_payload=self.server.max_payload)
        self.server.track(conn, True)
        try:
            self._serve(conn)
        finally:
            self.server.track(conn, False)
            conn.close()

    def _serve(self, conn: Connection) -> None:
        while not conn.closed:
            try:
                message = conn.receive()
            except (Unavailable, ProtocolError) as exc:  # peer left, timed out, or spoke nonsense
                if not isinstance(exc, Unavailable):
                    log.warning("closing %s: %s", conn.peer, exc)
                return
            handler = self.server.handlers.get(message.type)
            try:
                if handler is None:
                    raise ProtocolError(f"{message.type.name} is not a request this server takes")
                handler(conn, message)
            except ProtocolError as exc:
                log.warning("closing %s: %s", conn.peer, exc)
                self._try_send_error(conn, exc)
                return
            except FileClusterError as exc:
                if conn.closed:
                    return
                if conn.in_payload:  # refused before reading it: drain it (it is within limits)
                    try:
                        conn.skip_payload()
                    except FileClusterError:
                        return
                self._try_send_error(conn, exc)
            except Exception:
                log.exception("unexpected error serving %s", conn.peer)
                self._try_send_error(conn, InternalError("internal error; see the server log"))
                return

    @staticmethod
    def _try_send_error(conn: Connection, exc: FileClusterError) -> None:
        if conn.closed:
            return
        with contextlib.suppress(FileClusterError):
            conn.send_error(exc)


class FrameServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handlers: Mapping[MsgType, Handler],
        *,
        max_header: int,
        max_payload: int,
        idle_timeout: float = 300.0,
        max_connections: int = 512,
    ) -> None:
        self.handlers = dict(handlers)
        self.max_connections = max_connections
        self.max_header = max_header
        self.max_payload = max_payload
        self.idle_timeout = idle_timeout
        self._live: set[Connection] = set()
        self._live_lock = threading.Lock()
        super().__init__(address, _FrameHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def track(self, conn: Connection, alive: bool) -> None:
        with self._live_lock:
            (self._live.add if alive else self._live.discard)(conn)

    def close_connections(self) -> None:
        """Drop every open connection (used when stopping, so no thread lingers)."""
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse connections past ``max_connections``, so one greedy client cannot exhaust threads."""
        with self._live_lock:
            busy = len(self._live) >= self.max_connections
        if busy:
            log.warning(
                "refusing a connection from %s: %d connections open", client_address, self.max_connections
            )
        return not busy

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error on connection from %s", client_address)

    def stop(self) -> None:
        self.shutdown()
        self.close_connections()
        self.server_close()


def serve_in_thread(server: FrameServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
