"""Bounded resources against real daemons, attacked with raw sockets on 127.0.0.1.

The attacks that used to work: huge JSON headers that blew the proxy up to gigabytes and stayed,
idle connections that took every slot, a frame trickled a byte at a time and never closed.  The
legitimate client connects from 127.0.0.2 (FILECLUSTER_SOURCE_ADDRESS) while the attacker uses
127.0.0.1; the proxy's own connections to the storage servers come from 127.0.0.1 too, so the
servers are flooded only while nothing but downloads needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client
from common.limits import MAX_CHUNKS_PER_FILE, MIB, UPLOAD_BEGIN_HEADER
from common.messages import MsgType
from common.protocol import PREFIX, encode
from common.transport import Connection
from tests.cluster import CHUNK, Cluster, reset_peak_memory
from tests.conftest import new_user

ATTACKER = "127.0.0.1"
CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def resource_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of their own for the floods (default limits), so no other test shares its memory."""
    c = Cluster(tmp_path_factory.mktemp("resources")).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def from_client_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILECLUSTER_SOURCE_ADDRESS", CLIENT)


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def held_sockets() -> Iterator[list[socket.socket]]:
    """A list to put sockets in; every one is closed however the block ends."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def open_from(address: str, port: int, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        into.append(sock)
        sock.settimeout(5)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))


def round_trip(client: Client, folder: Path, size: int = 3 * CHUNK + 5) -> None:
    """Upload, list and download a file of ``size`` random bytes; all from this client's address."""
    data = os.urandom(size)
    src = folder / f"file-{size}-{time.monotonic_ns()}.bin"
    src.write_bytes(data)
    client.upload(src)
    assert src.name in [f["name"] for f in client.list()]
    assert client.download(src.name, folder / "out").path.read_bytes() == data


# -- 1. headers: a limit per type, and a memory budget -------------------------------------------------


def frame(msg_type: MsgType, body: bytes) -> bytes:
    return PREFIX.pack(b"FC", 1, msg_type, len(body), 0) + body


def manifest(chunks: int, pad_to: int = 0) -> bytes:
    """An UPLOAD_BEGIN header (a made-up session) of ``chunks`` chunks, padded with JSON whitespace."""
    body = json.dumps(
        {
            "session": "x" * 43,
            "name": "big.bin",
            "size": chunks * CHUNK,
            "sha1": "0" * 40,
            "chunk_size": CHUNK,
            "chunks": [[os.urandom(32).hex(), CHUNK] for _ in range(chunks)],
        },
        separators=(",", ":"),
    ).encode()
    return body[:-1] + b" " * max(0, pad_to - len(body)) + b"}"


def many_keys(size: int) -> bytes:
    """`{"10000":0,"10001":0,...}` of ``size`` bytes at most: ~130 bytes to parse per 10 sent."""
    keys = ",".join(f'"{i:x}":0' for i in range(0x10000, 0x10000 + (size - 2) // 10))
    return ("{" + keys + "}").encode()


def attack(port: int, payload: bytes) -> bytes:
    """Send one frame on a fresh connection; the first bytes of the answer (b"" if closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(payload)
            return sock.recv(200)
        except OSError:  # reset: closed with our bytes unread
            return b""


def test_sixteen_maximal_headers_at_once_keep_the_proxy_small(
    resource_cluster: Cluster, tmp_path: Path, from_client_address: None
) -> None:
    assert resource_cluster.proxy is not None
    limit = UPLOAD_BEGIN_HEADER  # the biggest header the proxy takes, and only for this type
    shapes = {
        "manifest": manifest(MAX_CHUNKS_PER_FILE, pad_to=limit),  # parsed, then refused at the door
        "keys, as many as fit the budget": many_keys(limit // 2),  # the most costly one parsed
        "keys": many_keys(limit),  # ~75 MiB to parse: refused before parsing
        "one string": b'{"x":"' + b"a" * (limit - 10) + b'"}',
    }
    assert all(len(body) <= limit for body in shapes.values())
    frames = [frame(MsgType.UPLOAD_BEGIN, body) for body in shapes.values()] * 4
    pid = resource_cluster.proxy.pid
    before = resource_cluster.proxy_memory()["VmRSS"]
    reset_peak_memory(pid)
    answers: list[bytes] = []
    threads = [
        threading.Thread(target=lambda f=f: answers.append(attack(resource_cluster.proxy_port, f)))
        for f in frames
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = resource_cluster.proxy_memory()["VmHWM"]
    assert len(answers) == 16
    assert sum(b'"code":"auth"' in a for a in answers) >= 1  # manifests got as far as the door
    assert peak < 100 * MIB, f"the proxy peaked at {peak / MIB:.0f} MiB (it was at {before / MIB:.0f})"
    user = new_user(resource_cluster)  # and it still serves everyone
    try:
        round_trip(user, tmp_path)
    finally:
        user.close()
    after = resource_cluster.proxy_memory()["VmRSS"]
    assert after < before + 25 * MIB, f"the proxy kept {(after - before) / MIB:.0f} MiB"


def test_a_header_over_its_types_limit_is_refused_at_the_prefix(resource_cluster: Cluster) -> None:
    before = resource_cluster.proxy_memory()["VmRSS"]
    with socket.create_connection(("127.0.0.1", resource_cluster.proxy_port), timeout=5) as sock:
        sock.sendall(PREFIX.pack(b"FC", 1, MsgType.LOGIN, MIB, 0))  # a 1 MiB LOGIN, announced only
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
        assert time.monotonic() - started < 1  # closed at once: no waiting for the rest
    assert resource_cluster.proxy_memory()["VmRSS"] < before + MIB


def test_a_maximal_upload_begin_and_its_proofs_still_work(resource_cluster: Cluster) -> None:
    user = new_user(resource_cluster)
    try:
        token = user.proxy.token
        assert token
        header = json.loads(manifest(MAX_CHUNKS_PER_FILE))
        header["session"] = token
        with Connection.connect("127.0.0.1", resource_cluster.proxy_port, timeout=60) as conn:
            reply = conn.request(MsgType.UPLOAD_BEGIN, header)
            assert len(reply["challenge"]["ranges"]) == MAX_CHUNKS_PER_FILE
            upload = {"session": token, "upload_id": reply["upload_id"]}
            proofs = [os.urandom(32).hex() for _ in range(MAX_CHUNKS_PER_FILE)]  # 3.4 MB: metered too
            conn.send(MsgType.UPLOAD_PROVE, {**upload, "proofs": proofs})
            assert conn.receive().type in (MsgType.OK, MsgType.ERROR)  # taken and answered
            conn.skip_payload()
            conn.request(MsgType.UPLOAD_ABORT, upload)
    finally:
        user.close()


# -- 2. connections: a cap per address -------------------------------------------------------------


def trickle(socks: list[socket.socket], stop: threading.Event, interval: float = 0.5) -> None:
    """Send the next byte of a HELLO frame on every socket every ``interval`` seconds."""
    data = encode(MsgType.HELLO, {"client": "x" * 200})
    sent = 0
    while not stop.wait(interval) and sent < len(data):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(data[sent : sent + 1])
        sent += 1


def test_a_flood_from_one_address_leaves_the_proxy_and_the_servers_to_others(
    resource_cluster: Cluster, tmp_path: Path, from_client_address: None, many_files: None
) -> None:
    stop = threading.Event()
    user: Client | None = None
    try:
        with held_sockets() as socks:
            open_from(ATTACKER, resource_cluster.proxy_port, 600, socks)
            trickler = threading.Thread(target=trickle, args=(socks[::2], stop))
            trickler.start()
            time.sleep(0.5)
            user = new_user(resource_cluster)  # a new connection: register, log in...
            round_trip(user, tmp_path)  # ...upload, list, download: all refused before
            assert user.proxy._conn is not None
            assert user.proxy._conn.sock.getsockname()[0] == CLIENT
            stop.set()
            trickler.join()
        name = user.list()[0]["name"]
        with held_sockets() as socks:
            for port in resource_cluster.server_ports.values():
                open_from(ATTACKER, port, 520, socks)  # more than a server has slots
            time.sleep(0.5)
            assert user.download(name, tmp_path / "again").path.exists()  # new storage connections
    finally:
        stop.set()
        if user is not None:
            user.close()
    refusals = (resource_cluster.root / "proxy.log").read_text().count("refusing a connection")
    assert 0 < refusals <= 11  # 500-odd refused, and the log says so in at most 10 lines (and a count)


# -- 3. time: a deadline for a whole frame -----------------------------------------------------------


@pytest.fixture
def hasty_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Frames must arrive within 2 s (plus their size at 256 KiB/s), so a test sees it happen."""
    c = Cluster(
        tmp_path / "cluster",
        servers=1,
        replicas=1,
        daemon_args=("--head-deadline", "2", "--payload-deadline", "2"),
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def seconds_until_closed(sock: socket.socket, data: bytes, interval: float = 0.5) -> float:
    """Send ``data`` a byte every ``interval`` seconds; the seconds until the peer closed."""
    started = time.monotonic()
    try:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(interval)
        sock.settimeout(5)
        sock.recv(1)
    except OSError:
        pass
    return time.monotonic() - started


def test_a_trickled_frame_is_closed_at_its_deadline(hasty_cluster: Cluster) -> None:
    proxy, server = hasty_cluster.proxy_port, hasty_cluster.server_ports[1]
    inventory = {"id": 99, "host": "127.0.0.1", "port": 1, "capacity": 1, "used": 0, "chunks": 1}
    inventory["inventory_sha256"] = "0" * 64  # refused at the door: the payload is then drained
    trickles = {  # where, what is sent at once, what is trickled
        "a proxy request's head": (proxy, b"", encode(MsgType.HELLO, {})),
        "a proxy request's payload": (
            proxy,
            encode(MsgType.SERVER_REGISTER, inventory, b"x" * 32)[:-32],
            b"x" * 32,
        ),
        "a chunk": (
            server,
            encode(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 32}, b"x" * 32)[:-32],
            b"x" * 32,
        ),
    }
    took: dict[str, float] = {}

    def run(what: str, port: int, head: bytes, trickled: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head)
            took[what] = seconds_until_closed(sock, trickled)

    with Connection.connect("127.0.0.1", proxy, timeout=10) as idle:
        threads = [threading.Thread(target=run, args=(what, *how)) for what, how in trickles.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(1.9 <= took[what] < 4 for what in trickles), took  # 16 s or more, trickled whole
        time.sleep(0.5)
        assert "chunk_size" in idle.request(MsgType.HELLO, {})  # idle all along: between frames, fine


# -- 4. the reserve ------------------------------------------------------------------------------------


@pytest.fixture
def crowded_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """24 connections per daemon, 8 of them reserved, 16 per address; an idle newcomer in the
    reserve is closed after 2 s."""
    limits = ("--max-connections", "24", "--reserved-connections", "8", "--connections-per-address", "16")
    c = Cluster(tmp_path / "cluster", daemon_args=(*limits, "--head-deadline", "2"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_anonymous_connections_from_many_addresses_leave_the_reserve_to_users(
    crowded_cluster: Cluster, tmp_path: Path, from_client_address: None
) -> None:
    port = crowded_cluster.proxy_port
    with held_sockets() as socks:
        for address in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):  # 48: far more than there is room for
            with contextlib.suppress(OSError):
                open_from(address, port, 16, socks)
        # the 16 ordinary slots stay held (the servers' own connections are trusted: they sign
        # their messages); those that got into the reserve are closed at the head deadline
        Cluster.wait_for(lambda: sum(map(_still_open, socks)) <= 16, "the reserve to empty")
        assert sum(map(_still_open, socks)) == 16
        user = new_user(crowded_cluster)  # in the reserve: LOGIN, then a session request
        try:
            round_trip(user, tmp_path)
            link = user.share(user.list()[0]["name"])["link"]
            with Client(("127.0.0.1", port), tmp_path / "anonymous") as anonymous:
                assert anonymous.download(link, tmp_path / "by-link").fetched
        finally:
            user.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
