"""The thin socket layer over the codec: one :class:`Connection` per TCP connection.

It owns a socket, a :class:`~common.protocol.FrameEncoder` and a
:class:`~common.protocol.FrameDecoder` (the codec keeps the framing state of
both directions; this module only moves bytes), sends frames
(streaming payloads from memory or straight from a file with ``sendfile``),
and receives them, handing payloads out piece by piece so that no side ever
holds more than one receive buffer of a large payload.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from common.errors import (
    ConnectionLost,
    FileClusterError,
    LocalProtocolError,
    PeerClosed,
    RemoteProtocolError,
    SourceShrank,
    Unavailable,
    error_from_wire,
)
from common.messages import REPLIES, Message, MsgType
from common.protocol import (
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_PAYLOAD,
    NEED_DATA,
    ConnectionClosed,
    EndOfFrame,
    FrameDecoder,
    FrameEncoder,
    PayloadData,
)

RECV_SIZE = 1024 * 1024  # payload reads: one buffer, only while a payload is being read
HEAD_RECV_SIZE = 64 * 1024  # frame heads: small reads, so an idle connection holds no big buffer
DEFAULT_TIMEOUT = 30.0


_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str = "",
        max_header: int = DEFAULT_MAX_HEADER,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.sock = sock
        self.peer = peer or _peer_name(sock)
        self._decoder = FrameDecoder(max_header=max_header, max_payload=max_payload)
        self._encoder = FrameEncoder()
        self._rbuf: bytearray | None = None
        self.closed = False
        self._unread = False  # the current frame's payload has not been read to its end

    @property
    def in_payload(self) -> bool:
        """True while the current frame's payload has not been read to its end."""
        return self._unread

    # -- connecting -------------------------------------------------------------
    @classmethod
    def connect(
        cls, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT, what: str = "peer", **limits: int
    ) -> Connection:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unavailable(f"cannot reach the {what} at {host}:{port} ({_reason(exc)})") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, peer=f"{host}:{port}", **limits)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    def abort(self) -> None:
        """Break the connection from any thread: a recv or send blocked on it returns at once."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------
    # The encoder counts every payload byte before it goes out: a byte more than the frame declared,
    # or a new frame while bytes are owed, is a LocalProtocolError before anything reaches the wire.
    def send(self, msg_type: MsgType, header: Mapping[str, Any], payload: bytes = b"") -> None:
        pieces = self._encoder.frame(Message(msg_type, header, len(payload)), payload)
        if len(payload) < 65536:  # small: one write; large: no copy of the payload
            self._sendall(b"".join(pieces))
        else:
            for piece in pieces:
                self._sendall(piece)

    def send_head(self, msg_type: MsgType, header: Mapping[str, Any], payload_len: int) -> None:
        """Send a frame's prefix and header; the caller then sends exactly payload_len bytes."""
        self._sendall(self._encoder.head(Message(msg_type, header, payload_len)))

    def send_piece(self, data: bytes | bytearray | memoryview) -> None:
        self._encoder.payload(len(data))
        self._sendall(data)

    def send_file(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file`` from ``offset`` as payload (zero-copy where possible).

        A file with a descriptor is read at explicit offsets and its position never moves, so
        threads may share it; a file without one (an in-memory twin) is read by seeking.  If the
        file turns out shorter than ``count``, the frame cannot be finished: the connection is
        closed (so the peer never waits for the rest) and :class:`SourceShrank` is raised.
        """
        self._encoder.payload(count)  # refused before a byte goes out if the frame has no room
        try:
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        sent = 0
        use_sendfile = fd >= 0
        try:
            while sent < count:
                want = min(count - sent, 1 << 30)
                if use_sendfile:
                    try:
                        n = os.sendfile(self.sock.fileno(), fd, offset + sent, want)
                    except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                        self._wait_writable()
                        continue
                    except OSError as exc:
                        if exc.errno not in _NO_SENDFILE or sent:
                            raise
                        use_sendfile = False  # this file system cannot: copy through memory
                        continue
                else:
                    block = (
                        os.pread(fd, min(want, RECV_SIZE), offset + sent)
                        if fd >= 0
                        else _read_at(file, offset + sent, min(want, RECV_SIZE))
                    )
                    self.sock.sendall(block)
                    n = len(block)
                if n == 0:
                    break
                sent += n
        except OSError as exc:
            raise self._broken(exc) from None
        if sent != count:
            self.close()  # the frame cannot be finished: the peer must not wait for the rest
            raise SourceShrank(f"file shrank while sending ({sent} of {count} bytes)")

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._broken(exc) from None

    # -- receiving --------------------------------------------------------------
    def receive(self) -> Message:
        """The next frame's head; its payload must then be read with :meth:`payload`."""
        if self._unread:
            raise LocalProtocolError("receive() called before the last payload was read")
        event = self._next_event()
        if isinstance(event, ConnectionClosed):
            raise PeerClosed(f"{self.peer} closed the connection")
        if not isinstance(event, Message):
            raise LocalProtocolError(f"expected a frame, decoder gave {event!r}")
        if event.payload_len:
            self._unread = True
        elif not isinstance(self._next_event(), EndOfFrame):
            raise LocalProtocolError("an empty payload did not end its frame")
        return event

    def payload(self) -> Iterator[bytes | memoryview]:
        """The pieces of the current frame's payload; each is valid until the next is asked for."""
        while self._unread:
            event = self._next_event()
            if isinstance(event, PayloadData):
                yield event.data
            elif isinstance(event, EndOfFrame):
                self._unread = False
            else:
                raise LocalProtocolError(f"expected payload, decoder gave {event!r}")

    def skip_payload(self) -> None:
        for _ in self.payload():
            pass

    def _next_event(self) -> object:
        while True:
            event = self._decoder.next_event()
            if event is not NEED_DATA:
                if isinstance(event, EndOfFrame):
                    self._rbuf = None  # between frames a connection holds no big buffer
                return event
            try:
                if self._decoder.in_payload:
                    if self._rbuf is None:
                        self._rbuf = bytearray(RECV_SIZE)
                    n = self.sock.recv_into(self._rbuf)
                    self._decoder.receive_data(memoryview(self._rbuf)[:n])
                else:
                    self._decoder.receive_data(self.sock.recv(HEAD_RECV_SIZE))
            except OSError as exc:
                raise self._broken(exc) from None

    def _wait_writable(self) -> None:
        poller = select.poll()  # not select(): it fails on descriptors past 1023
        poller.register(self.sock, select.POLLOUT)
        timeout = self.sock.gettimeout()
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            raise TimeoutError("timed out")

    def is_dropped(self) -> bool:
        """True if the peer has closed (or broken) an idle connection: it is not worth a request."""
        if self.closed:
            return True
        timeout = self.sock.gettimeout()
        try:
            self.sock.setblocking(False)  # with a timeout set, recv would first wait for data
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False  # nothing to read: alive and idle
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(timeout)
        return True  # EOF (b"") or bytes nobody asked for: either way, not usable

    # -- request / reply ----------------------------------------------------------
    def request(self, msg_type: MsgType, header: Mapping[str, Any], payload: bytes = b"") -> dict[str, Any]:
        """Send a request and return the OK reply's header; an ERROR reply is raised."""
        self.send(msg_type, header, payload)
        return self.read_reply(msg_type)

    def read_reply(self, msg_type: MsgType) -> dict[str, Any]:
        reply = self.expect_reply(msg_type)
        self.skip_payload()
        return dict(reply.header)

    def expect_reply(self, msg_type: MsgType) -> Message:
        """Read the reply to ``msg_type``: an ERROR is raised, anything unexpected is a protocol error."""
        reply = self.receive()
        if reply.type == MsgType.ERROR:
            self.skip_payload()
            raise error_from_wire(reply.header["code"], reply.header["message"])
        if reply.type not in REPLIES.get(msg_type, ()):
            self.close()
            raise RemoteProtocolError(f"{self.peer} answered {msg_type.name} with {reply.type.name}")
        return reply

    def send_error(self, error: FileClusterError) -> None:
        """Answer with an ERROR frame; in the middle of a payload there is no way but to close."""
        if self._encoder.owed:
            self.close()
            return
        self.send(MsgType.ERROR, {"code": error.code, "message": error.message})

    def _broken(self, exc: OSError) -> ConnectionLost:
        self.close()
        if isinstance(exc, socket.timeout):
            return ConnectionLost(f"{self.peer} did not answer in time")
        return ConnectionLost(f"connection to {self.peer} failed ({_reason(exc)})")


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    return exc.strerror or os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "peer"
