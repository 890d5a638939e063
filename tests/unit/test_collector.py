"""The chunk collector against real storage servers on loopback: pins, expiry, failed rounds, down servers.

The proxy side (catalog, registry, uploads, collector, service) is built in-process and driven through
the same door the wire uses (dispatch); chunks go to and from real storage servers over real sockets.
The collector's thread is never started: each test calls ``run_once`` and then looks at what the
servers' stores actually hold.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.cluster_auth import ClusterKey, aggregate
from common.errors import Conflict, InsufficientStorage, InvalidRequest, NotFound, StorageIOError, Unavailable
from common.frame_server import FrameServer, Request, dispatch, serve_in_thread
from common.hashing import proof_digest
from common.messages import MsgType
from common.transport import Connection
from proxy import uploads as uploads_module
from proxy.auth import token_hash
from proxy.catalog import Catalog
from proxy.collector import Collector
from proxy.ownership import new_challenge
from proxy.placement import ServerRef
from proxy.registry import Registry
from proxy.service import ProxyConfig, ProxyService
from proxy.storage_client import StorageClient
from proxy.uploads import Uploads
from servers.memory_store import MemoryChunkStore
from servers.storage_server import StorageService, make_storage_server

CHUNK = 64 * 1024
TTL = 60.0
GRACE = 30.0  # how long an aborted upload's chunks stay pinned, for a resumed upload
SESSION = "tok"
KEY = ClusterKey(b"\x07" * 32)  # the cluster secret these servers and this proxy share
SERVER_IDS = (1, 2)


def chunk(tag: int) -> bytes:
    return bytes([tag]) * CHUNK


def cid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OLD, GONE, NEW, SHARED, STRAY = (chunk(tag) for tag in range(1, 6))


@dataclass
class Proxy:
    folder: Path
    catalog: Catalog
    registry: Registry
    uploads: Uploads
    collector: Collector
    service: ProxyService
    stores: dict[int, MemoryChunkStore]
    ports: dict[int, int]


@pytest.fixture(scope="module")
def storage() -> Iterator[dict[int, tuple[StorageService, FrameServer]]]:
    """Storage servers 1 and 2 on ports the OS picks; each test gives them empty stores."""
    running: dict[int, tuple[StorageService, FrameServer]] = {}
    try:
        for i in SERVER_IDS:
            service = StorageService(i, MemoryChunkStore(), KEY)
            server = make_storage_server(service, ("127.0.0.1", 0))
            serve_in_thread(server, f"storage-{i}")
            running[i] = (service, server)
        yield running
    finally:
        for _, server in running.values():
            server.stop()


@pytest.fixture
def proxy(tmp_path: Path, storage: dict[int, tuple[StorageService, FrameServer]]) -> Iterator[Proxy]:
    catalog = Catalog(tmp_path)
    registry = Registry(dead_after=60)
    uploads = Uploads(ttl=TTL, resume_grace=GRACE)
    collector = Collector(catalog, registry, uploads, StorageClient(KEY), orphan_grace=0)
    config = ProxyConfig(chunk_size=CHUNK, replicas=2, heartbeat=1)
    service = ProxyService(catalog, registry, uploads, collector, config, KEY)
    stores: dict[int, MemoryChunkStore] = {}
    ports: dict[int, int] = {}
    for i, (storage_service, server) in storage.items():
        stores[i] = MemoryChunkStore()
        storage_service.store = stores[i]
        ports[i] = server.port
        registry.register(i, "127.0.0.1", server.port, 10**9, 0, 0)
    catalog.add_user("ana", "00", "11")
    catalog.add_session(token_hash(SESSION), "ana")
    yield Proxy(tmp_path, catalog, registry, uploads, collector, service, stores, ports)
    catalog.close()


class Clock:
    """Stands in for the time module in proxy.uploads: monotonic time a test can move on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# -- what the client and the servers do ----------------------------------------------------------
def call(p: Proxy, msg_type: MsgType, header: Mapping[str, Any], payload: bytes = b"") -> dict[str, Any]:
    request = Request(msg_type, header, len(payload), [payload] if payload else [])
    return dict(dispatch(p.service.handlers(), p.service.authenticate, request, KEY).header)


def begin(p: Proxy, name: str, *blobs: bytes) -> dict[str, Any]:
    header = {
        "session": SESSION,
        "name": name,
        "size": CHUNK * len(blobs),
        "sha1": hashlib.sha1(b"".join(blobs)).hexdigest(),
        "chunk_size": CHUNK,
        "chunks": [[cid(b), CHUNK] for b in blobs],
    }
    started = call(p, MsgType.UPLOAD_BEGIN, header)
    challenge, data = started["challenge"], {cid(b): b for b in blobs}
    proofs = [
        proof_digest(challenge["nonce"], chunk_id, data[chunk_id][offset : offset + length])
        for chunk_id, (offset, length) in zip(data, challenge["ranges"], strict=True)
    ]
    proved = call(
        p, MsgType.UPLOAD_PROVE, {"session": SESSION, "upload_id": started["upload_id"], "proofs": proofs}
    )
    return {"upload_id": started["upload_id"], "missing": proved["missing"]}


def send(started: Mapping[str, Any], *blobs: bytes) -> None:
    """PUT_CHUNK each missing chunk to the first server placed, which forwards it down the chain."""
    data = {cid(b): b for b in blobs}
    receipts: dict[int, list[str]] = {}
    for item in started["missing"]:
        head = item["servers"][0]
        with Connection.connect(head["host"], head["port"], timeout=5) as conn:
            header = {"id": item["id"], "size": item["size"], "ticket": item["ticket"]}
            reply = conn.request(MsgType.PUT_CHUNK, header, data[item["id"]])
        for server_id, receipt in reply["receipts"]:
            receipts.setdefault(server_id, []).append(receipt)
    RECEIPTS[started["upload_id"]] = [[i, aggregate(r)] for i, r in receipts.items()]


RECEIPTS: dict[str, list[list[Any]]] = {}  # upload id -> what its commit shows for the chunks sent


def commit(p: Proxy, upload_id: str) -> dict[str, Any]:
    header = {"session": SESSION, "upload_id": upload_id, "receipts": RECEIPTS.get(upload_id, [])}
    return call(p, MsgType.UPLOAD_COMMIT, header)


def upload(p: Proxy, name: str, *blobs: bytes) -> None:
    started = begin(p, name, *blobs)
    send(started, *blobs)
    commit(p, started["upload_id"])


def delete(p: Proxy, name: str) -> int:
    return int(call(p, MsgType.DELETE, {"session": SESSION, "name": name})["freed_chunks"])


def end(p: Proxy, how: str, upload_id: str) -> None:
    if how == "finish":
        p.uploads.finish(upload_id)
    elif how == "commit":
        commit(p, upload_id)
    else:
        call(p, MsgType.UPLOAD_ABORT, {"session": SESSION, "upload_id": upload_id, "unreachable": []})


def leave_on(store: MemoryChunkStore, data: bytes) -> None:
    """A copy the catalog never recorded (what an upload that died long ago leaves behind)."""
    with store.writer(cid(data), len(data)) as writer:
        writer.write(data)
        writer.commit()


def register_again(p: Proxy, server_id: int) -> None:
    """SERVER_REGISTER from a server that came back, with the inventory of what its store holds."""
    store = p.stores[server_id]
    ids = list(store.ids())
    header = {
        "id": server_id,
        "host": "127.0.0.1",
        "port": p.ports[server_id],
        "capacity": 10**9,
        "used": store.used,
        "chunks": len(ids),
        "cluster_id": p.catalog.cluster_id,
    }
    inventory = b"".join(bytes.fromhex(c) for c in ids)
    header["inventory_sha256"] = hashlib.sha256(inventory).hexdigest()
    call(p, MsgType.SERVER_REGISTER, KEY.sign(MsgType.SERVER_REGISTER, header), inventory)


def holders(p: Proxy, data: bytes) -> set[int]:
    """The servers whose stores hold the chunk right now."""
    return {i for i, store in p.stores.items() if store.has(cid(data))}


# -- pins -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["finish", "commit", "abort"])
def test_a_freed_chunk_an_upload_relies_on_is_kept_until_the_upload_ends(proxy: Proxy, how: str) -> None:
    upload(proxy, "old.bin", OLD, GONE)
    started = begin(proxy, "new.bin", OLD)
    assert started["missing"] == []  # dedup: the new file relies on the stored copies of OLD
    assert delete(proxy, "old.bin") == 2
    proxy.collector.run_once()
    assert holders(proxy, GONE) == set() and proxy.catalog.chunk(cid(GONE)) is None  # not pinned: freed
    assert holders(proxy, OLD) == {1, 2} and proxy.catalog.chunk(cid(OLD)) is not None
    proxy.collector.run_once()  # still pinned in the next round
    assert holders(proxy, OLD) == {1, 2} and proxy.catalog.chunk(cid(OLD)) is not None
    end(proxy, how, started["upload_id"])
    proxy.collector.run_once()
    if how == "commit":  # new.bin uses OLD now: nothing to free
        assert holders(proxy, OLD) == {1, 2}
        assert sorted(proxy.catalog.chunk_servers(cid(OLD))) == [1, 2]
        assert proxy.catalog.file("ana", "new.bin") is not None
    else:  # unreferenced and no longer pinned: freed on every server, then dropped from the catalog
        assert holders(proxy, OLD) == set()
        assert proxy.catalog.chunk(cid(OLD)) is None


@pytest.mark.parametrize("how", ["finish", "commit", "abort"])
def test_an_orphan_an_upload_placed_is_kept_until_the_upload_ends(
    proxy: Proxy, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(uploads_module, "time", clock)
    started = begin(proxy, "new.bin", NEW)
    assert {s["id"] for s in started["missing"][0]["servers"]} == {1, 2}
    send(started, NEW)
    leave_on(proxy.stores[1], STRAY)
    for server_id in SERVER_IDS:  # their inventories list NEW, which the catalog does not know yet
        register_again(proxy, server_id)
    proxy.collector.run_once()
    assert holders(proxy, STRAY) == set()  # a true orphan goes
    assert holders(proxy, NEW) == {1, 2}  # the upload's copies stay
    proxy.collector.run_once()
    assert holders(proxy, NEW) == {1, 2}
    end(proxy, how, started["upload_id"])
    proxy.collector.run_once()
    if how == "abort":  # parked: kept for a resumed upload until the grace is over
        assert holders(proxy, NEW) == {1, 2}
        clock.advance(GRACE + 1)
        proxy.collector.run_once()
    if how == "commit":  # the catalog knows NEW now: no longer an orphan
        assert holders(proxy, NEW) == {1, 2}
        assert sorted(proxy.catalog.chunk_servers(cid(NEW))) == [1, 2]
    else:
        assert holders(proxy, NEW) == set()
        assert proxy.catalog.chunk(cid(NEW)) is None


# -- expiry ---------------------------------------------------------------------------------------
def test_an_expired_upload_frees_what_it_placed(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(uploads_module, "time", clock)
    started = begin(proxy, "late.bin", NEW, SHARED)
    assert {item["id"] for item in started["missing"]} == {cid(NEW), cid(SHARED)}
    send(started, NEW, SHARED)
    upload(proxy, "other.bin", SHARED)  # meanwhile another upload of the same bytes commits
    clock.advance(TTL + 1)
    with pytest.raises(Conflict, match="expired"):
        commit(proxy, started["upload_id"])
    assert holders(proxy, NEW) == {1, 2}  # nothing is freed before the collector's round
    proxy.collector.run_once()
    assert holders(proxy, NEW) == set()  # placed by the expired upload only: freed where it was placed
    assert not proxy.uploads.pinned(cid(NEW))
    assert holders(proxy, SHARED) == {1, 2}  # the catalog knows it now: kept
    assert proxy.catalog.file("ana", "other.bin") is not None
    with pytest.raises(NotFound, match="unknown upload"):
        commit(proxy, started["upload_id"])
    assert proxy.catalog.file("ana", "late.bin") is None


# -- failures -------------------------------------------------------------------------------------
def test_a_round_that_cannot_journal_loses_nothing(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    upload(proxy, "old.bin", OLD)
    delete(proxy, "old.bin")
    leave_on(proxy.stores[2], STRAY)
    proxy.collector.note_inventory(2, [cid(STRAY)])
    failures = {"left": 1}

    def full_disk(fd: int) -> None:  # the next journal append hits a full disk (and is rolled back)
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("proxy.journal.os.fsync", full_disk)
    with pytest.raises(InsufficientStorage, match="disk is full"):
        proxy.collector.run_once()
    assert failures["left"] == 0
    assert proxy.catalog.chunk(cid(OLD)) is not None  # its chunk_del was not journaled, so not applied
    assert holders(proxy, STRAY) == {2}  # the round stopped before the orphans
    proxy.collector.run_once()  # the disk has room again: the same work, done
    assert holders(proxy, OLD) == set() and proxy.catalog.chunk(cid(OLD)) is None
    assert holders(proxy, STRAY) == set()
    assert Catalog(proxy.folder).chunk(cid(OLD)) is None  # and durably so


def test_a_server_that_fails_to_delete_keeps_its_copy_and_the_round_goes_on(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    upload(proxy, "old.bin", OLD)
    leave_on(proxy.stores[1], STRAY)
    proxy.collector.note_inventory(1, [cid(STRAY)])

    def bad_disk(chunk_ids: object) -> int:
        raise StorageIOError("disk error while trying to delete a chunk: Input/output error")

    monkeypatch.setattr(proxy.stores[2], "delete", bad_disk)  # server 2 answers io_error
    delete(proxy, "old.bin")
    with caplog.at_level(logging.WARNING, logger="proxy.collector"):
        proxy.collector.run_once()  # logged, not raised
    assert "could not free chunks on server 2" in caplog.text
    assert holders(proxy, OLD) == {2}
    assert proxy.catalog.chunk(cid(OLD)) is None  # dropped from the catalog all the same (PROTOCOL §7.5)
    assert holders(proxy, STRAY) == set()  # and the round went on to the orphans
    monkeypatch.undo()  # server 2's disk is replaced; it restarts and registers again
    register_again(proxy, 2)
    proxy.collector.run_once()
    assert holders(proxy, OLD) == set()


def test_a_down_server_is_skipped_and_frees_its_copy_when_it_registers_again(proxy: Proxy) -> None:
    upload(proxy, "old.bin", OLD)
    proxy.registry.mark_down(2)  # as far as the proxy knows, server 2 is gone
    delete(proxy, "old.bin")
    proxy.collector.run_once()
    assert holders(proxy, OLD) == {2}  # server 2 was not asked
    assert proxy.catalog.chunk(cid(OLD)) is None  # the catalog drops the chunk anyway (PROTOCOL §7.5)
    register_again(proxy, 2)  # back: its inventory lists OLD, unknown to the catalog now
    proxy.collector.run_once()
    assert holders(proxy, OLD) == set()


# -- no network under a lock (issue 7) ----------------------------------------------------------------
def test_a_hung_server_delays_the_collector_only(proxy: Proxy) -> None:
    """Server 3 accepts connections and never answers (a SIGSTOPped process looks like that).  While
    the collector waits on it, another user's upload begins, proves and commits at once."""
    hung = socket.create_server(("127.0.0.1", 0))
    try:
        proxy.registry.register(3, "127.0.0.1", hung.getsockname()[1], 10**9, 0, 0)
        leave_on(proxy.stores[1], STRAY)
        proxy.collector.note_inventory(3, [cid(GONE)])  # an orphan on the hung server
        proxy.collector.note_inventory(1, [cid(STRAY)])
        collecting = threading.Thread(target=proxy.collector.run_once)
        started = time.monotonic()
        collecting.start()
        time.sleep(0.2)  # the collector is now waiting on server 3 (5 s timeout)
        assert collecting.is_alive()
        upload(proxy, "meanwhile.bin", NEW)  # UPLOAD_BEGIN, UPLOAD_PROVE, UPLOAD_COMMIT
        took = time.monotonic() - started
        assert proxy.catalog.file("ana", "meanwhile.bin") is not None
        assert took < 3, f"the upload waited {took:.1f} s behind the collector"
        collecting.join(timeout=15)
        assert holders(proxy, STRAY) == set()  # and the collector did its work elsewhere
    finally:
        hung.close()


def test_a_copy_written_after_the_decision_to_delete_survives(proxy: Proxy) -> None:
    """DELETE_CHUNKS carries the moment of the decision: a copy stored again since is kept."""
    leave_on(proxy.stores[1], STRAY)
    decided = time.time()
    time.sleep(0.01)
    leave_on(proxy.stores[1], STRAY)  # an upload stores the same bytes again, after the decision
    proxy.collector.storage.delete_chunks(proxy.registry.get(1).ref, [cid(STRAY)], older_than=decided)  # type: ignore[union-attr]
    assert holders(proxy, STRAY) == {1}
    proxy.collector.storage.delete_chunks(proxy.registry.get(1).ref, [cid(STRAY)], older_than=time.time() + 1)  # type: ignore[union-attr]
    assert holders(proxy, STRAY) == set()


def test_an_orphan_waits_out_its_grace_period(proxy: Proxy) -> None:
    proxy.collector.orphan_grace = 60
    leave_on(proxy.stores[1], STRAY)
    proxy.collector.note_inventory(1, [cid(STRAY)])
    proxy.collector.run_once()
    assert holders(proxy, STRAY) == {1}  # seen once: maybe an upload's chunk the proxy lost track of
    proxy.collector.note_inventory(1, [cid(STRAY)])  # seen again in the next inventory
    proxy.collector.orphan_grace = 0  # ... and now older than the grace period
    proxy.collector.run_once()
    assert holders(proxy, STRAY) == set()


def test_a_leased_chunk_is_not_collected(proxy: Proxy) -> None:
    upload(proxy, "old.bin", OLD)
    located = call(proxy, MsgType.LOCATE, {"session": SESSION, "name": "old.bin"})
    delete(proxy, "old.bin")
    proxy.collector.run_once()
    assert holders(proxy, OLD) == {1, 2}  # a download holds it
    call(proxy, MsgType.RELEASE, {"lease": located["lease"]})
    proxy.collector.queue_freed([cid(OLD)])
    proxy.collector.run_once()
    assert holders(proxy, OLD) == set()


def test_a_server_that_does_not_answer_the_proxy_is_counted_down_at_once(proxy: Proxy) -> None:
    """Nobody else waits on it until its next heartbeat says it is back."""
    told: list[int] = []
    client = StorageClient(KEY, timeout=0.3, on_unreachable=told.append)
    hung = socket.create_server(("127.0.0.1", 0))
    port = hung.getsockname()[1]
    try:
        with pytest.raises(Unavailable):
            client.has_chunks(ServerRef(7, "127.0.0.1", port), [cid(OLD)])
    finally:
        hung.close()
    with pytest.raises(Unavailable):
        client.has_chunks(ServerRef(8, "127.0.0.1", port), [cid(OLD)])  # refused
    assert told == [7, 8]
    assert client.has_chunks(ServerRef(1, "127.0.0.1", proxy.ports[1]), [cid(OLD)]) == set()
    with pytest.raises(InvalidRequest):  # an ERROR reply is an answer: the server is alive
        client.has_chunks(ServerRef(1, "127.0.0.1", proxy.ports[1]), ["not a chunk id"])
    assert told == [7, 8]


# -- resume: what an interrupted upload stored is reused, on proof, and kept only for the grace -----
def abort(p: Proxy, upload_id: str) -> None:
    call(p, MsgType.UPLOAD_ABORT, {"session": SESSION, "upload_id": upload_id, "unreachable": []})


def send_only(started: Mapping[str, Any], *blobs: bytes) -> None:
    """Store some of the chunks, as an upload cut short does (no commit follows)."""
    wanted = {cid(b) for b in blobs}
    send({**started, "missing": [m for m in started["missing"] if m["id"] in wanted]}, *blobs)


@pytest.mark.parametrize("how", ["aborted", "client died"])
def test_an_interrupted_upload_run_again_sends_only_what_was_not_stored(
    proxy: Proxy, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(uploads_module, "time", clock)
    first = begin(proxy, "big.bin", NEW, SHARED)
    send_only(first, NEW)
    if how == "aborted":
        abort(proxy, first["upload_id"])
        assert proxy.uploads.parked() == 1
    again = begin(proxy, "big.bin", NEW, SHARED)
    assert [m["id"] for m in again["missing"]] == [cid(SHARED)]  # NEW is proven, vouched for: reused
    send(again, SHARED)
    assert commit(proxy, again["upload_id"])["file"]["name"] == "big.bin"
    assert sorted(proxy.catalog.chunk_servers(cid(NEW))) == [1, 2]  # the reused copies, recorded
    clock.advance(TTL + 1)  # the first upload's grace (or TTL) is over: nothing a file uses goes
    proxy.collector.run_once()
    assert holders(proxy, NEW) == {1, 2} and holders(proxy, SHARED) == {1, 2}
    assert proxy.uploads.parked() == 0 and not proxy.uploads.pinned(cid(NEW))


def test_reuse_needs_the_proof_and_every_copy(proxy: Proxy) -> None:
    first = begin(proxy, "a.bin", NEW, SHARED)
    send_only(first, NEW, SHARED)
    abort(proxy, first["upload_id"])
    started = call(
        proxy,
        MsgType.UPLOAD_BEGIN,
        {
            "session": SESSION,
            "name": "b.bin",
            "size": CHUNK,
            "sha1": hashlib.sha1(NEW).hexdigest(),
            "chunk_size": CHUNK,
            "chunks": [[cid(NEW), CHUNK]],
        },
    )
    wrong = [proof_digest(started["challenge"]["nonce"], cid(NEW), b"guessed")]  # knows the hash only
    proved = call(
        proxy, MsgType.UPLOAD_PROVE, {"session": SESSION, "upload_id": started["upload_id"], "proofs": wrong}
    )
    assert [m["id"] for m in proved["missing"]] == [cid(NEW)]  # must send it
    proxy.stores[2].delete([cid(SHARED)])  # one of SHARED's two copies is gone
    again = begin(proxy, "c.bin", SHARED)
    assert [m["id"] for m in again["missing"]] == [cid(SHARED)]  # one copy is not a whole upload's worth


def test_a_parked_upload_frees_its_chunks_after_the_grace(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(uploads_module, "time", clock)
    first = begin(proxy, "a.bin", NEW)
    send(first, NEW)
    abort(proxy, first["upload_id"])
    proxy.collector.run_once()
    assert holders(proxy, NEW) == {1, 2} and proxy.uploads.pinned(cid(NEW))
    clock.advance(GRACE - 1)
    proxy.collector.run_once()
    assert holders(proxy, NEW) == {1, 2}
    clock.advance(2)
    proxy.collector.run_once()
    assert holders(proxy, NEW) == set() and proxy.uploads.placed_on(cid(NEW)) == set()
    assert begin(proxy, "a.bin", NEW)["missing"][0]["id"] == cid(NEW)  # nothing left to reuse


def test_no_grace_frees_an_aborted_upload_at_once_and_parking_is_bounded(proxy: Proxy) -> None:
    for n in range(uploads_module.MAX_PARKED_PER_OWNER + 2):  # placed, never sent: parked all the same
        abort(proxy, begin(proxy, f"f{n}.bin", chunk(100 + n))["upload_id"])
    assert proxy.uploads.parked() == uploads_module.MAX_PARKED_PER_OWNER
    assert not proxy.uploads.pinned(cid(chunk(100))) and not proxy.uploads.pinned(cid(chunk(101)))
    assert proxy.uploads.pinned(cid(chunk(102)))  # the oldest went first
    proxy.uploads.resume_grace = 0
    first = begin(proxy, "a.bin", NEW)
    send(first, NEW)
    abort(proxy, first["upload_id"])
    proxy.collector.run_once()
    assert holders(proxy, NEW) == set()


def test_the_index_of_placed_copies_follows_placements_replacements_and_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(uploads_module, "time", clock)
    uploads = Uploads(ttl=TTL, resume_grace=GRACE)
    one, two, three = (ServerRef(i, "127.0.0.1", 1) for i in (1, 2, 3))
    new, shared = cid(NEW), cid(SHARED)
    a = uploads.begin("ana", "a.bin", 2 * CHUNK, "0" * 40, [[new, CHUNK], [shared, CHUNK]], new_challenge({}))
    b = uploads.begin("bob", "b.bin", CHUNK, "0" * 40, [[new, CHUNK]], new_challenge({}))
    uploads.place(a.id, {new: [one, two]}, {shared: [3]})
    uploads.place(b.id, {new: [one, three]})
    assert uploads.placed_on(new) == {1, 2, 3} and uploads.placed_on(shared) == {3}
    uploads.re_place(a.id, new, [three, two])  # server 1 failed: the old head may still hold a copy
    assert uploads.placed_on(new) == {1, 2, 3}
    uploads.finish(b.id)
    assert uploads.placed_on(new) == {1, 2, 3}  # a's chains still name all three
    assert uploads.park(a.id) == [] and uploads.pinned(shared) and uploads.placed_on(new) == {1, 2, 3}
    assert [u.id for u in uploads.park(a.id)] == []  # parked uploads cannot be aborted twice
    clock.advance(GRACE + 1)
    assert [u.id for u in uploads.expired()] == [a.id]
    assert uploads.placed_on(new) == set() and not uploads.pinned(new) and not uploads.pinned(shared)
