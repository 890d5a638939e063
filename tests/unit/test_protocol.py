"""The codec, from one table of cases: decoding whole, byte by byte, with trailing garbage; and the
encoder's send-side framing (exactly the declared payload, no new frame while bytes are owed)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import LocalProtocolError, RemoteProtocolError
from common.messages import Message, MsgType
from common.protocol import (
    NEED_DATA,
    PREFIX,
    ConnectionClosed,
    EndOfFrame,
    FrameDecoder,
    FrameEncoder,
    PayloadData,
    encode,
    encode_message,
    parse_header,
)

CASES: list[tuple[MsgType, dict[str, Any], bytes]] = [
    (MsgType.PING, {}, b""),
    (MsgType.HELLO, {"client": "tests"}, b""),
    (MsgType.LOGIN, {"user": "ana", "password": "ñandú 🔑"}, b""),
    (MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 5, "ticket": {"exp": 1, "who": "w", "mac": "m"}}, b"hello"),
    (MsgType.CHUNK_DATA, {"id": "b" * 64, "size": 70000}, bytes(range(256)) * 273 + b"x" * 112),
    (MsgType.OK, {"files": [{"name": "x", "size": 1}], "n": None}, b""),
    (MsgType.ERROR, {"code": "not_found", "message": "no such file"}, b""),
]


def drain(decoder: FrameDecoder) -> list[Any]:
    """Every event available now, payload pieces joined per frame."""
    events: list[Any] = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events + ([event] if isinstance(event, ConnectionClosed) else [])
        if isinstance(event, PayloadData):
            data = bytes(event.data)
            if events and isinstance(events[-1], bytes):
                events[-1] += data
            else:
                events.append(data)
        else:
            events.append(event)


def expected(msg_type: MsgType, header: dict[str, Any], payload: bytes) -> list[Any]:
    return [Message(msg_type, header, len(payload)), *([payload] if payload else []), EndOfFrame()]


@pytest.mark.parametrize(("msg_type", "header", "payload"), CASES, ids=[c[0].name for c in CASES])
def test_whole(msg_type: MsgType, header: dict[str, Any], payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(msg_type, header, payload))
    assert drain(decoder) == expected(msg_type, header, payload)
    decoder.receive_data(b"")
    assert isinstance(decoder.next_event(), ConnectionClosed)


@pytest.mark.parametrize(("msg_type", "header", "payload"), CASES, ids=[c[0].name for c in CASES])
def test_byte_by_byte(msg_type: MsgType, header: dict[str, Any], payload: bytes) -> None:
    decoder = FrameDecoder()
    events: list[Any] = []
    for byte in encode(msg_type, header, payload):
        decoder.receive_data(bytes([byte]))
        events.extend(drain(decoder))
    merged: list[Any] = []
    for e in events:
        if isinstance(e, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += e
        else:
            merged.append(e)
    assert merged == expected(msg_type, header, payload)


@pytest.mark.parametrize(("msg_type", "header", "payload"), CASES, ids=[c[0].name for c in CASES])
def test_trailing_garbage(msg_type: MsgType, header: dict[str, Any], payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(msg_type, header, payload) + b"GARBAGE GARBAGE GARBAGE!")
    events = []
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        while True:
            event = decoder.next_event()
            events.append(event)
    assert events[0] == Message(msg_type, header, len(payload))
    assert isinstance(events[-1], EndOfFrame)
    with pytest.raises(RemoteProtocolError):  # a failed decoder stays failed
        decoder.next_event()


def test_all_cases_back_to_back_in_one_buffer() -> None:
    stream = b"".join(encode(*case) for case in CASES)
    decoder = FrameDecoder()
    decoder.receive_data(stream)
    want = [e for case in CASES for e in expected(*case)]
    assert drain(decoder) == want


def test_truncated_frame_is_an_error_at_eof() -> None:
    frame = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 5}, b"hello")
    for cut in (3, 20, len(frame) - 2):
        decoder = FrameDecoder()
        decoder.receive_data(frame[:cut])
        drain(decoder)
        decoder.receive_data(b"")
        with pytest.raises(RemoteProtocolError, match="closed in the middle"):
            drain(decoder)


def prefix(
    msg_type: int = MsgType.PING,
    header_len: int = 2,
    payload_len: int = 0,
    magic: bytes = b"FC",
    version: int = 1,
) -> bytes:
    return PREFIX.pack(magic, version, msg_type, header_len, payload_len)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (prefix(magic=b"HT"), "bad magic"),
        (prefix(version=9), "unsupported protocol version 9"),
        (prefix(msg_type=0xEE), "unknown message type 0xee"),
        (prefix(header_len=2**32 - 1), "header of 4294967295 bytes exceeds"),
        (prefix(msg_type=MsgType.PUT_CHUNK, payload_len=2**63), "payload of .* exceeds"),
        (prefix(header_len=3) + b"{x}", "not UTF-8 JSON"),
        (prefix(header_len=2) + b"[]", "not a JSON object"),
        (prefix(header_len=4) + b"\xff\xfe{}", "not UTF-8 JSON"),
        (prefix(MsgType.LOGIN, header_len=2) + b"{}", "lacks header field 'user'"),
        (prefix(MsgType.PING, header_len=7) + b'{"x":1}', "unknown header field 'x'"),
        (prefix(MsgType.PING, header_len=2, payload_len=1) + b"{}x", "may not carry a payload"),
        (prefix(MsgType.HAS_CHUNKS, header_len=11) + b'{"ids":"a"}', "'ids' must be list"),
        (prefix(MsgType.OK, header_len=406) + b'{"x":' + b"[" * 200 + b"]" * 200 + b"}", "nested too deeply"),
        (prefix(MsgType.LOGIN, header_len=32) + b'{"user":"\\ud800","password":"x"}', "not UTF-8"),
        (prefix(MsgType.OK, header_len=407) + b'{"n":' + b"9" * 401 + b"}", "out of range"),
        (
            prefix(MsgType.PUT_CHUNK, header_len=25, payload_len=1) + b'{"id":"aaaa","size":true}',
            "'size' must be int",
        ),
    ],
)
def test_bad_frames_are_refused(raw: bytes, error: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(raw)
    with pytest.raises(RemoteProtocolError, match=error):
        drain(decoder)


def test_lengths_are_checked_before_the_body_arrives() -> None:
    """An oversized header is refused from the 16-byte prefix alone: nothing is buffered for it."""
    decoder = FrameDecoder(max_header=1024, max_payload=4096)
    decoder.receive_data(prefix(header_len=1025))
    with pytest.raises(RemoteProtocolError, match="exceeds the 1024 limit"):
        decoder.next_event()
    decoder = FrameDecoder(max_header=1024, max_payload=4096)
    decoder.receive_data(prefix(MsgType.PUT_CHUNK, header_len=2, payload_len=4097))
    with pytest.raises(RemoteProtocolError, match="exceeds the 4096 limit"):
        decoder.next_event()


def test_payload_is_handed_out_in_pieces_not_whole() -> None:
    payload = b"z" * 10_000
    frame = encode(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": len(payload)}, payload)
    decoder = FrameDecoder()
    decoder.receive_data(frame[:5000])
    assert isinstance(decoder.next_event(), Message)
    first = decoder.next_event()
    assert isinstance(first, PayloadData) and 0 < len(first.data) < len(payload)
    assert decoder.next_event() is NEED_DATA


def test_local_side_cannot_send_invalid_messages() -> None:
    with pytest.raises(LocalProtocolError, match="lacks header field 'password'"):
        Message(MsgType.LOGIN, {"user": "ana"})
    with pytest.raises(LocalProtocolError, match="may not carry a payload"):
        encode(MsgType.PING, {}, b"x")
    with pytest.raises(LocalProtocolError, match="not JSON"):
        encode(MsgType.OK, {"x": object()})


def test_frame_layout_matches_the_spec() -> None:
    frame = encode(MsgType.PING, {})
    magic, version, msg_type, header_len, payload_len = struct.unpack(">2sBBIQ", frame[:16])
    assert (magic, version, msg_type, header_len, payload_len) == (b"FC", 1, 0x34, 2, 0)
    assert frame[16:] == b"{}"


# -- FrameEncoder: the sending direction's framing state ----------------------------------------

CHUNK = Message(MsgType.CHUNK_DATA, {"id": "c" * 64, "size": 10}, 10)


@pytest.mark.parametrize(("msg_type", "header", "payload"), CASES, ids=[c[0].name for c in CASES])
def test_encoder_frames_are_the_frames_the_decoder_reads(
    msg_type: MsgType, header: dict[str, Any], payload: bytes
) -> None:
    encoder = FrameEncoder()
    pieces = encoder.frame(Message(msg_type, header, len(payload)), payload)
    assert b"".join(pieces) == encode(msg_type, header, payload)
    assert encoder.owed == 0
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(pieces))
    assert drain(decoder) == expected(msg_type, header, payload)


def test_encoder_counts_the_payload_and_refuses_a_byte_more() -> None:
    encoder = FrameEncoder()
    assert encoder.head(CHUNK) == encode_message(CHUNK)
    assert encoder.owed == 10
    encoder.payload(4)
    with pytest.raises(LocalProtocolError, match=r"11 payload bytes.*room for 6"):
        encoder.payload(11)
    with pytest.raises(LocalProtocolError, match="room for 6"):
        encoder.payload(7)
    with pytest.raises(LocalProtocolError):
        encoder.payload(-1)
    assert encoder.owed == 6  # a refused count is not counted
    encoder.payload(6)
    with pytest.raises(LocalProtocolError, match="room for 0"):
        encoder.payload(1)  # the frame is complete: not one byte more
    assert encoder.head(Message(MsgType.PING, {})) == encode(MsgType.PING, {})


def test_encoder_refuses_a_new_frame_while_payload_is_owed() -> None:
    encoder = FrameEncoder()
    encoder.head(CHUNK)
    encoder.payload(3)
    for start in (
        lambda: encoder.head(Message(MsgType.PING, {})),
        lambda: encoder.frame(Message(MsgType.PING, {})),
        lambda: encoder.head(CHUNK),
    ):
        with pytest.raises(LocalProtocolError, match="while 7 payload bytes of the last are owed"):
            start()
    assert encoder.owed == 7
    encoder.payload(7)
    assert encoder.frame(Message(MsgType.PING, {})) == [encode(MsgType.PING, {})]


@pytest.mark.parametrize("payload", [b"", b"012345678", b"0123456789!"], ids=["none", "short", "long"])
def test_encoder_frame_refuses_a_payload_of_another_length(payload: bytes) -> None:
    encoder = FrameEncoder()
    with pytest.raises(LocalProtocolError, match=f"declares 10 payload bytes, got {len(payload)}"):
        encoder.frame(CHUNK, payload)
    assert encoder.owed == 0  # refused before its head was counted: the next frame is fine
    assert b"".join(encoder.frame(CHUNK, b"0123456789")) == encode_message(CHUNK) + b"0123456789"


def test_encoder_refuses_a_header_over_its_limit() -> None:
    encoder = FrameEncoder(max_header=100)
    with pytest.raises(LocalProtocolError, match="exceeds the 100 limit"):
        encoder.head(Message(MsgType.OK, {"x": "y" * 100}))
    assert encoder.owed == 0


# JSON texts as a hostile peer may write them: nesting, numbers at and past the limits, strings
# with escapes of lone surrogates (or of a backslash before "ud800"), pairs, raw non-ASCII
_scalars = st.one_of(
    st.sampled_from(
        [
            "1",
            "-9223372036854775807",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "1" * 30,
            "1.5",
            "1e308",
            "1e309",
            "-1e999",
            "NaN",
            "Infinity",
            "-Infinity",
            "true",
            "null",
            '"\\ud800"',
            '"\\uDC00x"',
            '"\\\\ud800"',
            '"\\ud83d\\ude00"',
            '"\\u00e9"',
            '"é漢"',
            '""',
        ]
    ),
    st.text(max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False)),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(_scalars.filter(lambda s: s.startswith('"')), inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=20,
)


def _verdict(text: str, *, from_utf8: bool) -> str:
    try:
        parse_header(MsgType.OK, text, 0, from_utf8=from_utf8)
    except RemoteProtocolError as exc:
        return str(exc)
    return "ok"


@settings(max_examples=400, deadline=None)
@given(st.lists(_values, min_size=1, max_size=3))
def test_the_quick_check_of_decoded_text_refuses_what_the_full_one_refuses(values: list[str]) -> None:
    """Text decoded from UTF-8 (no lone surrogate of its own) has its strings looked at only if an
    escape may make one: the verdict is the same as when every value is looked at."""
    text = "{" + ",".join(f'"k{i}":{v}' for i, v in enumerate(values)) + "}"
    assert _verdict(text, from_utf8=True) == _verdict(text, from_utf8=False)
