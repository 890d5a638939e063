"""The threaded frame server on real loopback sockets: dispatch, errors, containment, connection cap."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from common.cluster_auth import ClusterKey, server_audience
from common.errors import (
    AuthError,
    ConnectionLost,
    FileClusterError,
    InternalError,
    NotFound,
    RemoteProtocolError,
)
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
        {MsgType.HELLO: ping, MsgType.REGISTER: has_chunks, MsgType.LOGIN: crash},
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
        assert conn.request(MsgType.HELLO, {}) == {"pong": True}
        with pytest.raises(NotFound, match="nothing here"):
            conn.request(MsgType.REGISTER, {"user": "u", "password": "p"})
        assert conn.request(MsgType.HELLO, {}) == {"pong": True}


def test_a_bug_answers_internal_and_closes_only_that_connection(server: FrameServer) -> None:
    with connect(server) as bystander, connect(server) as conn:
        with pytest.raises(InternalError, match="internal error"):
            conn.request(MsgType.LOGIN, {"user": "u", "password": "p"})
        with pytest.raises(ConnectionLost):
            conn.request(MsgType.HELLO, {})
        assert bystander.request(MsgType.HELLO, {}) == {"pong": True}


def test_requests_the_server_does_not_take_are_refused(server: FrameServer) -> None:
    with connect(server) as conn, pytest.raises(RemoteProtocolError, match="not a request this server"):
        conn.request(MsgType.LIST, {"session": "s"})


KEY = ClusterKey(b"\x01" * 32)


@pytest.fixture
def cluster_server() -> Iterator[FrameServer]:
    """A frame server that takes PING, a message only the holders of the cluster secret may send."""
    srv = FrameServer(("127.0.0.1", 0), {MsgType.PING: ping}, max_header=4096, max_payload=4096, cluster=KEY)
    serve_in_thread(srv, "test")
    yield srv
    srv.stop()


def test_cluster_messages_need_a_fresh_mac_and_the_reply_is_signed(cluster_server: FrameServer) -> None:
    with connect(cluster_server) as conn:
        with pytest.raises(AuthError, match="must be authenticated"):
            conn.request(MsgType.PING, {})
        forged = ClusterKey(b"\x02" * 32).sign(MsgType.PING, {})  # another cluster's secret
        with pytest.raises(AuthError, match="not signed with this cluster's secret"):
            conn.request(MsgType.PING, forged)
        signed = KEY.sign(MsgType.PING, {})
        assert KEY.verify_reply(signed, conn.request(MsgType.PING, signed)) == {"pong": True}
        with pytest.raises(AuthError, match="replayed"):  # the same message again
            conn.request(MsgType.PING, signed)
        stale = ClusterKey(b"\x01" * 32, clock=lambda: time.time() - 3600).sign(MsgType.PING, {})
        with pytest.raises(AuthError, match="too old"):
            conn.request(MsgType.PING, stale)
        tampered = KEY.sign(MsgType.PING, {})
        tampered["auth"] = {**tampered["auth"], "ts": tampered["auth"]["ts"] + 1}  # a fresher time
        with pytest.raises(AuthError, match="not signed with this cluster's secret"):
            conn.request(MsgType.PING, tampered)
    with connect(cluster_server) as conn:  # a reply signed for another request is refused
        first, second = KEY.sign(MsgType.PING, {}), KEY.sign(MsgType.PING, {})
        reply = conn.request(MsgType.PING, first)
        with pytest.raises(AuthError, match="reply is not signed"):
            KEY.verify_reply(second, reply)


def test_a_cluster_message_is_for_the_one_server_it_was_signed_for() -> None:
    """Each server process remembers the nonces it has seen, and only those: a message the proxy
    signed for server 1, recorded on the wire, must not be accepted by server 2 (a DELETE_CHUNKS
    would delete server 2's copies).  Two keys of one secret, as in two processes."""
    servers = [
        FrameServer(
            ("127.0.0.1", 0),
            {MsgType.PING: ping},
            max_header=4096,
            max_payload=4096,
            cluster=ClusterKey(b"\x01" * 32),
            audience=server_audience(i),
        )
        for i in (1, 2)
    ]
    for srv in servers:
        serve_in_thread(srv, "test")
    try:
        for_one = KEY.sign(MsgType.PING, {}, to=server_audience(1))
        with connect(servers[1]) as conn:
            with pytest.raises(AuthError, match="not signed with this cluster's secret for server:2"):
                conn.request(MsgType.PING, for_one)
            with pytest.raises(AuthError, match="not signed with this cluster's secret for server:2"):
                conn.request(MsgType.PING, KEY.sign(MsgType.PING, {}))  # for nobody in particular
        with connect(servers[0]) as conn:
            assert KEY.verify_reply(for_one, conn.request(MsgType.PING, for_one)) == {"pong": True}
    finally:
        for srv in servers:
            srv.stop()


def test_a_storage_server_refuses_what_was_signed_before_it_started() -> None:
    """Its replay memory starts empty with its process, so a message from before (which the process
    before it may have taken) is refused; the proxy, which names no audience, still takes it."""
    started_later = ClusterKey(b"\x01" * 32, clock=lambda: time.time() + 5)  # as if started 5 s on
    before = KEY.sign(MsgType.PING, {}, to=server_audience(1))
    with pytest.raises(AuthError, match="signed before this process started"):
        started_later.verify(MsgType.PING, before, me=server_audience(1))
    assert started_later.verify(MsgType.PING, KEY.sign(MsgType.PING, {}))  # to the proxy: taken


def test_connections_past_the_cap_are_refused_and_the_rest_keep_working(server: FrameServer) -> None:
    held = [connect(server) for _ in range(3)]
    for conn in held:
        assert conn.request(MsgType.HELLO, {}) == {"pong": True}
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
        assert extra.recv(1) == b""  # closed at once
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the close, then has room again
        try:
            with connect(server) as late:
                assert late.request(MsgType.HELLO, {}) == {"pong": True}
            break
        except FileClusterError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    for conn in held:
        assert conn.request(MsgType.HELLO, {}) == {"pong": True}
        conn.close()
