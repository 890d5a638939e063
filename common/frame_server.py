"""The threaded frame server both daemons are built on (the socketserver shape).

A :class:`FrameServer` accepts connections, one thread each.  Its handler
reads a frame and dispatches it:

1. the message type must be one this server takes (its handler table);
2. authorisation is checked at the door, from the ``auth`` column of the
   message table (common.messages), by the server's :class:`Authenticator`,
   before any handler runs; a handler never checks credentials by hand;
3. the handler gets a :class:`Request` (header, payload reader, addresses,
   the resolved principal) and returns a :class:`Reply`, which the server
   sends.  Handlers never see the socket.

A :class:`FileClusterError` raised by a handler becomes an ERROR frame and
the connection goes on (a payload the handler did not read is drained
first); a protocol error or anything unexpected closes that one connection
(logged), never the server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from common.cluster_auth import ClusterKey
from common.errors import FileClusterError, InternalError, ProtocolError, Unavailable
from common.limits import IDLE_TIMEOUT, MAX_CONNECTIONS
from common.messages import SPECS, Auth, MsgType
from common.transport import Connection

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class Request:
    """One request as a handler sees it: no socket in sight."""

    type: MsgType
    header: Mapping[str, Any]
    payload_len: int = 0
    body: Iterable[bytes | memoryview] = ()  # the payload's pieces, each valid until the next
    peer: Address = ("", 0)  # who sent it
    local: Address = ("", 0)  # the address it arrived on (what the peer used to reach us)
    user: str | None = None  # the principal the door resolved (a session's user), if any


@dataclass(frozen=True)
class FileBody:
    """A reply payload sent straight from an open file (sendfile); the server closes it after."""

    file: BinaryIO
    offset: int
    count: int


@dataclass(frozen=True)
class Reply:
    header: Mapping[str, Any] = field(default_factory=dict)
    type: MsgType = MsgType.OK
    payload: bytes | FileBody = b""


Handler = Callable[[Request], Reply]
CLUSTER_PRINCIPAL = "cluster"  # Request.user of a request signed with the cluster secret


# the door: (what the message table asks for, the request) -> the principal it proves, or an
# AuthError/Forbidden; called for requests whose ``auth`` is neither NONE nor CLUSTER
Authenticator = Callable[[Auth, "Request"], str | None]


def _nobody(auth: Auth, request: Request) -> str | None:
    raise InternalError(f"this server cannot check {auth.value!r}")


def dispatch(
    handlers: Mapping[MsgType, Handler],
    authenticate: Authenticator,
    request: Request,
    cluster: ClusterKey | None = None,
    audience: str = "",
) -> Reply:
    """Route one request: a type this server takes, authorised at the door, then its handler.

    The ``auth`` column of the message table says what the request must prove.  CLUSTER is
    checked here with the cluster key, as signed for this server's ``audience`` (and the OK reply
    is signed, bound to the request's nonce); every other kind by the daemon's ``authenticate``,
    which returns the principal (a session's user, a ticket's holder).  Pure of sockets, so tests
    drive a service through exactly the checks the wire goes through."""
    handler = handlers.get(request.type)
    if handler is None:
        raise ProtocolError(f"{request.type.name} is not a request this server takes")
    need = SPECS[request.type].auth
    if need is Auth.CLUSTER:
        if cluster is None:
            raise InternalError("this server has no cluster secret")
        nonce = cluster.verify(request.type, request.header, me=audience)
        request.user = CLUSTER_PRINCIPAL
        reply = handler(request)
        if reply.type is MsgType.OK:
            reply = Reply(cluster.sign_reply(nonce, reply.header), reply.type, reply.payload)
        return reply
    request.user = None if need is Auth.NONE else authenticate(need, request)
    return handler(request)


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
        peer, local = _address(conn.sock.getpeername), _address(conn.sock.getsockname)
        while not conn.closed:
            try:
                message = conn.receive()
            except (Unavailable, ProtocolError) as exc:  # peer left, timed out, or spoke nonsense
                if not isinstance(exc, Unavailable):
                    log.warning("closing %s: %s", conn.peer, exc)
                return
            try:
                request = Request(message.type, message.header, message.payload_len, _body(conn), peer, local)
                server = self.server
                reply = dispatch(
                    server.handlers, server.authenticate, request, server.cluster, server.audience
                )
                self._send(conn, reply)
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
    def _send(conn: Connection, reply: Reply) -> None:
        if conn.in_payload:
            raise InternalError("a handler replied without reading the request's payload")
        body = reply.payload
        if isinstance(body, FileBody):
            with body.file:
                conn.send_head(reply.type, reply.header, body.count)
                conn.send_file(body.file, body.offset, body.count)
        else:
            conn.send(reply.type, reply.header, body)

    @staticmethod
    def _try_send_error(conn: Connection, exc: FileClusterError) -> None:
        if conn.closed:
            return
        with contextlib.suppress(FileClusterError):
            conn.send_error(exc)


def _body(conn: Connection) -> Iterator[bytes | memoryview]:
    yield from conn.payload()


def _address(get: Callable[[], Any]) -> Address:
    try:
        host, port = get()[:2]
        return str(host), int(port)
    except OSError:
        return "", 0


class FrameServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: Address,
        handlers: Mapping[MsgType, Handler],
        *,
        max_header: int,
        max_payload: int,
        authenticate: Authenticator = _nobody,
        cluster: ClusterKey | None = None,
        audience: str = "",  # whom cluster messages must be signed for (a storage server's id)
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.handlers = dict(handlers)
        self.authenticate = authenticate
        self.cluster = cluster
        self.audience = audience
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
            conn.abort()

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


def serve_in_thread(server: FrameServer, name: str, poll_interval: float = 0.1) -> threading.Thread:
    """Serve on a daemon thread; ``stop()`` returns within ``poll_interval`` seconds."""
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), name=name, daemon=True)
    thread.start()
    return thread
