"""gateway.http: request heads in (whole, byte by byte, fuzzed), response heads out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.messages import MsgType
from common.protocol import encode
from gateway.http import (
    MAX_HEAD,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    BodyCounter,
    HttpError,
    RequestHead,
    RequestParser,
    render_head,
)

GOOD = b"GET /s/abc?info HTTP/1.1\r\nHost: example\r\nRange:  bytes=0-9 \r\nX-A: 1\r\nx-a: 2\r\n\r\n"


def parse(data: bytes, step: int | None = None) -> RequestHead | None:
    parser = RequestParser()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.receive_data(piece)
    return parser.next_event()


def status_of(data: bytes) -> int:
    with pytest.raises(HttpError) as info:
        parse(data)
    return info.value.status


@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_request_head_whole_or_in_pieces(step: int | None) -> None:
    head = parse(GOOD + b"trailing body bytes", step)
    assert head is not None
    assert (head.method, head.target, head.version) == ("GET", "/s/abc?info", "1.1")
    assert (head.path, head.query) == ("/s/abc", "info")
    assert head.header("RANGE") == "bytes=0-9"
    assert head.header("x-a") == "1, 2"
    assert head.header("missing") is None


def test_incomplete_head_needs_more_data() -> None:
    assert parse(GOOD[:-2]) is None
    assert parse(b"") is None


def test_bare_newlines_leading_blank_lines_and_absolute_form() -> None:
    head = parse(b"\r\n\nHEAD http://h:1/s/x?view HTTP/1.0\n\n")
    assert head is not None and (head.method, head.target, head.version) == ("HEAD", "/s/x?view", "1.0")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /s/x\r\n\r\n", 400),
        (b"GET  /s/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"G(T /s/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /s/x HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"GET /s/x HTTX/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET *x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /s/x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /s/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /s/x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),
        (b"GET /s/x HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", 400),
        (b"GET /s/x HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", 400),
        (b"GET /s/x HTTP/1.1\r\nHost: h\r\nA: b\x00c\r\n\r\n", 400),
        (b"GET /s/\xff HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ],
)
def test_malformed_heads(data: bytes, status: int) -> None:
    assert status_of(data) == status


@pytest.mark.parametrize(
    "data",
    [
        encode(MsgType.REGISTER, {"user": "ana", "password": "secret"}),  # filecluster's own protocol
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /s/\x00",  # a control byte before the request line ends
    ],
)
def test_what_cannot_be_an_http_request_is_refused_before_its_line_ends(data: bytes) -> None:
    """400 at once, so a client of another protocol hears back now, not at the head deadline."""
    assert b"\n" not in data[:12] and status_of(data[:12]) == 400


def test_limits() -> None:
    assert status_of(b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\n") == 414
    assert status_of(b"GET /" + b"a" * MAX_REQUEST_LINE) == 414  # refused before its end arrives
    line = b"X: " + b"v" * MAX_HEADER_LINE + b"\r\n"
    assert status_of(b"GET / HTTP/1.1\r\n" + line) == 431
    many = b"".join(b"X%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n") == 431
    big = b"".join(b"X%d: %s\r\n" % (i, b"v" * 4000) for i in range(5))
    assert status_of(b"GET / HTTP/1.1\r\nHost: h\r\n" + big + b"\r\n") == 431
    # exactly at the limits is fine
    assert parse(b"GET /" + b"a" * (MAX_REQUEST_LINE - 14) + b" HTTP/1.1\r\nHost: h\r\n\r\n") is not None


def test_an_error_sticks_and_later_bytes_are_ignored() -> None:
    parser = RequestParser()
    parser.receive_data(b"BAD\r\n")
    parser.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(HttpError):
        parser.next_event()
    assert parser.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12))
def test_fuzz_arbitrary_bytes(pieces: list[bytes]) -> None:
    parser = RequestParser()
    for piece in pieces:
        parser.receive_data(piece)
        assert parser.buffered <= MAX_HEAD + 2 + len(piece)
        try:
            head = parser.next_event()
        except HttpError as exc:
            assert exc.status in (400, 414, 431, 505)
            return
        if head is not None:
            assert len(head.headers) <= MAX_HEADERS
            assert head.target.startswith("/")
            return


line_chars = st.sampled_from([b"GET", b" ", b"/", b"s", b"\r\n", b"\n", b":", b"Host", b"HTTP/1.1", b"\t"])


@settings(max_examples=300, deadline=None)
@given(st.lists(line_chars, max_size=60), st.integers(1, 5))
def test_fuzz_near_valid_heads(parts: list[bytes], step: int) -> None:
    data = b"".join(parts)
    try:
        head = parse(data, step)
    except HttpError as exc:
        assert 400 <= exc.status < 600
        return
    try:
        whole = parse(data)
    except HttpError:
        whole = None
    assert head == whole  # how the bytes were cut makes no difference


def test_render_head_and_refuses_header_injection() -> None:
    data = render_head(206, [("Content-Range", "bytes 0-0/1"), ("ETag", '"x"')])
    assert data == b'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1\r\nETag: "x"\r\n\r\n'
    with pytest.raises(ValueError):
        render_head(200, [("X", "a\r\nSet-Cookie: x")])
    with pytest.raises(ValueError):
        render_head(200, [("Bad Name", "v")])


def test_body_counter_refuses_a_byte_too_many() -> None:
    counter = BodyCounter(10)
    counter.count(6)
    counter.count(4)
    assert counter.owed == 0
    with pytest.raises(ValueError):
        counter.count(1)
