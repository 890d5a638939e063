"""Frame deadlines without sockets: a fake clock and a real decoder in, the next read's timeout out."""

from __future__ import annotations

import pytest

from common.deadlines import HEAD, IDLE, PAYLOAD, FrameDeadlines, FrameTimer
from common.messages import Message, MsgType
from common.protocol import FrameDecoder, encode

DEADLINES = FrameDeadlines(head=10, payload=30, min_rate=1000, idle=300)


def test_a_frame_is_timed_as_a_whole_and_idleness_between_frames_is_not() -> None:
    now = [100.0]
    timer = FrameTimer(DEADLINES, clock=lambda: now[0])
    decoder = FrameDecoder()
    assert (timer.timeout(decoder, 0), timer.phase) == (300, IDLE)
    frame = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 5000}, b"x" * 5000)
    decoder.receive_data(frame[:1])  # the first byte
    assert (timer.timeout(decoder, 0), timer.phase) == (10, HEAD)
    now[0] += 4
    decoder.receive_data(frame[1:20])  # the prefix: each byte of the header adds 1/1000 s
    header_len = len(frame) - 5000 - 16
    assert timer.timeout(decoder, 0) == pytest.approx(6 + header_len / 1000)
    now[0] += 7  # the peer trickles: each read waits only for what is left
    assert timer.timeout(decoder, 0) < 0
    decoder.receive_data(frame[20 : 16 + header_len])
    message = decoder.next_event()
    assert isinstance(message, Message)
    now[0] += 100  # the handler took its time before reading the payload: not the peer's fault
    assert (timer.timeout(decoder, message.payload_len), timer.phase) == (30 + 5, PAYLOAD)
    now[0] += 20
    assert timer.timeout(decoder, message.payload_len) == pytest.approx(15)
    timer.frame_done()
    timer.idle = 10  # a connection on probation
    assert (timer.timeout(FrameDecoder(), 0), timer.phase) == (10, IDLE)
