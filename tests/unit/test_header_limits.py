"""The codec's side of bounded headers: a limit per message type checked from the prefix, the
decoder's look at a header before it is buffered and before it is parsed, a refused header skipped
in step, the parse-cost estimate against what parsing really allocates, and no reference cycle
keeping a failed frame's header alive."""

from __future__ import annotations

import gc
import json
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from common.errors import LocalProtocolError, RemoteProtocolError
from common.limits import CREDENTIALS_HEADER, MAX_CHUNKS_PER_FILE, SMALL_HEADER, UPLOAD_BEGIN_HEADER
from common.messages import SPECS, Message, MsgType
from common.protocol import (
    DEFAULT_MAX_HEADER,
    NEED_DATA,
    PREFIX,
    EndOfFrame,
    FrameDecoder,
    FrameHead,
    PayloadData,
    RefusedFrame,
    encode,
    encode_message,
    header_limit,
    parse_cost,
)


def prefix(msg_type: MsgType, header_len: int, payload_len: int = 0) -> bytes:
    return PREFIX.pack(b"FC", 1, msg_type, header_len, payload_len)


def manifest(chunks: int, **dumps: Any) -> bytes:
    """An UPLOAD_BEGIN header of ``chunks`` chunks of the largest chunk size, as bytes."""
    header = {
        "session": "s" * 43,
        "name": "big.bin",
        "size": chunks * 67108864,
        "sha1": "0" * 40,
        "chunk_size": 67108864,
        "chunks": [[f"{i:064x}", 67108864] for i in range(chunks)],
    }
    return json.dumps(header, **dumps).encode()


def test_every_request_type_has_a_limit_and_replies_take_the_receivers() -> None:
    for msg_type, spec in SPECS.items():
        if msg_type in (MsgType.OK, MsgType.ERROR, MsgType.CHUNK_DATA):
            assert spec.max_header is None
            assert header_limit(msg_type, DEFAULT_MAX_HEADER) == DEFAULT_MAX_HEADER
        else:
            assert spec.max_header is not None and spec.max_header <= UPLOAD_BEGIN_HEADER
    assert header_limit(MsgType.LOGIN, 1024) == 1024  # the receiver's own limit still caps a type's


@pytest.mark.parametrize(
    ("msg_type", "limit"),
    [(MsgType.LOGIN, CREDENTIALS_HEADER), (MsgType.HELLO, SMALL_HEADER), (MsgType.PING, SMALL_HEADER)],
)
def test_a_header_over_its_types_limit_is_refused_from_the_prefix_alone(
    msg_type: MsgType, limit: int
) -> None:
    decoder = FrameDecoder()  # whose own limit is 16 MiB
    decoder.receive_data(prefix(msg_type, limit + 1))
    with pytest.raises(
        RemoteProtocolError, match=f"{msg_type.name} header of {limit + 1} bytes exceeds the {limit}"
    ):
        decoder.next_event()
    assert len(decoder._buf) == 16  # nothing buffered beyond the prefix, nothing allocated for it
    ok = FrameDecoder()
    ok.receive_data(prefix(msg_type, limit))
    assert ok.next_event() is NEED_DATA


def test_a_password_of_1024_escaped_characters_fits_a_login() -> None:
    body = json.dumps({"user": "a" * 32, "password": "\U0001f511" * 1024}).encode()  # \ud83d\udd11 each
    assert len(body) <= CREDENTIALS_HEADER
    decoder = FrameDecoder()
    decoder.receive_data(prefix(MsgType.LOGIN, len(body)) + body)
    assert isinstance(decoder.next_event(), Message)


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
def test_a_manifest_of_the_most_chunks_fits_upload_begin(separators: tuple[str, str]) -> None:
    body = manifest(MAX_CHUNKS_PER_FILE, separators=separators)
    assert len(body) <= UPLOAD_BEGIN_HEADER
    message = Message(MsgType.UPLOAD_BEGIN, json.loads(body))
    assert len(encode_message(message)) > 3_900_000  # the encoder takes it too


def test_the_encoder_refuses_more_than_a_types_limit() -> None:
    with pytest.raises(LocalProtocolError, match=r"LOGIN header of \d+ bytes exceeds the 16384 limit"):
        encode(MsgType.LOGIN, {"user": "ana", "password": "x" * CREDENTIALS_HEADER})


# -- looking at a header before it is buffered and before it is parsed ----------------------------


def test_peek_gives_the_prefix_and_header_cost_waits_for_the_whole_header() -> None:
    frame = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 3}, b"abc")
    decoder = FrameDecoder()
    decoder.receive_data(frame[:15])
    assert decoder.peek() is None and decoder.frame_started
    decoder.receive_data(frame[15:20])
    head = decoder.peek()
    assert head == FrameHead(MsgType.PUT_CHUNK, len(frame) - 19, 3)
    assert decoder.header_cost() is None  # not all of it is here
    decoder.receive_data(frame[20:])
    body = frame[16:-3]
    assert decoder.header_cost() == parse_cost(body)
    assert isinstance(decoder.next_event(), Message)
    assert decoder.peek() is None  # the header is parsed: inside the payload now
    assert decoder.next_event() == PayloadData(b"abc")


def events(decoder: FrameDecoder) -> Iterator[Any]:
    while (event := decoder.next_event()) is not NEED_DATA:
        yield bytes(event.data) if isinstance(event, PayloadData) else event


@pytest.mark.parametrize("piece", [1, 7, 4096], ids=["byte by byte", "7 bytes", "whole"])
@pytest.mark.parametrize("when", ["prefix", "header"], ids=["refused at its prefix", "refused whole"])
def test_a_refused_header_is_skipped_and_the_stream_stays_in_step(piece: int, when: str) -> None:
    refused = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 5, "ticket": {}}, b"hello")
    after = encode(MsgType.PING, {})
    stream = refused + after
    decoder = FrameDecoder()
    got: list[Any] = []
    for start in range(0, len(stream), piece):
        decoder.receive_data(stream[start : start + piece])
        head = decoder.peek()
        refusing = head is not None and head.type is MsgType.PUT_CHUNK
        if refusing and (when == "prefix" or decoder.header_cost() is not None):
            decoder.refuse_header()
        got.extend(events(decoder))
    pieces = [g for g in got if isinstance(g, bytes)]
    others = [g for g in got if not isinstance(g, bytes)]
    assert b"".join(pieces) == b"hello"  # the payload still arrives, to be read or skipped
    assert others == [
        RefusedFrame(MsgType.PUT_CHUNK, 5),
        EndOfFrame(),
        Message(MsgType.PING, {}),
        EndOfFrame(),
    ]


def test_a_refused_header_cut_off_by_the_peer_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(MsgType.UPLOAD_BEGIN, 100_000) + b"{")
    decoder.refuse_header()
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle of a frame header"):
        decoder.next_event()


# -- the parse-cost estimate ------------------------------------------------------------------------


def shapes(size: int) -> dict[str, bytes]:
    return {
        "keys": ("{" + ",".join(f'"{i:x}":0' for i in range(size // 8)) + "}").encode(),
        "key dicts": ("{" + ",".join(f'"{i:x}":{{}}' for i in range(size // 9)) + "}").encode(),
        "empty dicts": ('{"x":[' + ",".join(["{}"] * (size // 3)) + "]}").encode(),
        "empty lists": ('{"x":[' + ",".join(["[]"] * (size // 3)) + "]}").encode(),
        "short strings": ('{"x":[' + ",".join(['"ab"'] * (size // 5)) + "]}").encode(),
        "numbers": ('{"x":[' + ",".join(["123456789"] * (size // 10)) + "]}").encode(),
        "one string": ('{"x":"' + "é" * (size // 2) + '"}').encode(),
        "manifest": manifest(size // 80, separators=(",", ":")),
    }


@pytest.mark.parametrize("shape", list(shapes(10)))
def test_the_parse_cost_estimate_bounds_what_parsing_allocates(shape: str) -> None:
    body = shapes(300_000)[shape]
    tracemalloc.start()
    try:
        header = json.loads(str(body, "utf-8"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del header
    assert peak <= parse_cost(body)
    assert parse_cost(body) <= 5 * peak  # not absurdly pessimistic either (at worst `[{},...]`)


def test_a_frame_that_fails_to_parse_is_freed_at_once_not_by_the_cycle_collector() -> None:
    """The decoder keeps why it failed, not the exception: its traceback would hold the decoder
    (through the frame it was raised in) and so the header's text, in a cycle."""
    body = ('{"x":"' + "a" * 100_000 + '"}').encode()
    decoder = FrameDecoder()
    decoder.receive_data(prefix(MsgType.PING, len(body)) + body)
    gc.disable()
    try:
        with pytest.raises(RemoteProtocolError, match="PING header of 100008 bytes exceeds"):
            decoder.next_event()
        big = encode(MsgType.OK, {"x": "a" * 100_000})
        decoder = FrameDecoder()
        decoder.receive_data(big[:16] + b"[" + big[17:])  # not an object: fails once parsed
        with pytest.raises(RemoteProtocolError, match="not UTF-8 JSON"):
            decoder.next_event()
        with pytest.raises(RemoteProtocolError):  # and goes on failing, with the same reason
            decoder.peek()
        gone = weakref.finalize(decoder, lambda: None)
        del decoder
        assert not gone.alive
    finally:
        gc.enable()
