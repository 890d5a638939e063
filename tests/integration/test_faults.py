"""Fault tests: kill processes, corrupt files, send garbage; nothing is lost and nobody else suffers."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import threading
from pathlib import Path

import pytest

from client.api import Client
from common.errors import FileClusterError, RemoteProtocolError
from common.messages import MsgType
from common.protocol import PREFIX, encode
from common.transport import Connection
from tests.cluster import CHUNK, Cluster
from tests.conftest import PASSWORD, new_user


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_proxy_killed_keeps_catalog_sessions_and_links(fresh_cluster: Cluster, tmp_path: Path) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(3 * CHUNK + 5)
    ana.upload(write(tmp_path / "kept.bin", data))
    ana.upload(write(tmp_path / "gone.bin", b"short-lived"))
    link = ana.share("kept.bin")
    ana.delete("gone.bin")
    ana.close()

    c.restart_proxy(signal.SIGKILL)  # no clean shutdown, no snapshot: the journal must replay

    again = Client.from_environment(c.proxy_addr, ana.home)  # the saved session still works
    assert [f["name"] for f in again.list()] == ["kept.bin"]
    assert again.download("kept.bin", tmp_path / "a").path.read_bytes() == data
    assert c.client().download(link, tmp_path / "b").path.read_bytes() == data
    with pytest.raises(FileClusterError, match="taken"):
        c.client().register(str(ana.user), PASSWORD)


def test_upload_survives_a_dead_storage_server(fresh_cluster: Cluster, tmp_path: Path) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    c.kill_server(2)  # the proxy still believes it is up: its heartbeats have not lapsed yet
    data = os.urandom(8 * CHUNK)
    try:
        result = ana.upload(write(tmp_path / "f.bin", data))
    except FileClusterError:
        assert ana.list() == []  # failed clearly: the catalog did not change
        result = ana.upload(tmp_path / "f.bin")  # and running it again works
    assert result.size == len(data)
    assert ana.download("f.bin", tmp_path / "out").path.read_bytes() == data
    status = {s["id"]: s["up"] for s in ana.status()["servers"]}
    assert status[2] is False  # the proxy was told, checked, and stopped placing chunks there


def test_storage_server_dies_in_the_middle_of_an_upload(fresh_cluster: Cluster, tmp_path: Path) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(200 * CHUNK)  # 12.5 MiB in 200 chunks: long enough to kill a server mid-way
    src = write(tmp_path / "mid.bin", data)
    victim = 3
    outcome: dict[str, object] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "sending" and done >= total // 4 and victim in c.servers:
            c.kill_server(victim)

    def run() -> None:
        try:
            outcome["result"] = ana.upload(src, progress)
        except FileClusterError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    assert victim not in c.servers, "the server was not killed during the upload"
    print("mid-upload outcome:", outcome)
    if "error" in outcome:
        assert str(outcome["error"])  # a clear message
        assert ana.list() == []  # and the catalog did not change
        ana.upload(src)  # running it again works
    assert [f["name"] for f in ana.list()] == ["mid.bin"]
    assert ana.download("mid.bin", tmp_path / "out").path.read_bytes() == data


def test_download_falls_back_to_the_other_copy(fresh_cluster: Cluster, tmp_path: Path) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(12 * CHUNK)
    ana.upload(write(tmp_path / "two-copies.bin", data))
    c.kill_server(1)
    assert ana.download("two-copies.bin", tmp_path / "a").path.read_bytes() == data


def test_corrupt_chunk_on_disk_is_detected_and_the_replica_used(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(4 * CHUNK)
    ana.upload(write(tmp_path / "rot.bin", data))
    first = hashlib.sha256(data[:CHUNK]).hexdigest()
    copies = [p for p in c.chunk_files() if p.name == first]
    assert len(copies) == 2
    for copy in copies[:1]:  # bit rot on one copy
        raw = bytearray(copy.read_bytes())
        raw[100] ^= 0xFF
        copy.write_bytes(bytes(raw))
    assert ana.download("rot.bin", tmp_path / "a").path.read_bytes() == data
    for copy in copies:  # both copies rotten: a clear error and no file
        raw = bytearray(copy.read_bytes())
        raw[200] ^= 0xFF
        copy.write_bytes(bytes(raw))
    with pytest.raises(FileClusterError, match="cannot be read from any copy"):
        ana.download("rot.bin", tmp_path / "b")
    assert not (tmp_path / "b" / "rot.bin").exists()
    assert list((tmp_path / "b").iterdir()) == []


def _garbage_then_check(port: int, payloads: list[bytes]) -> None:
    for raw in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        # the server answered with at most one ERROR frame, then closed this connection
        assert reply == b"" or reply[:2] == b"FC"


GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    PREFIX.pack(b"FC", 1, MsgType.PING, 2**31, 0),  # oversized header announced
    PREFIX.pack(b"FC", 1, MsgType.PUT_CHUNK, 2, 2**40) + b"{}",  # oversized payload announced
    PREFIX.pack(b"FC", 7, MsgType.PING, 2, 0) + b"{}",  # unknown version
    PREFIX.pack(b"FC", 1, MsgType.PING, 5, 0) + b"{nope",  # bad JSON
    encode(MsgType.PING, {}) + b"\x00" * 40,  # a good frame, then trailing garbage
    os.urandom(5000),
]


def test_garbage_closes_one_connection_and_the_proxy_serves_everyone_else(
    cluster: Cluster, user: Client
) -> None:
    _garbage_then_check(cluster.proxy_port, GARBAGE)
    with (
        Connection.connect("127.0.0.1", cluster.proxy_port) as conn,
        pytest.raises(RemoteProtocolError),
    ):  # a request the proxy does not take
        conn.request(MsgType.PUT_CHUNK, {"id": "a" * 64, "size": 1}, b"x")
    assert cluster.proxy is not None and cluster.proxy.poll() is None
    assert user.whoami() == user.user


def test_garbage_and_lies_do_not_hurt_a_storage_server(
    cluster: Cluster, user: Client, tmp_path: Path
) -> None:
    port = cluster.server_ports[1]
    _garbage_then_check(port, GARBAGE)
    data = b"honest bytes" * 100
    chunk_id = hashlib.sha256(data).hexdigest()
    with Connection.connect("127.0.0.1", port) as conn:
        with pytest.raises(FileClusterError, match="do not match"):  # bytes that are not the id
            conn.request(MsgType.PUT_CHUNK, {"id": chunk_id, "size": len(data)}, data[:-1] + b"!")
        with pytest.raises(FileClusterError, match="invalid chunk id"):
            conn.request(MsgType.GET_CHUNK, {"id": "../../../etc/passwd"})
        # the same connection still works after refused requests
        assert conn.request(MsgType.PING, {})["id"] == 1
    assert not [p for p in cluster.chunk_files(1) if p.name == chunk_id]
    assert cluster.servers[1].poll() is None
    src = write(tmp_path / "after.bin", os.urandom(2 * CHUNK))
    user.upload(src)
    assert user.download("after.bin", tmp_path / "o").path.read_bytes() == src.read_bytes()


def test_a_client_that_vanishes_mid_chunk_leaves_nothing_behind(cluster: Cluster) -> None:
    port = cluster.server_ports[2]
    data = os.urandom(CHUNK)
    chunk_id = hashlib.sha256(data).hexdigest()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(encode(MsgType.PUT_CHUNK, {"id": chunk_id, "size": len(data)}, data)[:-1000])
    cluster.wait_for(
        lambda: not list((cluster.root / "server2" / "ServerFiles" / "tmp").iterdir()),
        "the temp file to be removed",
    )
    assert not [p for p in cluster.chunk_files(2) if p.name == chunk_id]


def test_frame_header_layout_on_the_wire() -> None:
    frame = encode(MsgType.HELLO, {})
    assert struct.unpack(">2sBBIQ", frame[:16]) == (b"FC", 1, MsgType.HELLO, 2, 0)


def test_right_after_a_proxy_restart_files_download_before_servers_return(
    fresh_cluster: Cluster, tmp_path: Path
) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(3 * CHUNK)
    ana.upload(write(tmp_path / "early.bin", data))
    for i in list(c.servers):  # servers stop heartbeating: the new proxy has heard from none
        c.servers[i].send_signal(signal.SIGSTOP)
    try:
        c.kill_proxy()
        c.start_proxy()
        again = Client.from_environment(c.proxy_addr, ana.home)
        # no server has registered with this proxy yet, but the catalog remembers their addresses
        located = again.locate("early.bin")
        assert all(len(chunk["servers"]) == 2 for chunk in located["chunks"])
        assert {s["up"] for s in again.status()["servers"]} == {False}
        for i in c.servers:
            c.servers[i].send_signal(signal.SIGCONT)
        assert again.download("early.bin", tmp_path / "out").path.read_bytes() == data
    finally:
        for proc in c.servers.values():
            proc.send_signal(signal.SIGCONT)


def test_many_chunks_in_one_commit_and_one_delete(cluster: Cluster, user: Client, tmp_path: Path) -> None:
    """Thousands of new chunks per server in one upload: the proxy's HAS/DELETE batches must fit."""
    n = 2400  # 4800 copies over 4 servers: ~1200 per server, more than one 64 KiB header could name
    blocks = [i.to_bytes(4, "big") * (CHUNK // 4) for i in range(n)]  # distinct, cheap to make
    src = tmp_path / "many.bin"
    with open(src, "wb") as f:
        for block in blocks:
            f.write(block)
    result = user.upload(src)
    assert result.sent == n * CHUNK
    user.delete("many.bin")
    ids = {hashlib.sha256(b).hexdigest() for b in blocks}
    cluster.wait_for(lambda: not ids & {p.name for p in cluster.chunk_files()}, "chunks to be freed", 60)


def test_acknowledged_chunks_survive_a_storage_server_crash(fresh_cluster: Cluster, tmp_path: Path) -> None:
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(16 * CHUNK)
    ana.upload(write(tmp_path / "crash.bin", data))
    for i in (1, 2, 3, 4):  # every server dies at once, right after the upload was acknowledged
        c.kill_server(i, signal.SIGKILL)
    for i in (1, 2, 3, 4):
        c.start_server(i)
    assert ana.download("crash.bin", tmp_path / "a").path.read_bytes() == data
    ids = {hashlib.sha256(data[o : o + CHUNK]).hexdigest() for o in range(0, len(data), CHUNK)}
    for i in (1, 2, 3, 4):  # both copies of every chunk are on disk after the crash
        assert not list((c.root / f"server{i}" / "ServerFiles" / "tmp").iterdir())
    assert sorted(p.name for p in c.chunk_files() if p.name in ids) == sorted(2 * list(ids))
    c.kill_server(1, signal.SIGKILL)  # so with any one server gone, the file still reads back
    assert ana.download("crash.bin", tmp_path / "b").path.read_bytes() == data


def test_a_hung_storage_server_does_not_hang_the_upload(fresh_cluster: Cluster, tmp_path: Path) -> None:
    """SIGSTOP: the server accepts connections (the kernel does) but never answers."""
    c = fresh_cluster
    ana = new_user(c, "ana")
    data = os.urandom(40 * CHUNK)
    c.servers[2].send_signal(signal.SIGSTOP)
    try:
        result = ana.upload(write(tmp_path / "hung.bin", data))
    finally:
        c.servers[2].send_signal(signal.SIGCONT)
    assert result.size == len(data)
    assert ana.download("hung.bin", tmp_path / "out").path.read_bytes() == data
