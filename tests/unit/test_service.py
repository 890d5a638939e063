"""The threaded frame server on real loopback sockets: dispatch, errors, containment, connection cap."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from common.errors import ConnectionLost, FileClusterError, InternalError, NotFound, RemoteProtocolError
from common.frame_server import FrameServer, Reply, Request, serve_in_thread
from common.limits import ServerLimits
from common.messages import MsgType
from common.transport import Connection


def ping(req: Request) -> Reply:
    return Reply({"pong": True})


def has_chunks(req: Request) -> Reply:
    raise NotFound("nothing here")


def crash(req: Request) -> Reply:
    raise RuntimeError("a bug")


@pytest.fixture
def server() -> Iterator[FrameServer]:
    srv = FrameServer(
        ("127.0.0.1", 0),
        {MsgType.PING: ping, MsgType.HAS_CHUNKS: has_chunks, MsgType.GET_CHUNK: crash},
        max_header=4096,
        max_payload=4096,
        limits=ServerLimits(max_connections=3, reserved=0),
    )
    serve_in_thread(srv, "test")
    yield srv
    srv.stop()


def connect(srv: FrameServer) -> Connection:
    return Connection.connect("127.0.0.1", srv.port, timeout=5)


def test_errors_are_replies_and_the_connection_goes_on(server: FrameServer) -> None:
    with connect(server) as conn:
        assert conn.request(MsgType.PING, {}) == {"pong": True}
        with pytest.raises(NotFound, match="nothing here"):
            conn.request(MsgType.HAS_CHUNKS, {"ids": []})
        assert conn.request(MsgType.PING, {}) == {"pong": True}


def test_a_bug_answers_internal_and_closes_only_that_connection(server: FrameServer) -> None:
    with connect(server) as bystander, connect(server) as conn:
        with pytest.raises(InternalError, match="internal error"):
            conn.request(MsgType.GET_CHUNK, {"id": "a" * 64})
        with pytest.raises(ConnectionLost):
            conn.request(MsgType.PING, {})
        assert bystander.request(MsgType.PING, {}) == {"pong": True}


def test_requests_the_server_does_not_take_are_refused(server: FrameServer) -> None:
    with connect(server) as conn, pytest.raises(RemoteProtocolError, match="not a request this server"):
        conn.request(MsgType.LOGIN, {"user": "a", "password": "b"})


def test_connections_past_the_cap_are_refused_and_the_rest_keep_working(server: FrameServer) -> None:
    held = [connect(server) for _ in range(3)]
    for conn in held:
        assert conn.request(MsgType.PING, {}) == {"pong": True}
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
        assert extra.recv(1) == b""  # closed at once
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the close, then has room again
        try:
            with connect(server) as late:
                assert late.request(MsgType.PING, {}) == {"pong": True}
            break
        except FileClusterError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    for conn in held:
        assert conn.request(MsgType.PING, {}) == {"pong": True}
        conn.close()
