"""The gateway's threaded HTTP server (the socketserver shape, like common.frame_server).

One request per connection: the head is read through the pure parser (gateway.http) within a
deadline for the whole head, answered (gateway.routes), and the connection closed (``Connection:
close``).  A body's first chunk is read and verified before the head is sent, so a file none of
whose copies can be read is a 503, not a 200 that stops.  Connections are admitted by
common.admission (a cap per client address, counted by client_key, and a cap overall), and a refused
one is closed at once, unanswered.  No HTTP client ever authenticates, so every connection counts as
on probation (the whole of MAX_CONNECTIONS is the reserve): once all are in use, a newcomer takes the
place of the oldest connection of the address holding the most, if that address holds at least two
more than the newcomer's.  So the slots are shared out among the addresses that want them, and a few
addresses that fill them (idle, or reading slowly) cannot shut anyone else out.  A file's body
streams from gateway.stream; when the response ends, however it ends (done, the client gone, a chunk
with no good copy, the link revoked), LINK_CLOSE tells the proxy how many body bytes were sent.  An
unexpected failure is logged, answered 500 with no detail if no byte was sent yet, and contained to
its connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import socket
import socketserver
import struct
import termios
import time
from collections.abc import Generator, Iterator
from typing import Final

from common.admission import Admission, DoorServer, client_key
from common.errors import FileClusterError, Gone, NotFound
from common.messages import MsgType
from common.ratelog import RateLimitedLog
from gateway.http import BodyCounter, HttpError, RequestHead, RequestParser, render_head
from gateway.proxy_calls import ProxyCalls
from gateway.routes import COMMON_HEADERS, Response, Routes, error_response, refusal
from gateway.stream import CHECK_INTERVAL, ChunkBuffers, LinkWatch, file_pieces

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 256
CONNECTIONS_PER_ADDRESS: Final = 16
HEAD_DEADLINE: Final = 10.0  # seconds for a whole request head, from the connection's start
SEND_TIMEOUT: Final = 60.0  # a client that takes no bytes for this long is dropped
CHUNK_BUFFERS: Final = 16  # chunk buffers held at once by every stream together
READ_SIZE: Final = 4096
LINGER_SECONDS: Final = 1.0  # after the response, how long unread input is drained before closing
LINGER_BYTES: Final = 256 * 1024  # and at most how much of it


class _ClientGone(Exception):
    """The client closed the connection before its request head was complete."""


class _HttpHandler(socketserver.BaseRequestHandler):
    server: GatewayServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        server = self.server
        client = client_key(str(self.client_address[0]))
        try:
            head = self._read_head(sock, time.monotonic() + server.head_deadline)
        except _ClientGone:
            return
        except HttpError as exc:
            server.warn("refusing a request from %s: %s", client, exc.message)
            self._send_response(sock, error_response(exc.status, exc.message), client)
            return
        except OSError:
            return
        try:
            response = server.routes.respond(head, client)
        except Exception:
            log.exception("unexpected error answering %s %s", head.method, head.path)
            response = error_response(500, "internal error; see the gateway's log")
        self._send_response(sock, response, client)

    def _read_head(self, sock: socket.socket, deadline: float) -> RequestHead:
        parser = RequestParser()
        while True:
            head = parser.next_event()
            if head is not None:
                return head
            left = deadline - time.monotonic()
            if left <= 0:
                raise HttpError(408, "the request head did not arrive in time")
            sock.settimeout(left)
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                raise HttpError(408, "the request head did not arrive in time") from None
            if not data:
                raise _ClientGone()
            parser.receive_data(data)

    def _send_response(self, sock: socket.socket, response: Response, client: str) -> None:
        stream = response.stream
        source: Generator[memoryview, None, None] | None = None  # the file's verified bytes
        body: Iterator[memoryview] | None = None
        sent = 0
        try:
            if stream is not None and not response.head_only and response.length > 0:
                server = self.server
                watch = LinkWatch(server.proxy, stream.open_header, server.check_interval)
                source = file_pieces(
                    stream.info, stream.start, stream.end, server.proxy, server.buffers, watch.check
                )
                try:  # the first chunk is read before the head: none readable is a 503, not a 200 cut short
                    first = next(source, None)
                    body = itertools.chain([] if first is None else [first], source)
                except FileClusterError as exc:
                    server.warn("cannot serve a download for %s: %s", client, exc)
                    response = unreadable(exc)
            headers = [*response.headers, ("Content-Length", str(response.length)), *COMMON_HEADERS]
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(render_head(response.status, headers))
            if response.head_only:
                return
            if body is None:
                sock.sendall(response.body)
                return
            sent = self._stream(sock, response, body, client)
        except OSError as exc:
            log.debug("%s went away: %s", client, exc)
        finally:
            if source is not None:
                source.close()
            if stream is not None and stream.grant is not None:
                self._link_close(stream.grant, sent)
        _finish(sock)

    def _stream(
        self, sock: socket.socket, response: Response, pieces: Iterator[memoryview], client: str
    ) -> int:
        """Send the body; the bytes sent.  A failure closes the connection short of its length."""
        server = self.server
        counter = BodyCounter(response.length)
        sent = 0
        try:
            for piece in pieces:
                counter.count(len(piece))  # never a byte past the Content-Length
                delivered = sent - _unacknowledged(sock)  # what the client's side has acknowledged
                try:
                    sock.sendall(piece)
                except OSError:
                    # the client went away: count what it acknowledged before this piece, not what
                    # sat in the send buffer (so a resumed download is charged only what it lacks)
                    return max(0, delivered)
                sent += len(piece)
        except FileClusterError as exc:
            server.warn("stopping a download for %s after %d bytes: %s", client, sent, exc)
            _abort(sock)
        return sent

    def _link_close(self, grant: str, sent: int) -> None:
        try:
            self.server.proxy.call(MsgType.LINK_CLOSE, {"grant": grant, "sent": sent})
        except (FileClusterError, OSError) as exc:
            self.server.warn("cannot tell the proxy a download ended (%d bytes): %s", sent, exc)


def unreadable(exc: FileClusterError) -> Response:
    """The answer to a download whose first bytes cannot be had: the link ended meanwhile (its
    404/410), or no copy of the first chunk could be read (503: try again once repair or the
    servers are back)."""
    if isinstance(exc, (Gone, NotFound)):
        return refusal(exc)
    return error_response(
        503,
        "this file cannot be read from the storage servers right now; try again later",
        [("Retry-After", "30")],
    )


def _finish(sock: socket.socket) -> None:
    """Close gracefully (a lingering close, as Apache does): say we are done writing, then read
    and drop what the client still sends (a head refused as too large, say) until it closes too,
    for at most LINGER_SECONDS and LINGER_BYTES.  Closing with unread input would reset the
    connection, and a reset can destroy the response before the client has read it."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(READ_SIZE)
            if not data:
                return
            drained += len(data)


def _abort(sock: socket.socket) -> None:
    """Close so that the client cannot take a short body for a whole one (a reset)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)


class GatewayServer(DoorServer):
    def __init__(
        self,
        address: tuple[str, int],
        proxy: ProxyCalls,
        *,
        max_connections: int = MAX_CONNECTIONS,
        per_address: int = CONNECTIONS_PER_ADDRESS,
        head_deadline: float = HEAD_DEADLINE,
        chunk_buffers: int = CHUNK_BUFFERS,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.proxy = proxy
        self.routes = Routes(proxy)
        self.head_deadline = head_deadline
        self.check_interval = check_interval
        self.buffers = ChunkBuffers(chunk_buffers)
        self.warn = RateLimitedLog(log).warning
        self.open_door(
            Admission(max_connections=max_connections, per_address=per_address, reserved=max_connections),
            self.warn,
        )
        super().__init__(address, _HttpHandler)

    def close_connections(self) -> None:
        for sock in self.admitted():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged yet (Linux SIOCOUTQ), else 0."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError):
        return 0
    return max(0, int(struct.unpack("i", raw)[0]))
