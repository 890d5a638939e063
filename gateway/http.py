"""HTTP/1.1 request heads in, response heads out: pure, no sockets (the h11 shape).

Theory of operation
-------------------
A :class:`RequestParser` owns the framing state of one connection's request: feed it the bytes
that arrived (:meth:`RequestParser.receive_data`) and ask for the request
(:meth:`RequestParser.next_event`), which is ``None`` while the head is incomplete.  Every limit
is checked as bytes arrive, before more is buffered: the request line (at most
:data:`MAX_REQUEST_LINE` bytes, else 414), each header line (:data:`MAX_HEADER_LINE`, else 431),
the number of headers (:data:`MAX_HEADERS`, else 431) and the whole head (:data:`MAX_HEAD`,
else 431).  Anything that does not follow RFC 9112's grammar is an :class:`HttpError` carrying
the status to answer (400, or 505 for an HTTP version other than 1.x); nothing else is ever
raised, whatever the bytes (tests/unit/test_http_codec.py fuzzes it).

The gateway serves one request per connection (``Connection: close``), so the parser reads one
head and stops; GET and HEAD carry no body, and whatever follows the head is left unread.

Responses: :func:`render_head` turns a status and header pairs into bytes, refusing a header
name or value that could split the response (CR, LF, NUL); a :class:`BodyCounter` counts the
body bytes against the declared Content-Length, so a caller cannot send one byte too many.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

MAX_REQUEST_LINE: Final = 8 * 1024
MAX_HEADER_LINE: Final = 8 * 1024
MAX_HEADERS: Final = 64
MAX_HEAD: Final = 16 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_NOT_IN_A_REQUEST_LINE = re.compile(rb"[^\x20-\x7e\r\n]")  # control bytes, and none past ASCII
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class HttpError(Exception):
    """A request the gateway cannot take; ``status`` is the answer to send, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestHead:
    """One request line and its headers (names lower-cased, values stripped, in order)."""

    method: str
    target: str  # origin-form: "/s/TOKEN?info"
    version: str  # "1.1"
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case); several are joined with ", " (RFC 9110 5.3)."""
        name = name.lower()
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        """The target's path, still percent-encoded."""
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


class RequestParser:
    """Feed bytes, get one :class:`RequestHead` or an :class:`HttpError` (see the module docstring)."""

    def __init__(
        self,
        *,
        max_request_line: int = MAX_REQUEST_LINE,
        max_header_line: int = MAX_HEADER_LINE,
        max_headers: int = MAX_HEADERS,
        max_head: int = MAX_HEAD,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_header_line = max_header_line
        self.max_headers = max_headers
        self.max_head = max_head
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already searched for a line end
        self._consumed = 0  # head bytes taken as complete lines
        self._request_line: tuple[str, str, str] | None = None
        self._headers: list[tuple[str, str]] = []
        self._head: RequestHead | None = None
        self._error: HttpError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held, never more than the longest line allowed (plus one read's worth at most)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Take bytes that arrived; after the head (or an error) they are ignored."""
        if self._head is not None or self._error is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self._error = exc
            self._buffer = bytearray()

    def next_event(self) -> RequestHead | None:
        """The request once its head is complete; None while more bytes are needed."""
        if self._error is not None:
            raise self._error
        return self._head

    # -- the grammar ------------------------------------------------------------------------------
    def _limit(self) -> int:
        return self.max_request_line if self._request_line is None else self.max_header_line

    def _parse(self) -> None:
        while self._head is None:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                if self._request_line is None and _NOT_IN_A_REQUEST_LINE.search(self._buffer, self._scanned):
                    # not HTTP (a filecluster frame, TLS...): say so now, not at the head deadline
                    raise HttpError(400, "not an HTTP request")
                self._scanned = len(self._buffer)
                self._check_size(len(self._buffer))
                return
            line = bytes(self._buffer[:end])
            self._check_size(end + 1)
            del self._buffer[: end + 1]
            self._scanned = 0
            self._consumed += end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line(line)

    def _check_size(self, line_bytes: int) -> None:
        """A line (with its end) or a partial one must fit its limit, and the head its own."""
        if line_bytes > self._limit() + 2:
            if self._request_line is None:
                raise HttpError(414, f"the request line is longer than {self.max_request_line} bytes")
            raise HttpError(431, f"a header line is longer than {self.max_header_line} bytes")
        if self._consumed + line_bytes > self.max_head:
            raise HttpError(431, f"the request head is longer than {self.max_head} bytes")

    def _line(self, line: bytes) -> None:
        if self._request_line is None:
            if line:  # RFC 9112 2.2: empty lines before the request line are ignored
                self._request_line = _request_line(line)
            return
        if not line:
            method, target, version = self._request_line
            self._head = RequestHead(method, target, version, tuple(self._headers))
            _check_host(self._head)
            return
        if len(self._headers) >= self.max_headers:
            raise HttpError(431, f"more than {self.max_headers} header lines")
        self._headers.append(_header_line(line))


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "a malformed request line")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise HttpError(400, "a malformed method")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HttpError(400, "a malformed HTTP version")
    if match[1] != b"1":
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if _TARGET.fullmatch(target) is None:
        raise HttpError(400, "a malformed request target")
    text = target.decode("ascii")
    if not text.startswith("/"):  # absolute-form (RFC 9112 3.2.2): keep its path and query
        scheme = re.fullmatch(r"(?i)https?://[^/?#]*([/?].*)?", text)
        if scheme is None:
            raise HttpError(400, "a malformed request target")
        text = scheme[1] or "/"
        if text.startswith("?"):
            text = "/" + text
    return method.decode("ascii"), text.split("#", 1)[0], f"1.{match[2].decode()}"


def _header_line(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obsolete line folding in a header")
    name, colon, value = line.partition(b":")
    if not colon or _TOKEN.fullmatch(name) is None:
        raise HttpError(400, "a malformed header line")
    value = value.strip(b" \t")
    if _FIELD_VALUE.fullmatch(value) is None:
        raise HttpError(400, "a control character in a header value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _check_host(head: RequestHead) -> None:
    hosts = [value for name, value in head.headers if name == "host"]
    if len(hosts) > 1 or (head.version == "1.1" and not hosts):
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")


# -- responses ---------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[\r\n\x00]")


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A response's status line and headers, ended by the empty line."""
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    for name, value in headers:
        if _TOKEN.fullmatch(name.encode("latin-1", "replace")) is None or _UNSAFE.search(value):
            raise ValueError(f"an unsafe response header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BodyCounter:
    """The body bytes still owed against a Content-Length; a byte too many is refused."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.sent = 0

    @property
    def owed(self) -> int:
        return self.length - self.sent

    def count(self, n: int) -> None:
        if n > self.owed:
            raise ValueError(f"{n} bytes more than the {self.owed} the Content-Length leaves")
        self.sent += n
