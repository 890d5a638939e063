"""A storage server whose disk, replica or sender fails mid-chunk: a clean error, nothing half-kept.

Real storage servers (StorageService over ChunkStore, on a FrameServer on 127.0.0.1) and real
sockets; only the disk is made to fail (its open/write/fsync/rename raise ENOSPC, EDQUOT or EIO
after some bytes) and only the source file is made to shrink.  Each test checks what
docs/PROTOCOL.md §4 and §7.3 promise: the error code on the wire, the payload drained so the same
connection goes on, no temp file left, no chunk installed, usage counters untouched, and the
chunk storing fine once the fault is gone; a replica that fails leaves the head's verified copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey, server_audience
from common.errors import (
    FileClusterError,
    Forbidden,
    InsufficientStorage,
    ReplicationFailed,
    SourceShrank,
    StorageIOError,
)
from common.frame_server import FrameServer, serve_in_thread
from common.messages import Message, MsgType
from common.protocol import FrameDecoder, PayloadData
from common.transport import RECV_SIZE, Connection
from servers.chunk_store import ChunkStore
from servers.storage_server import StorageService, make_storage_server

DATA = bytes(range(256)) * (3 * RECV_SIZE // 256)  # 3 MiB: at least three receive buffers
ID = hashlib.sha256(DATA).hexdigest()
KEY = ClusterKey(b"\x09" * 32)  # the cluster secret of these servers
OTHER = b"a chunk stored before the fault" * 100
OTHER_ID = hashlib.sha256(OTHER).hexdigest()
# the fault strikes after this many bytes of a chunk: inside the payload, with at least one more
# receive buffer still to come, so the server must read on past the fault
AFTER = RECV_SIZE + 123


@dataclass
class Node:
    """One running storage server and the store under it."""

    id: int
    store: ChunkStore
    server: FrameServer

    @property
    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "host": "127.0.0.1", "port": self.server.port}

    def connect(self) -> Connection:
        return Connection.connect("127.0.0.1", self.server.port, timeout=10)

    def temp_files(self) -> list[Path]:
        return list(self.store.tmp.iterdir())

    def holds(self, chunk_id: str, data: bytes) -> bool:
        if not self.store.has(chunk_id):
            return False
        file, _ = self.store.open(chunk_id)
        with file:
            return file.read() == data


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[int], Node]]:
    """Start storage servers on 127.0.0.1 (port 0); every one is stopped in teardown."""
    started: list[FrameServer] = []

    def _start(server_id: int) -> Node:
        store = ChunkStore(tmp_path / f"server{server_id}" / "ServerFiles")
        server = make_storage_server(StorageService(server_id, store, KEY), ("127.0.0.1", 0))
        started.append(server)
        serve_in_thread(server, f"storage-{server_id}")
        return Node(server_id, store, server)

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def node(start: Callable[[int], Node]) -> Node:
    return start(1)


class DiskFault:
    """Makes the disk under one store fail at ``point`` (open, write, fsync, close or rename) with ``err``.

    It works at the system calls the store makes (``os.open``, ``os.write``, ``os.pwrite`` (a big
    chunk's direct writes), ``os.fsync``, ``os.close``, ``os.replace``), patched for the whole
    process but passing everything through except what touches this store's temp files: a write
    fails once ``after`` bytes of the file are on disk (what fits is written first, as on a full
    disk; a direct write of whole blocks writes nothing), and a close fails after closing (as
    on a filesystem that reports a writeback error then).  ``armed = False`` mends the disk;
    ``hits`` counts the failures it caused."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, root: Path, point: str, err: int, after: int = AFTER
    ) -> None:
        self.root, self.point, self.err, self.after = root, point, err, after
        self.armed = True
        self.hits = 0
        self.temp_paths: list[Path] = []
        self.written: dict[int, int] = {}  # this store's temp files open for writing: bytes written
        self._open, self._write, self._pwrite, self._close = os.open, os.write, os.pwrite, os.close
        self._fsync, self._replace = os.fsync, os.replace
        monkeypatch.setattr(os, "open", self.open)
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "pwrite", self.pwrite)
        monkeypatch.setattr(os, "close", self.close)
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "replace", self.replace)

    def strikes(self, point: str) -> bool:
        if self.armed and self.point == point:
            self.hits += 1
            return True
        return False

    def error(self) -> OSError:
        return OSError(self.err, os.strerror(self.err))

    def _ours(self, path: Any) -> bool:
        return Path(path).is_relative_to(self.root)

    def open(self, path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if not (flags & os.O_CREAT) or not self._ours(path):
            return self._open(path, flags, mode, *args, **kwargs)
        if self.strikes("open"):
            raise self.error()
        self.temp_paths.append(Path(path))
        fd = self._open(path, flags, mode, *args, **kwargs)
        self.written[fd] = 0
        return fd

    def write(self, fd: int, data: Any) -> int:
        if fd not in self.written:
            return self._write(fd, data)
        room = self.after - self.written[fd]
        if len(data) > room and self.strikes("write"):
            self.written[fd] += self._write(fd, data[: max(room, 0)])  # what fit, then the disk is full
            raise self.error()
        n = self._write(fd, data)
        self.written[fd] += n
        return n

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        if fd not in self.written:
            return self._pwrite(fd, data, offset)
        if len(data) > self.after - self.written[fd] and self.strikes("write"):
            raise self.error()  # a direct write of whole blocks: nothing of it written
        n = self._pwrite(fd, data, offset)
        self.written[fd] += n
        return n

    def close(self, fd: int) -> None:
        ours = self.written.pop(fd, None) is not None
        self._close(fd)
        if ours and self.strikes("close"):
            raise self.error()

    def fsync(self, fd: int) -> None:
        if fd in self.written and self.strikes("fsync"):
            raise self.error()
        self._fsync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        if self._ours(src) and self.strikes("rename"):
            raise self.error()
        self._replace(src, dst)


def ticket(conn: Connection, chunk_id: str, forward: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The proxy's ticket to store ``chunk_id`` on the server behind ``conn`` (id 1), then ``forward``."""
    host, port = conn.peer.rsplit(":", 1)
    chain = [{"id": 1, "host": host, "port": int(port)}, *(forward or [])]
    return KEY.put_ticket(chunk_id, chain, "upload:test", 60)


def put(conn: Connection, data: bytes, forward: list[dict[str, Any]] | None = None) -> list[int]:
    chunk_id = hashlib.sha256(data).hexdigest()
    header = {"id": chunk_id, "size": len(data), "ticket": ticket(conn, chunk_id, forward)}
    stored: list[int] = conn.request(MsgType.PUT_CHUNK, header, data)["stored"]
    return stored


def ping(conn: Connection, server_id: int = 1) -> dict[str, Any]:
    """The server's figures, less ``free`` (which moves with the machine's disk); checked > 0."""
    signed = KEY.sign(MsgType.PING, {}, to=server_audience(server_id))
    figures = KEY.verify_reply(signed, conn.request(MsgType.PING, signed))
    assert figures.pop("free") > 0
    return figures


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- a disk that fills up or fails while a chunk is written -------------------------------------

FAULTS = [
    *(
        (point, err, error)
        for point in ("open", "write", "fsync", "close", "rename")
        for err, error in ((errno.ENOSPC, InsufficientStorage), (errno.EIO, StorageIOError))
    ),
    ("write", errno.EDQUOT, InsufficientStorage),  # over quota is out of space too
]


@pytest.mark.parametrize(
    ("point", "err", "error"),
    FAULTS,
    ids=[f"{p}-{errno.errorcode[e]}" for p, e, _ in FAULTS],
)
def test_a_disk_fault_is_a_clean_error_and_the_same_connection_goes_on(
    node: Node, monkeypatch: pytest.MonkeyPatch, point: str, err: int, error: type[FileClusterError]
) -> None:
    with node.connect() as conn:
        assert put(conn, OTHER) == [1]
        before = (node.store.count, node.store.used)
        fault = DiskFault(monkeypatch, node.store.root, point, err)

        with pytest.raises(error) as caught:
            put(conn, DATA)
        assert caught.value.code == error.code
        assert fault.hits == 1
        # the rest of the payload was read: the next frame on the same connection is a request
        assert ping(conn) == {"id": 1, "chunks": 1, "used": len(OTHER), "quarantined": 0}
        assert node.temp_files() == []
        assert not any(p.exists() for p in fault.temp_paths)
        assert not node.store.has(ID)
        assert not (node.store.root / ID[:2] / ID).exists()
        assert (node.store.count, node.store.used) == before
        assert node.holds(OTHER_ID, OTHER)

        fault.armed = False  # the disk is mended: the same chunk, on the same connection, stores
        assert put(conn, DATA) == [1]
    assert node.holds(ID, DATA)
    assert (node.store.count, node.store.used) == (2, len(OTHER) + len(DATA))
    assert node.temp_files() == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_abort_never_raises_even_when_closing_fails(
    node: Node, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """Closing a temp file flushes what is buffered; on a full disk that fails, and abort (called in
    every ``finally``) must still leave no temp file and raise nothing over the error in flight."""
    fault = DiskFault(monkeypatch, node.store.root, "close", err)
    writer = node.store.writer(ID, len(DATA))
    writer.write(DATA[:AFTER])
    writer.abort()
    writer.abort()  # twice is harmless
    assert fault.hits == 1
    assert node.temp_files() == []
    with node.store.writer(ID, len(DATA)) as failing:  # the context manager aborts the same way
        failing.write(DATA)
        with pytest.raises(InsufficientStorage if err == errno.ENOSPC else StorageIOError):
            failing.commit()
    assert fault.hits == 2 and node.temp_files() == [] and not node.store.has(ID)


def test_a_put_refused_before_its_payload_is_read_is_drained(node: Node) -> None:
    """PROTOCOL.md §4: a request refused before its payload is read still has the payload drained."""
    with node.connect() as conn:
        forged = {**ticket(conn, ID), "chain": [[1, "127.0.0.1", 1], [2, "10.9.9.9", 22]]}
        with pytest.raises(Forbidden, match="does not match"):
            conn.request(MsgType.PUT_CHUNK, {"id": ID, "size": len(DATA), "ticket": forged}, DATA)
        assert ping(conn)["chunks"] == 0
        assert put(conn, DATA) == [1]


# -- a replica that fails while the chunk streams through the head ------------------------------


def test_a_replica_whose_disk_fills_mid_chunk_is_replication_failed(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, replica = start(1), start(2)
    fault = DiskFault(monkeypatch, replica.store.root, "write", errno.ENOSPC)
    with head.connect() as conn:
        with pytest.raises(ReplicationFailed, match="no space left") as caught:
            put(conn, DATA, [replica.ref])
        assert caught.value.code == "replication_failed"
        assert (caught.value.server, caught.value.cause) == (2, "insufficient_storage")
        assert fault.hits == 1
        assert ping(conn) == {
            "id": 1,
            "chunks": 1,
            "used": len(DATA),
            "quarantined": 0,
        }  # same connection, still usable
    assert head.holds(ID, DATA)  # §7.3: the head keeps its verified copy
    assert head.temp_files() == []
    assert not replica.store.has(ID) and replica.store.count == 0
    assert replica.temp_files() == []


def test_a_failure_at_the_end_of_a_chain_reaches_the_client_and_every_copy_before_it_stays(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, middle, tail = start(1), start(2), start(3)
    DiskFault(monkeypatch, tail.store.root, "fsync", errno.EIO)
    with head.connect() as conn:
        with pytest.raises(ReplicationFailed, match=r"server 3 .* disk error") as caught:
            put(conn, DATA, [middle.ref, tail.ref])
        # the head names the deepest server that failed, not the middle one that reported it
        assert (caught.value.server, caught.value.cause) == (3, "io_error")
        assert ping(conn)["chunks"] == 1
    assert head.holds(ID, DATA) and middle.holds(ID, DATA)
    assert not tail.store.has(ID) and tail.temp_files() == []


@dataclass
class CutOff:
    """A forward target that reads the head and part of the payload, then hangs up."""

    port: int
    received: bytearray


@pytest.fixture
def cut_off() -> Iterator[CutOff]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    target = CutOff(listener.getsockname()[1], bytearray())
    limit = 4096 + 256 * 1024  # the frame's head and a quarter MiB of its payload

    def run() -> None:
        with contextlib.suppress(OSError):
            sock, _ = listener.accept()
            with sock:  # closed with bytes unread: the sender sees a reset
                sock.settimeout(10)
                while len(target.received) < limit and (data := sock.recv(65536)):
                    target.received += data

    thread = threading.Thread(target=run, name="cut-off")
    thread.start()
    yield target
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes an accept still waiting
    listener.close()
    thread.join(10)


def test_a_replica_that_hangs_up_mid_payload_is_replication_failed(node: Node, cut_off: CutOff) -> None:
    with node.connect() as conn:
        with pytest.raises(ReplicationFailed, match="on server 9") as caught:
            put(conn, DATA, [{"id": 9, "host": "127.0.0.1", "port": cut_off.port}])
        assert caught.value.code == "replication_failed"
        assert (caught.value.server, caught.value.cause) == (9, "unavailable")
        assert ping(conn)["chunks"] == 1
    assert node.holds(ID, DATA)
    assert node.temp_files() == []
    # what the head sent on before the replica hung up: the chunk's frame, the chain's rest, its bytes
    decoder = FrameDecoder()
    decoder.receive_data(bytes(cut_off.received))
    forwarded = decoder.next_event()
    assert isinstance(forwarded, Message) and forwarded.type is MsgType.PUT_CHUNK
    assert (forwarded.header["id"], forwarded.header["size"], forwarded.payload_len) == (
        ID,
        len(DATA),
        len(DATA),
    )
    assert forwarded.header["ticket"]["chain"][1] == [9, "127.0.0.1", cut_off.port]  # the same ticket
    piece = decoder.next_event()
    assert isinstance(piece, PayloadData) and DATA.startswith(bytes(piece.data))
    assert 0 < len(piece.data) < len(DATA)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_forward_target_that_refuses_connections_is_replication_failed(
    node: Node, refusing_port: int
) -> None:
    with node.connect() as conn:
        with pytest.raises(ReplicationFailed, match="cannot reach") as caught:
            put(conn, DATA, [{"id": 2, "host": "127.0.0.1", "port": refusing_port}])
        assert caught.value.code == "replication_failed"
        assert (caught.value.server, caught.value.cause) == (2, "unavailable")
        assert ping(conn) == {"id": 1, "chunks": 1, "used": len(DATA), "quarantined": 0}
    assert node.holds(ID, DATA)


# -- a sender whose source file shrinks mid-chunk -------------------------------------------------


def test_a_source_that_shrinks_mid_send_leaves_nothing_on_the_server(
    node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="common.frame_server")
    source = tmp_path / "source"
    source.write_bytes(DATA[: 2 * RECV_SIZE])  # a third shorter than announced
    with node.connect() as conn, open(source, "rb") as f:
        conn.send_head(
            MsgType.PUT_CHUNK, {"id": ID, "size": len(DATA), "ticket": ticket(conn, ID)}, len(DATA)
        )
        with pytest.raises(SourceShrank, match=f"{2 * RECV_SIZE} of {len(DATA)} bytes"):
            conn.send_file(f, 0, len(DATA))
        assert conn.closed  # the frame cannot be finished: the server must not wait for the rest

    def server_dropped_it() -> bool:
        return any("closed in the middle" in r.getMessage() for r in caplog.records)

    wait_for(server_dropped_it, "the server to drop the unfinished frame")
    assert node.temp_files() == []
    assert not node.store.has(ID)
    assert (node.store.count, node.store.used) == (0, 0)
    with node.connect() as again:  # the server is still up and takes the next connection
        assert ping(again)["chunks"] == 0
        assert put(again, DATA) == [1]
    assert node.holds(ID, DATA)


# -- the connection to the next server of a chain, kept for reuse (servers.downstream) -------------


def _count_connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ports of every connection opened from now on (the test's own to the head as well)."""
    opened: list[int] = []
    real = Connection.connect.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Connection], /, host: str, port: int, **kwargs: Any) -> Connection:
        opened.append(port)
        conn: Connection = real(cls, host, port, **kwargs)
        return conn

    monkeypatch.setattr(Connection, "connect", classmethod(counting))
    return opened


def test_a_chain_reuses_its_connection_to_the_replica(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, replica = start(1), start(2)
    opened = _count_connects(monkeypatch)
    chunks = [os.urandom(1000 + i) for i in range(5)]
    with head.connect() as conn:
        for data in chunks:
            assert put(conn, data, [replica.ref]) == [1, 2]
    assert opened.count(replica.server.port) == 1  # one connection carried all five chunks
    assert all(replica.holds(hashlib.sha256(d).hexdigest(), d) for d in chunks)


def test_a_replica_that_dropped_the_kept_connection_still_gets_the_next_chunk(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, replica = start(1), start(2)
    opened = _count_connects(monkeypatch)
    first, second = os.urandom(3000), os.urandom(4000)
    with head.connect() as conn:
        assert put(conn, first, [replica.ref]) == [1, 2]
        # the replica drops every connection (as a restart or its idle timeout would): the one
        # the head keeps for the next chunk is now closed by its far end
        replica.server.close_connections()
        assert put(conn, second, [replica.ref]) == [1, 2]  # not a replication failure
    assert opened.count(replica.server.port) == 2  # the dead connection was dropped, a new one opened
    assert replica.holds(hashlib.sha256(second).hexdigest(), second)


def test_a_replica_error_leaves_no_pooled_connection_behind(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, replica = start(1), start(2)
    opened = _count_connects(monkeypatch)
    DiskFault(monkeypatch, replica.store.root, "write", errno.ENOSPC)
    with head.connect() as conn:
        with pytest.raises(ReplicationFailed):
            put(conn, DATA, [replica.ref])
        small = os.urandom(2000)  # below the fault's threshold: the replica stores it...
        assert put(conn, small, [replica.ref]) == [1, 2]
    # ...on a fresh connection: one whose exchange failed is never reused
    assert opened.count(replica.server.port) == 2
