"""The frame codec: bytes in, events out; messages in, bytes out.  No sockets here.

Theory of operation
-------------------
Every message on every filecluster connection is one frame::

    offset  size  field
    0       2     magic, the bytes b"FC"
    2       1     version, 1
    3       1     message type (see common.messages.MsgType)
    4       4     header length H, unsigned big-endian
    8       8     payload length P, unsigned big-endian
    16      H     header: a JSON object, UTF-8
    16+H    P     payload: raw bytes (chunk data, an inventory...)

Each direction of a connection has its own framing state, owned here and
nowhere else.  A :class:`FrameEncoder` turns a message into the bytes of its
head and then counts the payload bytes the caller sends after it: one byte
more than the frame declared, or a new frame while payload bytes are still
owed, is a :class:`LocalProtocolError` at once (as h11 does with
Content-Length), so the socket layer only moves bytes and cannot get the
framing wrong.

A :class:`FrameDecoder` is fed whatever bytes arrive (``receive_data``) and
hands out events (``next_event``): a :class:`~common.messages.Message` for
the head and header of a frame, then :class:`PayloadData` pieces as they
arrive (never the whole payload at once), then :class:`EndOfFrame`.  It says
:data:`NEED_DATA` when it has nothing whole to give, and
:class:`ConnectionClosed` after a clean end of stream between frames.
Lengths are checked against the decoder's limits before anything is
allocated, and every header is checked against the message table, so a bad
frame is a :class:`RemoteProtocolError` and never a half-built message.

Payload pieces are zero-copy where possible: a piece may be a memoryview
into the buffer last passed to ``receive_data`` and is valid only until the
next call to it.  Consumers use each piece before asking for more bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from common.errors import LocalProtocolError, RemoteProtocolError
from common.messages import Message, MsgType

MAGIC: Final = b"FC"
VERSION: Final = 1
PREFIX = struct.Struct(">2sBBIQ")
PREFIX_SIZE: Final = PREFIX.size  # 16

# the codec's own limits when it is given none (what a side reading replies accepts); each
# daemon passes the stricter limits of common.limits for the requests it receives
DEFAULT_MAX_HEADER: Final = 16 * 1024 * 1024
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class PayloadData:
    data: bytes | memoryview


@dataclass(frozen=True)
class EndOfFrame:
    pass


@dataclass(frozen=True)
class ConnectionClosed:
    pass


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Event = Message | PayloadData | EndOfFrame | ConnectionClosed | _NeedData

_END = EndOfFrame()
_CLOSED = ConnectionClosed()


def encode_header(header: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"header is not JSON: {exc}") from exc


def encode_message(message: Message, *, max_header: int = DEFAULT_MAX_HEADER) -> bytes:
    """The head of a frame (prefix + header).  The caller sends the payload after it."""
    body = encode_header(message.header)
    if len(body) > max_header:
        raise LocalProtocolError(f"header of {len(body)} bytes exceeds the {max_header} limit")
    return PREFIX.pack(MAGIC, VERSION, message.type, len(body), message.payload_len) + body


def encode(msg_type: MsgType, header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """A whole frame as bytes; for small messages."""
    return encode_message(Message(msg_type, header, len(payload))) + payload


class FrameEncoder:
    """Sans-IO framing state for the sending direction of one connection."""

    def __init__(self, *, max_header: int = DEFAULT_MAX_HEADER) -> None:
        self.max_header = max_header
        self._owed = 0

    @property
    def owed(self) -> int:
        """Payload bytes the current frame declared and the caller has not sent yet."""
        return self._owed

    def head(self, message: Message) -> bytes:
        """The prefix and header of a new frame; then exactly ``payload_len`` bytes must follow."""
        if self._owed:
            raise LocalProtocolError(
                f"a new {message.type.name} frame while {self._owed} payload bytes of the last are owed"
            )
        data = encode_message(message, max_header=self.max_header)
        self._owed = message.payload_len
        return data

    def payload(self, count: int) -> None:
        """Account for ``count`` payload bytes about to be sent; more than declared is refused."""
        if count < 0 or count > self._owed:
            raise LocalProtocolError(
                f"{count} payload bytes, but the frame's declared length leaves room for {self._owed}"
            )
        self._owed -= count

    def frame(
        self, message: Message, payload: bytes | bytearray | memoryview = b""
    ) -> list[bytes | bytearray | memoryview]:
        """A whole frame (head, then payload), as the pieces to send."""
        if len(payload) != message.payload_len:
            raise LocalProtocolError(
                f"{message.type.name} declares {message.payload_len} payload bytes, got {len(payload)}"
            )
        head = self.head(message)
        self.payload(len(payload))
        return [head, payload] if payload else [head]


def parse_prefix(
    prefix: bytes | bytearray | memoryview, max_header: int, max_payload: int
) -> tuple[MsgType, int, int]:
    magic, version, raw_type, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise RemoteProtocolError("not a filecluster frame (bad magic)")
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise RemoteProtocolError(f"unknown message type 0x{raw_type:02x}") from None
    if header_len > max_header:
        raise RemoteProtocolError(f"header of {header_len} bytes exceeds the {max_header} limit")
    if payload_len > max_payload:
        raise RemoteProtocolError(f"payload of {payload_len} bytes exceeds the {max_payload} limit")
    return msg_type, header_len, payload_len


def parse_header(msg_type: MsgType, body: bytes | bytearray, payload_len: int) -> Message:
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RemoteProtocolError(f"{msg_type.name} header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError(f"{msg_type.name} header is not a JSON object")
    _check_json(header, msg_type, 0)
    try:
        return Message(msg_type, header, payload_len)  # validates against the message table
    except LocalProtocolError as exc:  # ...and what fails to fit came from the peer
        raise RemoteProtocolError(str(exc)) from None


MAX_DEPTH: Final = 6
MAX_INT: Final = 2**63 - 1


def _check_json(value: Any, msg_type: MsgType, depth: int) -> None:
    """Reject what JSON allows but no message needs: deep nesting, huge numbers, lone surrogates."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError(f"{msg_type.name} header has a string that is not UTF-8") from None
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise RemoteProtocolError(f"{msg_type.name} header has a number out of range")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise RemoteProtocolError(f"{msg_type.name} header has a number out of range")
    else:
        if depth >= MAX_DEPTH:
            raise RemoteProtocolError(f"{msg_type.name} header is nested too deeply")
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if isinstance(value, dict):
                _check_json(item[0], msg_type, depth + 1)
                item = item[1]
            _check_json(item, msg_type, depth + 1)


class FrameDecoder:
    """Incremental, sans-IO frame decoder for one direction of one connection."""

    def __init__(
        self, *, max_header: int = DEFAULT_MAX_HEADER, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self.max_header = max_header
        self.max_payload = max_payload
        self._buf = bytearray()
        self._direct: memoryview | None = None  # zero-copy payload bytes, not yet handed out
        self._eof = False
        self._in_payload = False
        self._remaining = 0
        self._failed: RemoteProtocolError | None = None

    @property
    def in_payload(self) -> bool:
        return self._in_payload

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self._direct is not None:
            raise LocalProtocolError("receive_data called before the last piece was used")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after end of stream")
        if self._in_payload and not self._buf:
            self._direct = memoryview(data)
        else:
            self._buf += data

    def next_event(self) -> Event:
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def _next_event(self) -> Event:
        if self._in_payload:
            return self._payload_event()
        if len(self._buf) < PREFIX_SIZE:
            return self._need_data("frame prefix")
        msg_type, header_len, payload_len = parse_prefix(
            memoryview(self._buf)[:PREFIX_SIZE], self.max_header, self.max_payload
        )
        end = PREFIX_SIZE + header_len
        if len(self._buf) < end:
            return self._need_data("frame header")
        message = parse_header(msg_type, bytes(self._buf[PREFIX_SIZE:end]), payload_len)
        del self._buf[:end]
        self._in_payload = True
        self._remaining = payload_len
        return message

    def _payload_event(self) -> Event:
        if self._remaining == 0:
            self._in_payload = False
            if self._direct is not None:  # the next frame starts inside the direct piece
                self._buf += self._direct
                self._direct = None
            return _END
        if self._buf:
            n = min(len(self._buf), self._remaining)
            piece: bytes | memoryview = bytes(self._buf[:n])
            del self._buf[:n]
        elif self._direct is not None:
            n = min(len(self._direct), self._remaining)
            piece = self._direct[:n]
            rest = self._direct[n:]
            self._direct = rest if len(rest) else None
        else:
            return self._need_data("frame payload")
        self._remaining -= n
        return PayloadData(piece)

    def _need_data(self, what: str) -> Event:
        if self._eof:
            if not self._in_payload and not self._buf:
                return _CLOSED
            raise RemoteProtocolError(f"connection closed in the middle of a {what}")
        return NEED_DATA
