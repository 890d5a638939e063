"""The client's proxy connection says plainly when the proxy closes it without answering.

A proxy that refuses a connection at its door (too many from this address, or in all:
common.admission) closes it unanswered; the user hears that the proxy may be full, not only that
"127.0.0.1:PORT closed the connection".  A fake proxy on a real loopback socket.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from client.proxy_link import ProxyLink
from common.errors import ConnectionLost
from common.messages import MsgType
from common.protocol import NEED_DATA, EndOfFrame, FrameDecoder, encode


def _fake_proxy(answers: int) -> tuple[socket.socket, threading.Thread]:
    """Accepts one connection, answers ``answers`` requests OK, then closes it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            decoder = FrameDecoder()
            for _ in range(answers):
                while True:
                    event = decoder.next_event()
                    if isinstance(event, EndOfFrame):
                        break
                    if event is NEED_DATA:
                        decoder.receive_data(conn.recv(65536))
                conn.sendall(encode(MsgType.OK, {}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.fixture
def closes_at_once() -> Iterator[int]:
    listener, thread = _fake_proxy(0)
    with listener:
        yield listener.getsockname()[1]
        thread.join(5)


def test_a_connection_closed_unanswered_says_the_proxy_may_be_full(closes_at_once: int) -> None:
    with ProxyLink("127.0.0.1", closes_at_once) as link, pytest.raises(ConnectionLost) as refused:
        link.call(MsgType.WHOAMI, session=True)
    text = str(refused.value)
    assert "closed the connection without answering" in text and "too many connections" in text
    assert "\n" not in text


def test_a_connection_closed_after_answers_says_only_that() -> None:
    listener, thread = _fake_proxy(1)
    with listener, ProxyLink("127.0.0.1", listener.getsockname()[1]) as link:
        assert link.call(MsgType.WHOAMI, session=True) == {}
        with pytest.raises(ConnectionLost) as closed:  # closed, or reset as our request came
            link.call(MsgType.WHOAMI, session=True)
        assert "without answering" not in str(closed.value)
        thread.join(5)
