"""The thin socket layer over the codec: one :class:`Connection` per TCP connection.

It owns a socket, a :class:`~common.protocol.FrameEncoder` and a
:class:`~common.protocol.FrameDecoder` (the codec keeps the framing state of
both directions; this module only moves bytes), sends frames
(streaming payloads from memory or straight from a file with ``sendfile``),
and receives them, handing payloads out piece by piece so that no side ever
holds more than one receive buffer of a large payload.

On a server's side a connection is also given
:class:`~common.deadlines.FrameDeadlines` and a :class:`HeaderGate`.
Deadlines bound a whole frame, not each read (common.deadlines): each read
waits only for what is left of the frame's deadline, and a peer that misses
it gets :class:`TooSlow` (the connection is closed).  The gate is asked before a header is buffered and
before it is parsed (common.budget); if it says no, the header is skipped
unparsed and :meth:`Connection.receive` raises :class:`Busy` with the
connection still in step (its payload, if any, is still to be read).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Protocol

from common.deadlines import IDLE, FrameDeadlines, FrameTimer
from common.direct_io import StagePool, read_direct, reopen_direct
from common.errors import (
    Busy,
    ConnectionLost,
    FileClusterError,
    LocalProtocolError,
    PeerClosed,
    PeerReset,
    RemoteProtocolError,
    SourceShrank,
    TooSlow,
    Unavailable,
    error_from_wire,
    error_to_wire,
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
    FrameHead,
    PayloadData,
    RefusedFrame,
)

RECV_SIZE = 1024 * 1024  # payload reads: one buffer while a payload is read (a kept one, _Buffers)...
FIRST_RECV_SIZE = 64 * 1024  # ...or one this small of its own, for a payload no bigger than this
# frame heads: a read this big takes a head and the small payload after it, or several small frames,
# in one system call (half the reads of a download of many 64 KiB chunks); what it returns is only
# what had arrived, so an idle connection holds no big buffer
HEAD_RECV_SIZE = 128 * 1024
DEFAULT_TIMEOUT = 30.0
# A read may outlast what is left of its frame part's deadline by this much: the socket's timeout is
# set again (a system call) only when it would wait longer than that, not before every read.
READ_SLACK = 0.25
KEPT_BUFFERS = 4  # payload buffers a process keeps for the next frames (RECV_SIZE each)


class _Buffers:
    """Payload receive buffers of RECV_SIZE, kept for the next frame rather than freed.  A new one
    is zeroed page by page, a page fault for every 4 KiB (measured: a storage server's share of
    1,000 small uploads took ~7,000 minor faults, ~300-800 with kept buffers).  At most KEPT_BUFFERS
    wait here; a payload of FIRST_RECV_SIZE or less gets a small buffer of its own."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(RECV_SIZE)

    def give_back(self, buf: bytearray) -> None:
        """Keep ``buf`` for another frame; nothing may use it (or a piece of it) any more."""
        if len(buf) == RECV_SIZE:
            with self._lock:
                if len(self._free) < self._keep:
                    self._free.append(buf)


_BUFFERS = _Buffers(KEPT_BUFFERS)


class HeaderGate(Protocol):
    """Admission of headers to a daemon's memory (common.budget.ConnectionGate)."""

    def admit_header(self, head: FrameHead) -> bool: ...  # before it is buffered; may wait

    def admit_parse(self, head: FrameHead, cost: int) -> bool: ...  # before it is parsed; may wait

    def header_parsed(self) -> None: ...

    def release(self) -> None: ...


_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str = "",
        max_header: int = DEFAULT_MAX_HEADER,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        deadlines: FrameDeadlines | None = None,
        gate: HeaderGate | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer or _peer_name(sock)
        self._decoder = FrameDecoder(max_header=max_header, max_payload=max_payload)
        self._encoder = FrameEncoder()
        self._rbuf: bytearray | None = None
        self.closed = False
        self._unread = False  # the current frame's payload has not been read to its end
        # server side: deadlines and the header gate (see the module docstring)
        self._timer = FrameTimer(deadlines) if deadlines else None
        self._gate = gate
        self._send_timeout = sock.gettimeout()  # a deadline changes the socket's; sends get this back
        self._armed = self._send_timeout  # the socket's timeout now (each change is a system call)
        self._payload_len = 0  # of the frame last received
        self._read_into = 0  # bytes of its payload read by payload_into...
        self._early = b""  # ...and bytes of it that came before they were asked for
        self._gated: FrameHead | None = None  # the frame the gate has admitted the header of...
        self._parse_gated = False  # ...and its parsing

    @property
    def in_payload(self) -> bool:
        """True while the current frame's payload has not been read to its end."""
        return self._unread

    def set_idle_timeout(self, seconds: float) -> None:
        """How long this (server-side) connection may stay idle between frames."""
        if self._timer is not None:
            self._timer.idle = seconds

    # -- connecting -------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "peer",
        source_address: str | None = None,
    ) -> Connection:
        """A connection to ``host:port``, from ``source_address`` if one is given (else the OS picks)."""
        source = (source_address, 0) if source_address else None
        try:
            sock = socket.create_connection((host, port), timeout=timeout, source_address=source)
        except OSError as exc:
            raise Unavailable(f"cannot reach the {what} at {host}:{port} ({_reason(exc)})") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, peer=f"{host}:{port}")

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

    def send_requests(self, requests: Sequence[tuple[MsgType, Mapping[str, Any]]]) -> None:
        """Send several frames without payload in one write (pipelining, docs/PROTOCOL.md §4: the
        peer answers them in order; read each reply as for one request)."""
        out = bytearray()
        for msg_type, header in requests:
            for piece in self._encoder.frame(Message(msg_type, header, 0), b""):
                out += piece
        self._sendall(out)

    def send_head(self, msg_type: MsgType, header: Mapping[str, Any], payload_len: int) -> None:
        """Send a frame's prefix and header; the caller then sends exactly payload_len bytes."""
        self._sendall(self._encoder.head(Message(msg_type, header, payload_len)))

    def send_piece(self, data: bytes | bytearray | memoryview) -> None:
        self._encoder.payload(len(data))
        self._sendall(data)

    def send_file(self, file: BinaryIO, offset: int, count: int, stages: StagePool | None = None) -> None:
        """Send ``count`` bytes of ``file`` from ``offset`` as payload (zero-copy where possible).

        A file with a descriptor is read at explicit offsets and its position never moves, so
        threads may share it; a file without one (an in-memory twin) is read by seeking.  If the
        file turns out shorter than ``count``, the frame cannot be finished: the connection is
        closed (so the peer never waits for the rest) and :class:`SourceShrank` is raised.

        ``stages``: the file is read around the page cache (O_DIRECT) into a stage from this pool,
        where the filesystem allows, rather than into new page-cache pages (see
        :func:`_send_around_cache`).  Without a free stage, or where direct reads are refused, it
        is sent as usual.
        """
        self._encoder.payload(count)  # refused before a byte goes out if the frame has no room
        self._restore_send_timeout()
        try:
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        sent = 0
        use_sendfile = fd >= 0
        if stages is not None and fd >= 0 and count:
            sent = self._send_around_cache(fd, offset, count, stages)
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

    def _send_around_cache(self, fd: int, offset: int, count: int, stages: StagePool) -> int:
        """Send what a direct read of the file gets; how many bytes that was (0 if no stage was free
        or the filesystem refused the first read: the caller sends the rest as usual).

        Why: a page the kernel takes for the page cache may be memory it has not touched for a while,
        and on a virtual machine whose host reclaims free guest memory (free page reporting) the
        first touch of each such page is a fault on the host, which costs more than the copy.  A
        file written around the cache (a big chunk, servers.chunk_store) is read faster into a stage
        that stays in use: on this VM, 1 GiB of such chunks in 0.7 s instead of 2.6 s.  A direct
        read sees what is in the page cache too (the kernel writes dirty pages back first)."""
        direct = reopen_direct(fd, os.O_RDONLY)
        if direct is None:
            return 0
        stage = stages.take()
        if stage is None:
            os.close(direct)
            return 0
        sent = 0
        try:
            for piece in read_direct(direct, offset, count, stage):
                self.sock.sendall(piece)
                sent += len(piece)
        except OSError as exc:
            if sent or exc.errno != errno.EINVAL:
                raise self._broken(exc) from None
        finally:
            os.close(direct)
            stages.give_back(stage)
        return sent

    def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        self._restore_send_timeout()
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._broken(exc) from None

    def _restore_send_timeout(self) -> None:
        """Sends wait at least the connection's own timeout (a read's deadline may have cut the
        socket's below it); a longer one left by a read's deadline is kept, and bounds sends too."""
        send, armed = self._send_timeout, self._armed
        if armed != send and (send is None or armed is None or armed < send):
            with contextlib.suppress(OSError):
                self._arm(send)

    def _arm(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)
        self._armed = seconds

    # -- receiving --------------------------------------------------------------
    def receive(self) -> Message:
        """The next frame's head; its payload must then be read with :meth:`payload`.

        :class:`Busy` if the gate refused its header: the frame's payload, if any, is then still
        to be read (or skipped) before the connection can go on."""
        if self._unread:
            raise LocalProtocolError("receive() called before the last payload was read")
        event = self._next_event()
        if isinstance(event, ConnectionClosed):
            raise PeerClosed(f"{self.peer} closed the connection")
        if not isinstance(event, (Message, RefusedFrame)):
            raise LocalProtocolError(f"expected a frame, decoder gave {event!r}")
        if self._gate is not None and isinstance(event, Message):
            self._gate.header_parsed()
        self._payload_len = event.payload_len
        self._read_into, self._early = 0, b""
        if event.payload_len:
            self._unread = True
        elif not isinstance(self._next_event(), EndOfFrame):
            raise LocalProtocolError("an empty payload did not end its frame")
        if isinstance(event, RefusedFrame):
            raise Busy(f"too many requests in flight to take this {event.type.name} now; try again")
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

    def payload_into(self, buf: memoryview) -> None:
        """Read the next ``len(buf)`` bytes of the current frame's payload into ``buf`` (a payload
        read this way is read only this way, in one or more calls that add up to its length).

        The socket reads straight into ``buf`` (no buffer of the connection's, no piece copied),
        never past the payload's end, so the next frame's bytes stay on the socket; only payload
        bytes that arrived with the frame's header are copied.  Once the payload's last byte is
        in, the frame is over and the connection is ready for the next."""
        left = self._payload_len - self._read_into
        if not self._unread or len(buf) > left:
            raise LocalProtocolError(f"a read of {len(buf)} payload bytes where {left} are left")
        filled = len(self._early[: len(buf)])
        buf[:filled], self._early = self._early[:filled], self._early[filled:]
        direct = False  # the decoder's next piece is the region of buf just received into
        while filled < len(buf):
            event = self._decoder.next_event()
            if isinstance(event, PayloadData):
                n = min(len(event.data), len(buf) - filled)
                if not direct:
                    buf[filled : filled + n] = event.data[:n]
                    self._early = bytes(event.data[n:])  # arrived with the header: kept for the next call
                filled += n
                direct = False
            elif event is NEED_DATA:
                self._receive_into(buf[filled:])
                direct = True
            else:
                raise LocalProtocolError(f"expected payload, decoder gave {event!r}")
        self._read_into += filled
        if self._read_into == self._payload_len:
            if not isinstance(self._next_event(), EndOfFrame):
                raise LocalProtocolError("a payload did not end its frame")
            self._unread = False

    def skip_payload(self) -> None:
        for _ in self.payload():
            pass

    def _next_event(self) -> object:
        while True:
            if self._gate is not None:
                self._admit()
            event = self._decoder.next_event()
            if event is not NEED_DATA:
                if isinstance(event, EndOfFrame):
                    if self._rbuf is not None:  # between frames a connection holds no buffer: the
                        _BUFFERS.give_back(self._rbuf)  # payload's pieces were all used (see payload())
                        self._rbuf = None
                    if self._timer is not None:
                        self._timer.frame_done()
                return event
            self._receive_more()

    def _admit(self) -> None:
        """Ask the gate about the arriving header: before it is buffered, and before it is parsed."""
        assert self._gate is not None
        head = self._decoder.peek()
        if head is None:
            return
        if head is not self._gated:
            self._gated, self._parse_gated = head, False
            if not self._gate.admit_header(head):
                self._decoder.refuse_header()
                return
        if not self._parse_gated:
            cost = self._decoder.header_cost()
            if cost is not None:
                if not self._gate.admit_parse(head, cost):
                    self._decoder.refuse_header()
                    return
                self._parse_gated = True

    def _receive_more(self) -> None:
        self._receive_into(None)

    def _receive_into(self, target: memoryview | None) -> None:
        """One read from the socket into the decoder: into ``target`` (the rest of a payload) if
        given, else into the connection's own buffer."""
        began = time.monotonic()
        while True:
            try:
                timeout = self._receive_timeout()
                if timeout is not None and (self._armed is None or self._armed > timeout + READ_SLACK):
                    self._arm(timeout)
                if target is not None:
                    n = self.sock.recv_into(target)
                    self._decoder.receive_data(target[:n])
                elif self._decoder.in_payload:
                    if self._rbuf is None:  # one buffer for all the payload's reads (a kept one if big)
                        big = self._payload_len > FIRST_RECV_SIZE
                        self._rbuf = _BUFFERS.take() if big else bytearray(FIRST_RECV_SIZE)
                    n = self.sock.recv_into(self._rbuf)
                    self._decoder.receive_data(memoryview(self._rbuf)[:n])
                else:
                    self._decoder.receive_data(self.sock.recv(HEAD_RECV_SIZE))
                return
            except TimeoutError as exc:
                if self._timer is None:
                    raise self._broken(exc) from None
                if self._timer.phase != IDLE:
                    left = self._timer.timeout(self._decoder, self._payload_len)
                    if left <= 0:
                        raise self._too_slow() from None
                else:
                    left = self._timer.idle - (time.monotonic() - began)
                    if left <= READ_SLACK:
                        raise self._broken(exc) from None
                with contextlib.suppress(OSError):  # the socket waited less than was left: wait the rest
                    self._arm(left)
            except OSError as exc:
                raise self._broken(exc) from None

    def _receive_timeout(self) -> float | None:
        """The socket timeout for the next read (None: a connection without deadlines keeps its own)."""
        if self._timer is None:
            return None
        left = self._timer.timeout(self._decoder, self._payload_len)
        if left <= 0:
            raise self._too_slow()
        return left

    def _too_slow(self) -> TooSlow:
        self.close()
        phase = self._timer.phase if self._timer else "frame"
        return TooSlow(f"{self.peer} did not send its frame's {phase} in time")

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
        poller = select.poll()  # one system call, the socket's timeout untouched
        try:
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))  # readable while idle: EOF, an error, or bytes nobody asked for
        except (OSError, ValueError):
            return True

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
            h = reply.header
            raise error_from_wire(h["code"], h["message"], h.get("server"), h.get("cause"))
        if reply.type not in REPLIES.get(msg_type, ()):
            self.close()
            raise RemoteProtocolError(f"{self.peer} answered {msg_type.name} with {reply.type.name}")
        return reply

    def send_error(self, error: FileClusterError) -> None:
        """Answer with an ERROR frame; in the middle of a payload there is no way but to close."""
        if self._encoder.owed:
            self.close()
            return
        self.send(MsgType.ERROR, error_to_wire(error))

    def _broken(self, exc: OSError) -> ConnectionLost:
        self.close()
        if isinstance(exc, socket.timeout):
            return ConnectionLost(f"{self.peer} did not answer in time")
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            return PeerReset(f"connection to {self.peer} failed ({_reason(exc)})")
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
