"""The storage server's half of self-healing, over real sockets on 127.0.0.1: VERIFY_CHUNKS,
REPLICATE (a server fetching a chunk from others with the proxy's GET tickets), DELETE_CHUNKS
older_than, the reserve, and what PING reports."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey, server_audience
from common.errors import AuthError, InsufficientStorage, InvalidRequest, ReplicationFailed
from common.frame_server import FrameServer, serve_in_thread
from common.messages import MsgType
from common.transport import Connection
from servers.chunk_store import VERIFIED_XATTR, ChunkStore
from servers.storage_server import StorageService, make_storage_server

KEY = ClusterKey(b"\x0a" * 32)
DATA = os.urandom(3 * 1024 * 1024 + 17)  # several receive buffers
ID = hashlib.sha256(DATA).hexdigest()
SMALL = b"a small chunk" * 50
SMALL_ID = hashlib.sha256(SMALL).hexdigest()
MISSING = "f" * 64


@dataclass
class Node:
    id: int
    store: ChunkStore
    server: FrameServer

    def connect(self) -> Connection:
        return Connection.connect("127.0.0.1", self.server.port, timeout=30)

    def call(self, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
        """A request signed with the cluster secret for this server, as the proxy sends it."""
        signed = KEY.sign(msg_type, header, to=server_audience(self.id))
        with self.connect() as conn:
            return KEY.verify_reply(signed, conn.request(msg_type, signed))

    def put(self, data: bytes) -> str:
        chunk_id = hashlib.sha256(data).hexdigest()
        chain = [{"id": self.id, "host": "127.0.0.1", "port": self.server.port}]
        header = {"id": chunk_id, "size": len(data), "ticket": KEY.put_ticket(chunk_id, chain, "test", 60)}
        with self.connect() as conn:
            conn.request(MsgType.PUT_CHUNK, header, data)
        return chunk_id

    def file(self, chunk_id: str) -> Path:
        return self.store.root / chunk_id[:2] / chunk_id

    def source(self, chunk_id: str, port: int | None = None) -> dict[str, Any]:
        """This server as a REPLICATE source, with the GET ticket the proxy would sign for it."""
        exp = int(time.time()) + 60
        mac = KEY.get_mac(chunk_id, self.id, "repair", exp)
        return {
            "id": self.id,
            "host": "127.0.0.1",
            "port": port or self.server.port,
            "ticket": {"exp": exp, "who": "repair", "mac": mac},
        }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[FrameServer] = []

    def _start(server_id: int, reserve: int = 0) -> Node:
        store = ChunkStore(tmp_path / f"server{server_id}" / "ServerFiles", reserve=reserve)
        server = make_storage_server(StorageService(server_id, store, KEY), ("127.0.0.1", 0))
        started.append(server)
        serve_in_thread(server, f"storage-{server_id}")
        return Node(server_id, store, server)

    yield _start
    for server in started:
        server.stop()


def backdate(path: Path, seconds: float) -> None:
    """Make a copy look written and verified ``seconds`` ago (mtime and verified-stamp)."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    os.setxattr(path, VERIFIED_XATTR, f"{then} {path.stat().st_mtime_ns}".encode())


def rot_silently(path: Path) -> None:
    """Bit rot: a byte changes under the filesystem, which keeps the file's mtime."""
    info = path.stat()
    corrupt(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


# -- VERIFY_CHUNKS ---------------------------------------------------------------------------------


def test_verify_chunks_sorts_good_bad_and_missing_and_quarantines_the_bad(start: Callable[..., Node]) -> None:
    node = start(1)
    node.put(DATA)
    node.put(SMALL)
    corrupt(node.file(SMALL_ID))
    reply = node.call(MsgType.VERIFY_CHUNKS, {"ids": [ID, SMALL_ID, MISSING]})
    assert {k: reply[k] for k in ("good", "bad", "missing")} == {
        "good": [[ID, len(DATA)]],
        "bad": [SMALL_ID],
        "missing": [MISSING],
    }
    assert not node.store.has(SMALL_ID) and node.store.lost.take(5) == [SMALL_ID]
    assert node.call(MsgType.PING, {})["quarantined"] == 1


def test_verify_chunks_max_age_trusts_a_recent_verification_only(start: Callable[..., Node]) -> None:
    node = start(1)
    node.put(SMALL)
    rot_silently(node.file(SMALL_ID))  # rot the scrubber has not seen yet
    fresh = node.call(MsgType.VERIFY_CHUNKS, {"ids": [SMALL_ID], "max_age": 3600})
    assert fresh["good"] == [[SMALL_ID, len(SMALL)]]  # verified this recently: not re-read
    backdate(node.file(SMALL_ID), 7200)
    stale = node.call(MsgType.VERIFY_CHUNKS, {"ids": [SMALL_ID], "max_age": 3600})
    assert (stale["good"], stale["bad"]) == ([], [SMALL_ID])  # too old: re-read, found bad


def test_a_copy_modified_in_place_is_never_taken_as_verified(start: Callable[..., Node]) -> None:
    node = start(1)
    node.put(SMALL)
    corrupt(node.file(SMALL_ID))  # written to since its last check: its mtime moved on
    reply = node.call(MsgType.VERIFY_CHUNKS, {"ids": [SMALL_ID], "max_age": 3600})
    assert (reply["good"], reply["bad"]) == ([], [SMALL_ID])  # re-read, found bad, quarantined


def test_a_good_verification_counts_as_fresh(start: Callable[..., Node]) -> None:
    node = start(1)
    node.put(SMALL)
    backdate(node.file(SMALL_ID), 7200)
    assert node.call(MsgType.VERIFY_CHUNKS, {"ids": [SMALL_ID]})["good"] == [[SMALL_ID, len(SMALL)]]
    assert time.time() - node.file(SMALL_ID).stat().st_mtime < 60


def test_verify_chunks_refuses_bad_values(start: Callable[..., Node]) -> None:
    node = start(1)
    with pytest.raises(InvalidRequest):
        node.call(MsgType.VERIFY_CHUNKS, {"ids": ["../etc"]})
    with pytest.raises(InvalidRequest):
        node.call(MsgType.VERIFY_CHUNKS, {"ids": [], "max_age": -1})


# -- DELETE_CHUNKS older_than ----------------------------------------------------------------------


def test_delete_older_than_spares_a_copy_stored_since(start: Callable[..., Node]) -> None:
    node = start(1)
    node.put(DATA)
    node.put(SMALL)
    backdate(node.file(ID), 600)
    decided = time.time() - 60  # the proxy decided a minute ago; SMALL was stored after that
    assert node.call(MsgType.DELETE_CHUNKS, {"ids": [ID, SMALL_ID], "older_than": decided}) == {"deleted": 1}
    assert not node.store.has(ID) and node.store.has(SMALL_ID)
    assert node.call(MsgType.DELETE_CHUNKS, {"ids": [SMALL_ID]}) == {"deleted": 1}


# -- REPLICATE ------------------------------------------------------------------------------------


def replicate(node: Node, sources: list[dict[str, Any]], size: int = len(DATA)) -> dict[str, Any]:
    reply = node.call(MsgType.REPLICATE, {"id": ID, "size": size, "sources": sources})
    reply.pop("auth", None)
    return reply


def test_replicate_from_a_good_source(start: Callable[..., Node]) -> None:
    source, target = start(1), start(2)
    source.put(DATA)
    assert replicate(target, [source.source(ID)]) == {
        "stored": True,
        "source": 1,
        "corrupt_sources": [],
        "failed_sources": [],
    }
    assert target.file(ID).read_bytes() == DATA
    assert (target.store.count, target.store.used) == (1, len(DATA))
    # asked again, it already holds a good copy: nothing is fetched
    assert replicate(target, [source.source(ID)])["source"] is None


def test_replicate_skips_a_corrupt_and_a_dead_source(start: Callable[..., Node]) -> None:
    rotten, dead, good, target = start(1), start(3), start(4), start(2)
    rotten.put(DATA)
    corrupt(rotten.file(ID))
    good.put(DATA)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        sources = [rotten.source(ID), dead.source(ID, port=unused.getsockname()[1]), good.source(ID)]
        reply = replicate(target, sources)
    assert reply == {"stored": True, "source": 4, "corrupt_sources": [1], "failed_sources": [3]}
    assert target.file(ID).read_bytes() == DATA
    assert target.store.tmp.exists() and list(target.store.tmp.iterdir()) == []


def test_replicate_with_no_usable_source_stores_nothing(start: Callable[..., Node]) -> None:
    holder, empty, target = start(1), start(3), start(2)
    holder.put(DATA)
    forged = {**holder.source(ID), "ticket": {**holder.source(ID)["ticket"], "mac": "x" * 22}}
    reply = replicate(target, [forged, empty.source(ID)])
    assert reply == {"stored": False, "source": None, "corrupt_sources": [], "failed_sources": [1, 3]}
    assert not target.store.has(ID) and list(target.store.tmp.iterdir()) == []


def test_replicate_a_truncated_source_is_corrupt(start: Callable[..., Node]) -> None:
    short, target = start(1), start(2)
    short.put(DATA)
    short.file(ID).write_bytes(DATA[:-1])
    reply = replicate(target, [short.source(ID)])
    assert (reply["stored"], reply["corrupt_sources"]) == (False, [1])


def test_replicate_onto_a_full_disk_is_an_error(start: Callable[..., Node]) -> None:
    source = start(1)
    full = start(2, reserve=1 << 62)
    source.put(DATA)
    with pytest.raises(InsufficientStorage):
        replicate(full, [source.source(ID)])
    assert not full.store.has(ID)


def test_replicate_needs_the_cluster_secret(start: Callable[..., Node]) -> None:
    source, target = start(1), start(2)
    source.put(DATA)
    header = {"id": ID, "size": len(DATA), "sources": [source.source(ID)]}
    with target.connect() as conn:
        with pytest.raises(AuthError):
            conn.request(MsgType.REPLICATE, header)
        forged = ClusterKey(b"\x0b" * 32).sign(MsgType.REPLICATE, header, to=server_audience(2))
        with pytest.raises(AuthError):
            conn.request(MsgType.REPLICATE, forged)
    assert not target.store.has(ID)


@pytest.mark.parametrize(
    "change",
    [
        {"sources": []},
        {"size": 0},
        {"size": 1 << 40},
        {"id": "../../etc/passwd"},
        {"sources": [{"id": 1, "host": "127.0.0.1", "port": 1}]},  # no ticket
        {"sources": [{"id": 1, "host": "127.0.0.1", "port": 70000, "ticket": {}}]},
        {"sources": [{"id": 0, "host": "h", "port": 1, "ticket": {"exp": 1, "who": "w", "mac": "m"}}]},
        {"sources": [{"id": 1, "host": "", "port": 1, "ticket": {"exp": 1, "who": "w", "mac": "m"}}]},
        {
            "sources": [{"id": 2, "host": "h", "port": 1, "ticket": {"exp": 1, "who": "w", "mac": "m"}}]
        },  # itself
        {"sources": [{"id": 1, "host": "h", "port": 1, "ticket": {"exp": "1", "who": "w", "mac": "m"}}]},
        {
            "sources": [
                {"id": i, "host": "h", "port": 1, "ticket": {"exp": 1, "who": "w", "mac": "m"}}
                for i in range(3, 20)
            ]
        },
    ],
)
def test_replicate_refuses_bad_shapes(start: Callable[..., Node], change: dict[str, Any]) -> None:
    target = start(2)
    header = {"id": ID, "size": len(DATA), "sources": [], **change}
    with pytest.raises(InvalidRequest):
        target.call(MsgType.REPLICATE, header)


# -- PUT_CHUNK on a full head, PING figures --------------------------------------------------------


def test_a_head_with_no_room_says_insufficient_storage(start: Callable[..., Node]) -> None:
    full = start(1, reserve=1 << 62)
    with pytest.raises(InsufficientStorage) as caught:
        full.put(SMALL)
    assert caught.value.server is None  # its own refusal, not a server behind it
    assert full.call(MsgType.PING, {})["free"] == 0


def test_a_replica_with_no_room_is_named_in_the_error(start: Callable[..., Node]) -> None:
    head, full = start(1), start(2, reserve=1 << 62)
    chain = [{"id": 1, "host": "127.0.0.1", "port": head.server.port}]
    chain.append({"id": 2, "host": "127.0.0.1", "port": full.server.port})
    header = {"id": SMALL_ID, "size": len(SMALL), "ticket": KEY.put_ticket(SMALL_ID, chain, "test", 60)}
    with head.connect() as conn, pytest.raises(ReplicationFailed) as caught:
        conn.request(MsgType.PUT_CHUNK, header, SMALL)
    assert (caught.value.server, caught.value.cause) == (2, "insufficient_storage")
    assert head.store.has(SMALL_ID)


def test_ping_reports_free_space_less_the_reserve(start: Callable[..., Node]) -> None:
    node = start(1, reserve=1 << 20)
    figures = node.call(MsgType.PING, {})
    assert 0 < figures["free"] <= node.store.free() - (1 << 20) + (1 << 24)
    assert figures["quarantined"] == 0
