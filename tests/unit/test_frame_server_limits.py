"""The frame server's bounds on real loopback sockets: frame deadlines (not per read), the header
budget (busy, in step; too costly, closed), connections per address, the reserve and its
probation, and no request outliving its answer on an idle connection."""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from common.errors import AuthError, ConnectionLost, Unavailable
from common.frame_server import FrameServer, Reply, Request, serve_in_thread
from common.limits import ServerLimits
from common.messages import Auth, MsgType
from common.protocol import PREFIX, encode
from common.transport import Connection

seen: list[weakref.ref[Request]] = []


def hello(req: Request) -> Reply:
    seen.append(weakref.ref(req))
    return Reply({"pong": True})


def login(req: Request) -> Reply:
    return Reply({"user": req.header["user"]})


def put_chunk(req: Request) -> Reply:
    return Reply({"stored": [sum(len(piece) for piece in req.body)]})


def whoami(req: Request) -> Reply:
    return Reply({"user": req.user})


def authenticate(auth: Auth, req: Request) -> str:
    """A session "good" is ana's; any ticket will do."""
    seen.append(weakref.ref(req))
    if auth is Auth.TICKET and isinstance(req.header.get("ticket"), dict):
        return "a ticket's holder"
    if req.header.get("session") != "good":
        raise AuthError("not logged in")
    return "ana"


PASSWORD = {"user": "ana", "password": "x" * 1400}
HANDLERS = {MsgType.HELLO: hello, MsgType.LOGIN: login, MsgType.PUT_CHUNK: put_chunk, MsgType.WHOAMI: whoami}


def start(**limits: Any) -> FrameServer:
    settings: dict[str, Any] = {"head_deadline": 0.5, "payload_deadline": 0.5, "min_rate": 10**9, **limits}
    server = FrameServer(
        ("127.0.0.1", 0),
        HANDLERS,
        max_header=1600,
        max_payload=10_000,
        authenticate=authenticate,
        limits=ServerLimits(**settings),
    )
    serve_in_thread(server, "test")
    return server


@pytest.fixture
def server() -> Iterator[FrameServer]:
    srv = start()
    yield srv
    srv.stop()


def connect(srv: FrameServer, source: str = "127.0.0.1") -> Connection:
    return Connection.connect("127.0.0.1", srv.port, timeout=5, source_address=source)


def raw(srv: FrameServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_after(sock: socket.socket, data: bytes, interval: float) -> float:
    """Send ``data`` a byte every ``interval`` seconds; the seconds until the server closed."""
    started = time.monotonic()
    try:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(interval)
        sock.settimeout(5)
        assert sock.recv(1) == b""
    except OSError:  # reset: the server closed with a byte unread
        pass
    return time.monotonic() - started


def test_a_trickled_frame_is_closed_at_its_deadline_while_an_idle_connection_stays(
    server: FrameServer,
) -> None:
    with connect(server) as idle, raw(server) as trickler:
        took = closed_after(trickler, encode(MsgType.HELLO, {}), 0.1)  # 18 bytes over 1.8 s
        assert 0.45 <= took < 1.2
        time.sleep(0.2)
        assert idle.request(MsgType.HELLO, {}) == {"pong": True}  # idle 0.8 s: no deadline between frames


def test_a_trickled_payload_is_closed_at_its_deadline(server: FrameServer) -> None:
    with raw(server) as trickler:
        head = encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 40, "ticket": {}}, b"x" * 40)[:-40]
        trickler.sendall(head)
        assert 0.45 <= closed_after(trickler, b"x" * 40, 0.1) < 1.2


def test_a_deadline_grows_with_the_frame_so_a_slow_honest_sender_gets_through() -> None:
    srv = start(min_rate=1000)  # 0.5 s, plus a second per 1000 bytes of header
    try:
        with raw(srv) as sock:
            frame = encode(MsgType.LOGIN, PASSWORD)  # 1.4 kB: 1.9 s allowed
            for start_at in range(0, len(frame), 100):
                sock.sendall(frame[start_at : start_at + 100])
                time.sleep(0.06)  # ~1 s in all, twice the base deadline
            conn = Connection(sock)
            assert conn.read_reply(MsgType.LOGIN) == {"user": "ana"}
    finally:
        srv.stop()


def big_login(size: int) -> bytes:
    return json.dumps({"user": "ana", "password": "x" * (size - 32)}, separators=(",", ":")).encode()


def test_a_header_the_budget_cannot_take_now_is_answered_busy_and_the_connection_goes_on() -> None:
    srv = start(unmetered_header=100, receive_budget=4000, parse_budget=20_000, budget_wait=0.2)
    try:
        with raw(srv) as holder, connect(srv) as conn, connect(srv, "127.0.0.2") as other:
            holder.sendall(PREFIX.pack(b"FC", 1, MsgType.LOGIN, 1500, 0))  # then nothing
            time.sleep(0.1)  # 1687 of the 2000 one address may hold, for the head deadline
            body = big_login(1500)
            conn.sock.sendall(PREFIX.pack(b"FC", 1, MsgType.LOGIN, len(body), 0) + body)
            with pytest.raises(Unavailable, match="too many requests in flight"):  # Busy, on the wire
                conn.read_reply(MsgType.LOGIN)
            assert conn.request(MsgType.HELLO, {}) == {"pong": True}  # skipped in step
            assert other.request(MsgType.LOGIN, PASSWORD) == {"user": "ana"}
            time.sleep(0.5)  # the holder misses its deadline and lets go
            assert conn.request(MsgType.LOGIN, PASSWORD) == {"user": "ana"}
    finally:
        srv.stop()


def test_a_header_that_would_cost_more_than_the_whole_budget_closes_the_connection() -> None:
    srv = start(unmetered_header=100, receive_budget=4000, parse_budget=20_000)
    try:
        with connect(srv) as conn:
            many = ",".join(["{}"] * 450)
            body = ('{"user":"a","password":"b","x":[' + many + "]}").encode()  # 1.4 kB, ~68 kB to parse
            conn.sock.sendall(PREFIX.pack(b"FC", 1, MsgType.LOGIN, len(body), 0) + body)
            with pytest.raises(ConnectionLost):
                conn.read_reply(MsgType.LOGIN)
            assert srv.budget.receiving.used == srv.budget.parsing.used == 0
    finally:
        srv.stop()


def test_one_address_cannot_take_every_connection() -> None:
    srv = start(per_address=2)
    try:
        held = [connect(srv), connect(srv)]
        with raw(srv) as extra:
            assert extra.recv(1) == b""  # closed at once, unanswered
        with connect(srv, "127.0.0.2") as other:
            assert other.request(MsgType.HELLO, {}) == {"pong": True}
        for conn in held:
            assert conn.request(MsgType.HELLO, {}) == {"pong": True}
            conn.close()
    finally:
        srv.stop()


def test_the_reserve_serves_newcomers_briefly_and_keeps_those_that_authenticate() -> None:
    srv = start(max_connections=4, reserved=2, head_deadline=0.5, idle_timeout=30)
    try:
        squatters = [raw(srv, "127.0.0.3"), raw(srv, "127.0.0.3")]  # every ordinary slot, idle
        time.sleep(0.1)
        with connect(srv, "127.0.0.2") as anonymous:  # in the reserve, on probation
            for _ in range(3):  # PROBATION_REQUESTS anonymous requests...
                assert anonymous.request(MsgType.HELLO, {}) == {"pong": True}
            with pytest.raises(Unavailable, match="only a logged-in client may go on"):
                anonymous.request(MsgType.HELLO, {})  # ...then one more is answered...
            with pytest.raises(ConnectionLost):
                anonymous.request(MsgType.HELLO, {})  # ...and the connection closed
        with connect(srv, "127.0.0.2") as user:
            assert user.request(MsgType.HELLO, {}) == {"pong": True}  # a HELLO first, say
            assert user.request(MsgType.WHOAMI, {"session": "good"}) == {"user": "ana"}
            time.sleep(0.8)  # trusted: the idle timeout is the ordinary one again
            for _ in range(5):
                assert user.request(MsgType.HELLO, {}) == {"pong": True}
            with raw(srv, "127.0.0.4") as silent:  # on probation and silent: out at the head deadline
                silent.settimeout(5)
                started = time.monotonic()
                assert silent.recv(1) == b""
                assert 0.4 <= time.monotonic() - started < 1.5
        for sock in squatters:
            sock.close()
    finally:
        srv.stop()


def test_a_reserve_held_by_one_address_makes_room_for_a_user_from_another() -> None:
    """The ordinary slots held, the reserve by connections of one address that would reconnect
    as soon as they were closed: a user from another address still gets in and logs in."""
    srv = start(max_connections=4, reserved=2, head_deadline=5, idle_timeout=30)
    try:
        squatters = [raw(srv, "127.0.0.3"), raw(srv, "127.0.0.3")]  # every ordinary slot, idle
        time.sleep(0.1)
        flood = [raw(srv, "127.0.0.5"), raw(srv, "127.0.0.5")]  # the reserve, on probation
        time.sleep(0.1)
        with connect(srv, "127.0.0.2") as user:  # displaces the oldest of the flood
            assert user.request(MsgType.WHOAMI, {"session": "good"}) == {"user": "ana"}
            flood[0].settimeout(5)
            started = time.monotonic()
            assert flood[0].recv(1) == b""  # shut down at once, not at its head deadline
            assert time.monotonic() - started < 2
            with raw(srv, "127.0.0.5") as again:  # its address holds no more than the user's now
                again.settimeout(5)
                assert again.recv(1) == b""  # refused
        for sock in squatters + flood:
            sock.close()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("msg_type", "header"),
    [(MsgType.HELLO, {}), (MsgType.WHOAMI, {"session": "bad"})],
    ids=["answered", "refused at the door"],
)
def test_an_idle_connection_holds_nothing_of_its_last_request(
    server: FrameServer, msg_type: MsgType, header: dict[str, Any]
) -> None:
    seen.clear()
    with connect(server) as conn:
        gc.disable()  # only reference counting may free it, not the cycle collector
        try:
            with contextlib.suppress(AuthError):
                conn.request(msg_type, header)
            time.sleep(0.1)  # the server is waiting for the next frame now
            assert seen and all(ref() is None for ref in seen)
        finally:
            gc.enable()
