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

Resources are bounded per daemon (:class:`~common.limits.ServerLimits`):
connections by :class:`~common.admission.Admission` (a cap per client
address, a cap overall, a reserve for trusted connections), the time a peer
may take over a frame by the connection's deadlines (common.transport), and
the memory of the headers in flight by a :class:`~common.budget.HeaderBudget`
(a header it cannot take now is answered ERROR ``unavailable``).  A
connection becomes *trusted* when the door resolves a principal for one of
its requests (:attr:`Request.authenticated`): whatever an
:class:`Authenticator` proves (a session, a ticket) or the cluster secret.
Warnings about misbehaving peers are rate-limited.
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

from common.admission import Admission, DoorServer, Slot
from common.budget import ConnectionGate, HeaderBudget
from common.cluster_auth import STORAGE_AUDIENCE, ClusterKey
from common.deadlines import FrameDeadlines
from common.direct_io import StagePool
from common.errors import (
    NOT_TAKEN,
    Busy,
    FileClusterError,
    InternalError,
    InvalidRequest,
    ProtocolError,
    TooSlow,
    Unavailable,
)
from common.limits import ServerLimits
from common.messages import SPECS, Auth, MsgType
from common.protocol import header_limit
from common.ratelog import RateLimitedLog
from common.transport import Connection

log = logging.getLogger(__name__)

PROBATION_OVER = "all connections are taken; only a logged-in client may go on"

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

    @property
    def authenticated(self) -> bool:
        """True if the door proved who sent it; its connection is then trusted (common.admission)."""
        return self.user is not None


@dataclass(frozen=True)
class FileBody:
    """A reply payload sent straight from an open file (sendfile); the server closes it after.
    ``stages``: read the file around the page cache, into a stage of these (Connection.send_file)."""

    file: BinaryIO
    offset: int
    count: int
    stages: StagePool | None = None


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


def authorize(
    handlers: Mapping[MsgType, Handler],
    authenticate: Authenticator,
    request: Request,
    cluster: ClusterKey | None = None,
    audience: str = "",
) -> Handler:
    """The door: a type this server takes, authorised as the message table says (setting
    ``request.user``); the handler to run, or the error to answer.

    The ``auth`` column of the message table says what the request must prove.  CLUSTER is
    checked here with the cluster key, as signed for this server's ``audience`` (and the OK reply
    is signed, bound to the request's nonce); every other kind by the daemon's ``authenticate``,
    which returns the principal (a session's user, a ticket's holder)."""
    handler = handlers.get(request.type)
    if handler is None:
        kind = " (this is a filecluster storage server)" if audience.startswith(STORAGE_AUDIENCE) else ""
        raise ProtocolError(f"{request.type.name} {NOT_TAKEN}{kind}")
    need = SPECS[request.type].auth
    if need is Auth.CLUSTER:
        if cluster is None:
            raise InternalError("this server has no cluster secret")
        nonce = cluster.verify(request.type, request.header, me=audience)
        request.user = CLUSTER_PRINCIPAL
        return _signing_replies(handler, cluster, nonce)
    request.user = None if need is Auth.NONE else authenticate(need, request)
    return handler


def _signing_replies(handler: Handler, cluster: ClusterKey, nonce: str) -> Handler:
    """``handler``, its OK reply signed for the request whose nonce this is."""

    def signed(request: Request) -> Reply:
        reply = handler(request)
        if reply.type is MsgType.OK:
            reply = Reply(cluster.sign_reply(nonce, reply.header), reply.type, reply.payload)
        return reply

    return signed


def dispatch(
    handlers: Mapping[MsgType, Handler],
    authenticate: Authenticator,
    request: Request,
    cluster: ClusterKey | None = None,
    audience: str = "",
) -> Reply:
    """Route one request: a type this server takes, authorised at the door, then its handler.

    Pure of sockets, so tests drive a service through exactly the checks the wire goes through."""
    return authorize(handlers, authenticate, request, cluster, audience)(request)


class _FrameHandler(socketserver.BaseRequestHandler):
    server: FrameServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        server = self.server
        slot = server.slot(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(server.limits.idle_timeout)
        gate = server.budget.gate(slot.address)
        conn = Connection(
            sock,
            max_header=server.max_header,
            max_payload=server.max_payload,
            deadlines=server.deadlines,
            gate=gate,
        )
        if slot.probation:  # in the reserve: each request must come quickly
            conn.set_idle_timeout(server.limits.head_deadline)
        server.track(conn, True)
        try:
            self._serve(conn, slot, gate)
        finally:
            gate.release()
            server.track(conn, False)
            conn.close()

    def _serve(self, conn: Connection, slot: Slot, gate: ConnectionGate) -> None:
        peer, local = _address(conn.sock.getpeername), _address(conn.sock.getsockname)
        while not conn.closed and self._serve_one(conn, slot, gate, peer, local):
            pass

    def _serve_one(
        self, conn: Connection, slot: Slot, gate: ConnectionGate, peer: Address, local: Address
    ) -> bool:
        """Read one request and answer it; False: close.  A request and its header live in this
        frame only, so an idle connection holds none of them while it waits for the next."""
        try:
            message = conn.receive()
        except Busy as exc:  # its header was refused unread: the connection is still in step
            allowed = self.server.admission.admit_request(slot, False)
            return self._answer_error(conn, exc) and allowed
        except (Unavailable, ProtocolError) as exc:  # peer left, too slow, or spoke nonsense
            if isinstance(exc, (ProtocolError, TooSlow)):
                self.server.warn("closing %s: %s", conn.peer, exc)
            return False
        request = Request(message.type, message.header, message.payload_len, _body(conn), peer, local)
        try:
            return self._answer(conn, slot, request)
        finally:
            gate.release()  # the budget counts a parsed header until its request is answered

    def _answer(self, conn: Connection, slot: Slot, request: Request) -> bool:
        """The door, then admission's word on this connection, then the handler, and the reply is
        sent; False: close.  A connection on probation that has used up its anonymous requests gets
        an answer (ERROR unavailable) before it is closed, never a connection closed under it.
        (No exception is kept in a variable: its traceback would hold this frame, and so the
        request, in a cycle.)"""
        server = self.server
        try:
            handler = authorize(
                server.handlers, server.authenticate, request, server.cluster, server.audience
            )
        except FileClusterError as exc:  # the door said no: that is the answer, if any is allowed
            if not server.admission.admit_request(slot, False):
                return self._probation_over(conn)
            return self._answer_failure(conn, exc)
        if not server.admission.admit_request(slot, request.authenticated):
            return self._probation_over(conn)
        if slot.trusted:
            conn.set_idle_timeout(server.limits.idle_timeout)
        try:
            self._send(conn, handler(request))
        except FileClusterError as exc:
            return self._answer_failure(conn, exc)
        except Exception:
            log.exception("unexpected error serving %s", conn.peer)
            self._try_send_error(conn, InternalError("internal error; see the server log"))
            return False
        return True

    def _probation_over(self, conn: Connection) -> bool:
        """Answer a request a connection on probation may not make; then it closes (False)."""
        self._answer_error(conn, Busy(PROBATION_OVER))
        return False

    def _answer_failure(self, conn: Connection, exc: FileClusterError) -> bool:
        """Answer a refusal or a failure; a protocol error closes the connection.  False: close."""
        if isinstance(exc, ProtocolError):
            self.server.warn("closing %s: %s", conn.peer, exc)
            self._try_send_error(conn, exc)
            return False
        return self._answer_error(conn, exc)

    def _answer_error(self, conn: Connection, exc: FileClusterError) -> bool:
        """Answer ERROR, first draining a payload nobody read (it is within limits); False: close."""
        if conn.closed:
            return False
        if conn.in_payload:
            try:
                conn.skip_payload()
            except FileClusterError:
                return False
        self._try_send_error(conn, exc)
        return not conn.closed

    @staticmethod
    def _send(conn: Connection, reply: Reply) -> None:
        if conn.in_payload:
            raise InternalError("a handler replied without reading the request's payload")
        body = reply.payload
        if isinstance(body, FileBody):
            with body.file:
                conn.send_head(reply.type, reply.header, body.count)
                conn.send_file(body.file, body.offset, body.count, body.stages)
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


class FrameServer(DoorServer):
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
        limits: ServerLimits | None = None,
    ) -> None:
        limits = limits or ServerLimits()
        self.handlers = dict(handlers)
        self.authenticate = authenticate
        self.cluster = cluster
        self.audience = audience
        self.max_header = max_header
        self.max_payload = max_payload
        self.limits = limits
        self.deadlines = FrameDeadlines(
            head=limits.head_deadline,
            payload=limits.payload_deadline,
            min_rate=limits.min_rate,
            idle=limits.idle_timeout,
        )
        self.budget = HeaderBudget(
            receive=limits.receive_budget,
            parse=limits.parse_budget,
            wait=limits.budget_wait,
            unmetered=limits.unmetered_header,
        )
        biggest = max((header_limit(t, max_header) for t in self.handlers), default=0)
        if not self.budget.admits(biggest):
            raise InvalidRequest(f"a header budget that cannot take a header of {biggest} bytes")
        self.warn = RateLimitedLog(log).warning
        self.open_door(
            Admission(
                max_connections=limits.max_connections,
                per_address=limits.per_address,
                reserved=limits.reserved,
            ),
            self.warn,
        )
        self._live: set[Connection] = set()
        self._live_lock = threading.Lock()
        super().__init__(address, _FrameHandler)

    def track(self, conn: Connection, alive: bool) -> None:
        with self._live_lock:
            (self._live.add if alive else self._live.discard)(conn)

    def close_connections(self) -> None:
        """Drop every open connection (used when stopping, so no thread lingers)."""
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            conn.abort()


def serve_in_thread(server: FrameServer, name: str, poll_interval: float = 0.1) -> threading.Thread:
    """Serve on a daemon thread; ``stop()`` returns within ``poll_interval`` seconds."""
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), name=name, daemon=True)
    thread.start()
    return thread
