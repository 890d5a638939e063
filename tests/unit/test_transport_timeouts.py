"""The socket timeout behind frame deadlines (common.transport): set again only when a read could
outlast what is left of its deadline by more than READ_SLACK, and never ending a wait early."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from common.deadlines import FrameDeadlines
from common.errors import ConnectionLost, TooSlow
from common.messages import MsgType
from common.protocol import encode
from common.transport import READ_SLACK, Connection


class CountingSocket(socket.socket):
    """A socket that counts how often its timeout is set (each is a system call)."""

    settimeouts = 0

    def settimeout(self, value: float | None) -> None:
        self.settimeouts += 1
        super().settimeout(value)


@pytest.fixture
def pair() -> Iterator[tuple[CountingSocket, socket.socket]]:
    a, b = socket.socketpair()
    mine = CountingSocket(fileno=a.detach())
    try:
        yield mine, b
    finally:
        mine.close()
        b.close()


def server_side(sock: socket.socket, deadlines: FrameDeadlines, timeout: float) -> Connection:
    sock.settimeout(timeout)
    return Connection(sock, peer="test", deadlines=deadlines)


def test_many_frames_cost_few_timeout_changes(pair: tuple[CountingSocket, socket.socket]) -> None:
    mine, peer = pair
    conn = server_side(mine, FrameDeadlines(head=10, payload=30, min_rate=1e6, idle=30), 30)
    frame = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 200_000}, b"x" * 200_000)
    count = 50

    def send() -> None:
        for _ in range(count):
            for start in range(0, len(frame), 4096):  # many small pieces: many reads
                peer.sendall(frame[start : start + 4096])

    sender = threading.Thread(target=send)
    sender.start()
    before = mine.settimeouts
    buf = memoryview(bytearray(200_000))
    for _ in range(count):
        message = conn.receive()
        assert message.payload_len == 200_000
        conn.payload_into(buf)
    sender.join()
    # a read per 4 KiB piece would have set the timeout over 2,000 times; the head's deadline is
    # shorter than idleness, so at most one change a frame
    assert mine.settimeouts - before <= count


def test_idleness_is_waited_out_in_full_whatever_the_socket_had(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    mine, _peer = pair
    conn = server_side(mine, FrameDeadlines(head=10, payload=30, min_rate=1e6, idle=0.8), 0.1)
    began = time.monotonic()
    with pytest.raises(ConnectionLost):
        conn.receive()
    assert 0.8 - READ_SLACK <= time.monotonic() - began < 3


def test_a_stalled_head_is_cut_at_its_deadline_not_the_socket_timeout(
    pair: tuple[CountingSocket, socket.socket],
) -> None:
    mine, peer = pair
    conn = server_side(mine, FrameDeadlines(head=0.5, payload=30, min_rate=1e6, idle=30), 30)
    frame = encode(MsgType.PING, {})
    peer.sendall(frame[:3])  # the frame starts, then nothing
    began = time.monotonic()
    with pytest.raises(TooSlow):
        conn.receive()
    assert 0.4 <= time.monotonic() - began < 0.5 + READ_SLACK + 2
