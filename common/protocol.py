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
Lengths are checked before anything is allocated, the header's against
both the decoder's limit and its type's (the ``max_header`` column of the
message table), and every header is checked against the message table, so
a bad frame is a :class:`RemoteProtocolError` and never a half-built message.

A receiver that meters its memory looks at a frame before its header is
buffered and again before it is parsed: :meth:`FrameDecoder.peek` gives the
validated prefix (type and lengths) as soon as its 16 bytes are in,
:meth:`FrameDecoder.header_cost` an estimate of what parsing the header will
allocate once all of it is in (:func:`parse_cost`), and
:meth:`FrameDecoder.refuse_header` drops that header unparsed: the decoder
then skips its bytes and gives a :class:`RefusedFrame` in place of the
message, followed by the payload as usual, so the connection stays in step.
The decoder keeps no clock; deadlines are the transport's.

Payload pieces are zero-copy where possible: a piece may be a memoryview
into the buffer last passed to ``receive_data`` and is valid only until the
next call to it.  Consumers use each piece before asking for more bytes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from common.errors import InvalidRequest, LocalProtocolError, NotAFrame, RemoteProtocolError
from common.messages import SPECS, Message, MsgType
from common.names import undecodable

MAGIC: Final = b"FC"
VERSION: Final = 1
PREFIX = struct.Struct(">2sBBIQ")
PREFIX_SIZE: Final = PREFIX.size  # 16

# the codec's own limits when it is given none (what a side reading replies accepts); each
# daemon passes the stricter limits of common.limits for the requests it receives
DEFAULT_MAX_HEADER: Final = 16 * 1024 * 1024
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class FrameHead:
    """A frame's validated prefix: what is arriving, before its header is buffered."""

    type: MsgType
    header_len: int
    payload_len: int


@dataclass(frozen=True)
class RefusedFrame:
    """In place of the message of a frame whose header the receiver refused (its payload follows)."""

    type: MsgType
    payload_len: int


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

Event = Message | RefusedFrame | PayloadData | EndOfFrame | ConnectionClosed | _NeedData

_END = EndOfFrame()
_CLOSED = ConnectionClosed()


def encode_header(header: Mapping[str, Any]) -> bytes:
    text = _json_text(header)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # text from bytes of another encoding (surrogateescape)
        start, end = text.rfind('"', 0, exc.start) + 1, text.find('"', exc.end)
        raise InvalidRequest(f"{undecodable(text[start:end])} is not valid UTF-8") from None


def _json_text(header: Mapping[str, Any]) -> str:
    try:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"header is not JSON: {exc}") from exc


def header_limit(msg_type: MsgType, max_header: int) -> int:
    """The most header bytes a frame of ``msg_type`` may carry, given a side's own limit."""
    own = SPECS[msg_type].max_header
    return max_header if own is None else min(own, max_header)


def encode_message(message: Message, *, max_header: int = DEFAULT_MAX_HEADER) -> bytes:
    """The head of a frame (prefix + header).  The caller sends the payload after it."""
    body = encode_header(message.header)
    limit = header_limit(message.type, max_header)
    if len(body) > limit:
        raise LocalProtocolError(f"{message.type.name} header of {len(body)} bytes exceeds the {limit} limit")
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
        if bytes(prefix[:5]) == b"HTTP/":  # e.g. a link gateway's port given for the proxy's
            raise NotAFrame("not a filecluster frame: the peer answered in HTTP")
        raise NotAFrame("not a filecluster frame (bad magic)")
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise RemoteProtocolError(f"unknown message type 0x{raw_type:02x}") from None
    limit = header_limit(msg_type, max_header)
    if header_len > limit:
        raise RemoteProtocolError(f"{msg_type.name} header of {header_len} bytes exceeds the {limit} limit")
    if payload_len > max_payload:
        raise RemoteProtocolError(f"payload of {payload_len} bytes exceeds the {max_payload} limit")
    return msg_type, header_len, payload_len


def decode_header(msg_type: MsgType, body: bytes | bytearray | memoryview) -> str:
    """The header's text: the one copy of its bytes that parsing needs."""
    try:
        return str(body, "utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{msg_type.name} header is not UTF-8 JSON") from None


def parse_header(
    msg_type: MsgType, body: bytes | bytearray | str, payload_len: int, *, from_utf8: bool = False
) -> Message:
    """The message a header carries.  ``from_utf8``: ``body`` is text that :func:`decode_header`
    made (so it holds no lone surrogate of its own; bytes are decoded here, the same way)."""
    if not isinstance(body, str):
        body, from_utf8 = decode_header(msg_type, body), True
    try:
        header = json.loads(body)
    except (ValueError, RecursionError):
        raise RemoteProtocolError(f"{msg_type.name} header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise RemoteProtocolError(f"{msg_type.name} header is not a JSON object")
    if from_utf8 and _SURROGATE_ESCAPE.search(body) is None:
        _check_numbers(header, msg_type, 0)  # no string can hold a lone surrogate: not one is looked at
    else:
        _check_json(header, msg_type, 0)
    try:
        return Message(msg_type, header, payload_len)  # validates against the message table
    except LocalProtocolError as exc:  # ...and what fails to fit came from the peer
        raise RemoteProtocolError(str(exc)) from None


# What parsing a header allocates, measured with CPython 3.11 (VmHWM while a FrameDecoder parses a
# 4.6 MB header, less its raw bytes): the decoded text (a byte per byte of ASCII), the strings in it
# (up to a byte more), and per value ~35 bytes for `[{},{},...]`, ~63 for a real manifest and ~131
# for `{"k1":0,"k2":0,...}` (a key costs a string, a dict slot and, while parsing, a slot in the
# key memo).  Every value but the first follows a `,`, `[` or `{`, so counting those (inside
# strings too) bounds the number of values.
PARSE_BYTES_PER_BYTE: Final = 2
PARSE_BYTES_PER_VALUE: Final = 144


def parse_cost(data: bytes | bytearray, start: int = 0, end: int | None = None) -> int:
    """An upper estimate of the memory parsing ``data[start:end]`` as a header takes, in bytes.

    For 4.6 MB of header: a manifest of 50 000 chunks, ~34 MiB (it takes ~18 MiB); `{"k1":0,...}`,
    ~76 MiB (70 MiB); `[{},{},...]`, ~450 MiB (116 MiB); one long string, 9 MiB (8 MiB).
    Cheap: three scans in C, no copy."""
    end = len(data) if end is None else end
    values = 1 + sum(data.count(c, start, end) for c in (b",", b"[", b"{"))
    return PARSE_BYTES_PER_BYTE * (end - start) + PARSE_BYTES_PER_VALUE * values


MAX_DEPTH: Final = 6
MAX_INT: Final = 2**63 - 1


# text decoded from UTF-8 holds no lone surrogate; JSON can make one only from an escape, \uD800 to
# \uDFFF.  Not every match is one (an escaped backslash, then "ud8..."): every string is then checked
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _check_numbers(value: dict[str, Any] | list[Any], msg_type: MsgType, depth: int) -> None:
    """:func:`_check_json` for a header none of whose strings can hold a lone surrogate: the same
    checks of nesting and numbers, without a look at each string (a third of the time, for a
    header of many small values: this check had cost more than parsing the header)."""
    if depth >= MAX_DEPTH:
        raise RemoteProtocolError(f"{msg_type.name} header is nested too deeply")
    items: Iterable[Any] = value.values() if isinstance(value, dict) else value
    for item in items:
        kind = type(item)
        if kind is int:
            if not -MAX_INT <= item <= MAX_INT:
                raise RemoteProtocolError(f"{msg_type.name} header has a number out of range")
        elif kind is dict or kind is list:
            _check_numbers(item, msg_type, depth + 1)
        elif kind is float and not math.isfinite(item):
            raise RemoteProtocolError(f"{msg_type.name} header has a number out of range")


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
        # why the stream failed; kept as text, since the exception's traceback would hold the
        # decoder (through the frames it was raised in) and whatever those frames held, in a cycle
        self._failed: str | None = None
        self._head: FrameHead | None = None  # the frame whose header is arriving
        self._cost: int | None = None  # its parse cost, once all of its header is in
        self._refused = False  # its header is being skipped
        self._skip = 0  # header bytes still to skip

    @property
    def in_payload(self) -> bool:
        return self._in_payload

    @property
    def frame_started(self) -> bool:
        """True once any byte of a frame has arrived, until that frame has been handed out whole."""
        return self._in_payload or self._head is not None or bool(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if self._direct is not None:
            raise LocalProtocolError("receive_data called before the last piece was used")
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after end of stream")
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = memoryview(data)[skipped:]
            if not data:
                return
        if self._in_payload and not self._buf:
            self._direct = memoryview(data)
        else:
            self._buf += data

    def peek(self) -> FrameHead | None:
        """The validated prefix of the frame arriving, from when its 16 bytes are in until its header
        has been parsed or refused; None between frames and inside a payload."""
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        if self._head is None and not self._in_payload and len(self._buf) >= PREFIX_SIZE:
            try:
                msg_type, header_len, payload_len = parse_prefix(
                    memoryview(self._buf)[:PREFIX_SIZE], self.max_header, self.max_payload
                )
            except RemoteProtocolError as exc:
                self._failed = str(exc)
                raise
            self._head = FrameHead(msg_type, header_len, payload_len)
        return None if self._refused else self._head

    def header_cost(self) -> int | None:
        """:func:`parse_cost` of the arriving header, once all of it is in and until it is parsed."""
        head = self.peek()
        if head is None or len(self._buf) < PREFIX_SIZE + head.header_len:
            return None
        if self._cost is None:
            self._cost = parse_cost(self._buf, PREFIX_SIZE, PREFIX_SIZE + head.header_len)
        return self._cost

    def refuse_header(self) -> None:
        """Skip the arriving header unparsed; :meth:`next_event` then gives a :class:`RefusedFrame`."""
        head = self.peek()
        if head is None:
            raise LocalProtocolError("no frame header is arriving")
        here = min(len(self._buf) - PREFIX_SIZE, head.header_len)
        del self._buf[: PREFIX_SIZE + here]
        self._skip = head.header_len - here
        self._refused = True

    def next_event(self) -> Event:
        if self._failed is not None:
            raise RemoteProtocolError(self._failed)
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._failed = str(exc)
            raise

    def _next_event(self) -> Event:
        if self._in_payload:
            return self._payload_event()
        head = self.peek() if not self._refused else self._head
        if head is None:
            return self._need_data("frame prefix")
        if self._refused:
            if self._skip:
                return self._need_data("frame header")
            self._start_payload(head)
            return RefusedFrame(head.type, head.payload_len)
        end = PREFIX_SIZE + head.header_len
        if len(self._buf) < end:
            return self._need_data("frame header")
        # the text is the one copy of the header; the buffer is let go before parsing (released
        # views, even on an error, so it can be resized)
        with memoryview(self._buf) as view, view[PREFIX_SIZE:end] as body:
            text = decode_header(head.type, body)
        del self._buf[:end]
        self._start_payload(head)
        return parse_header(head.type, text, head.payload_len, from_utf8=True)

    def _start_payload(self, head: FrameHead) -> None:
        self._head, self._cost, self._refused = None, None, False
        self._in_payload = True
        self._remaining = head.payload_len

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
            if not self.frame_started:
                return _CLOSED
            raise RemoteProtocolError(f"connection closed in the middle of a {what}")
        return NEED_DATA
