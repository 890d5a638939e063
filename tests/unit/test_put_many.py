"""PUT_CHUNKS: many small chunks of one chain in one request, committed as one group.

Real storage servers (StorageService over ChunkStore, on a FrameServer on 127.0.0.1) and real
sockets.  What docs/PROTOCOL.md promises for PUT_CHUNKS: every chunk verified, fsynced and in place
on every server of the chain before its receipt is given; each chunk succeeding or failing on its
own; one bad ticket refusing the whole request before a byte is written; the connection going on
after an error; the number of temp files held open bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.put_many import GROUP_CHUNK_SIZE, GROUP_CHUNKS, Part, group
from common import atomic
from common.errors import Forbidden, InvalidRequest, Unavailable
from common.limits import MAX_CHUNKS_PER_PUT
from common.messages import MsgType, put_results
from common.transport import Connection
from servers import chunk_store
from servers.put_many import Room
from tests.unit import test_storage_faults as faults
from tests.unit.test_storage_faults import KEY, Node

Chunks = list[tuple[str, bytes]]


start = faults.start  # the same fixture: storage servers on 127.0.0.1 (port 0), all stopped after


def chunks(n: int, size: int = 3000) -> Chunks:
    out = []
    for i in range(n):
        data = os.urandom(size + i)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


def entries(chain: list[Node], items: Chunks, who: str = "upload:test") -> list[dict[str, Any]]:
    refs = [node.ref for node in chain]
    return [
        {"id": cid, "size": len(data), "ticket": KEY.put_ticket(cid, refs, who, 60)} for cid, data in items
    ]


def put_many(conn: Connection, header_chunks: list[dict[str, Any]], payload: bytes) -> list[Any]:
    conn.send(MsgType.PUT_CHUNKS, {"chunks": header_chunks}, payload)
    return put_results(conn.read_reply(MsgType.PUT_CHUNKS), len(header_chunks))


def test_every_chunk_is_stored_down_the_chain_with_a_receipt_from_each_server(
    start: Callable[[int], Node],
) -> None:
    head, replica = start(1), start(2)
    items = chunks(20)
    sent = entries([head, replica], [items[0], *items])  # a chunk twice in one request is fine
    with head.connect() as conn:
        results = put_many(conn, sent, b"".join(data for _, data in [items[0], *items]))
        for (cid, _), result in zip([items[0], *items], results, strict=True):
            assert result == [
                [1, KEY.receipt(cid, 1, "upload:test")],
                [2, KEY.receipt(cid, 2, "upload:test")],
            ]
        assert conn.request(MsgType.PUT_CHUNKS, {"chunks": entries([head, replica], items[:1])}, items[0][1])
    for node in (head, replica):
        assert all(node.holds(cid, data) for cid, data in items)
        assert node.temp_files() == []
        assert node.store.count == len(items)


def test_receipts_are_bound_to_each_chunks_own_ticket_holder(start: Callable[[int], Node]) -> None:
    head = start(1)
    items = chunks(2)
    sent = entries([head], items[:1], "upload:aaa") + entries([head], items[1:], "upload:bbb")
    with head.connect() as conn:
        results = put_many(conn, sent, b"".join(data for _, data in items))
    assert results == [
        [[1, KEY.receipt(items[0][0], 1, "upload:aaa")]],
        [[1, KEY.receipt(items[1][0], 1, "upload:bbb")]],
    ]


def test_a_chunk_whose_bytes_are_wrong_fails_alone(start: Callable[[int], Node]) -> None:
    head, replica = start(1), start(2)
    items = chunks(5)
    sent = entries([head, replica], items)
    payload = bytearray(b"".join(data for _, data in items))
    payload[len(items[0][1]) + len(items[1][1]) + 7] ^= 1  # a bit of chunk 2 flips on the way
    with head.connect() as conn:
        results = put_many(conn, sent, bytes(payload))
        assert [isinstance(r, list) for r in results] == [True, True, False, True, True]
        assert not isinstance(results[2], list) and results[2].code == "corrupt"
        assert put(conn, [head, replica], items[2:3])  # the same connection goes on
    for node in (head, replica):
        assert node.temp_files() == []
        assert all(node.holds(cid, data) for cid, data in items)


def put(conn: Connection, chain: list[Node], items: Chunks) -> list[Any]:
    return put_many(conn, entries(chain, items), b"".join(data for _, data in items))


@pytest.mark.parametrize("forge", ["mac", "other chunk", "other server", "expired"])
def test_one_bad_ticket_refuses_the_whole_request_before_anything_is_written(
    start: Callable[[int], Node], forge: str
) -> None:
    head, other = start(1), start(2)
    items = chunks(4)
    sent = entries([head], items)
    bad = sent[2]["ticket"]
    if forge == "mac":
        bad["mac"] = KEY.put_ticket(items[1][0], [head.ref], "upload:test", 60)["mac"]
    elif forge == "other chunk":
        sent[2]["ticket"] = sent[1]["ticket"]
    elif forge == "other server":
        sent[2]["ticket"] = KEY.put_ticket(items[2][0], [other.ref], "upload:test", 60)
    else:
        sent[2]["ticket"] = KEY.put_ticket(items[2][0], [head.ref], "upload:test", -5)
    with head.connect() as conn:
        with pytest.raises(Forbidden):
            put_many(conn, sent, b"".join(data for _, data in items))
        assert head.store.count == 0 and head.temp_files() == []
        assert put(conn, [head], items)  # the payload was drained: the connection goes on


def test_chunks_for_different_chains_or_sizes_that_do_not_add_up_are_refused(
    start: Callable[[int], Node],
) -> None:
    head, second, third = start(1), start(2), start(3)
    items = chunks(2)
    payload = b"".join(data for _, data in items)
    mixed = entries([head, second], items[:1]) + entries([head, third], items[1:])
    short = entries([head], items)
    short[1]["size"] -= 1
    many = entries([head], chunks(1)) * (MAX_CHUNKS_PER_PUT + 1)
    with head.connect() as conn:
        with pytest.raises(InvalidRequest, match="same chain"):
            put_many(conn, mixed, payload)
        with pytest.raises(InvalidRequest, match="add up"):
            put_many(conn, short, payload)
        with pytest.raises(InvalidRequest, match="chunks must be a list"):
            put_many(conn, many, b"x" * sum(e["size"] for e in many))
    for node in (head, second, third):
        assert node.store.count == 0 and node.temp_files() == []


def test_a_replica_that_is_down_fails_every_chunk_and_names_itself(start: Callable[[int], Node]) -> None:
    head, replica = start(1), start(2)
    replica.server.stop()
    items = chunks(3)
    with head.connect() as conn:
        results = put(conn, [head, replica], items)
    for result in results:
        assert not isinstance(result, list)
        assert (result.code, result.server) == ("replication_failed", 2)
        assert "replica on server 2" in result.message
    assert all(head.holds(cid, data) for cid, data in items)  # the head's verified copies stay


def test_a_disk_fault_on_one_chunk_fails_that_chunk_alone(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head = start(1)
    items = chunks(6)
    victim = items[3][0]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if victim in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with head.connect() as conn:
        results = put(conn, [head], items)
    assert [isinstance(r, list) for r in results] == [True, True, True, False, True, True]
    assert not isinstance(results[3], list) and results[3].code == "io_error"
    assert not head.store.has(victim) and head.temp_files() == []
    assert head.store.count == 5


def test_the_group_fsyncs_every_chunk_before_renaming_any_and_each_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = chunk_store.ChunkStore(tmp_path / "ServerFiles")
    items = chunks(8)
    events = record_fsyncs_and_renames(monkeypatch)
    writers = []
    for cid, data in items:
        writer = store.writer(cid, len(data))
        writer.write(data)
        writers.append(writer)
    assert store.commit_all(writers) == [None] * len(items)
    kinds = [kind for kind, _ in events]
    first_rename = kinds.index("rename")
    synced = {
        path.rsplit("/", 1)[1].split(".")[0]
        for kind, path in events[:first_rename]
        if kind == "fsync" and path.startswith(str(store.tmp))
    }
    assert synced == {cid for cid, _ in items}  # every temp file durable before any is named
    root = tmp_path / "ServerFiles"
    for cid, _ in items:  # each fan-out folder fsynced once, after the rename into it
        folder = str(root / cid[:2])
        assert events.count(("fsync", folder)) == 1
        assert events.index(("rename", str(root / cid[:2] / cid))) < events.index(("fsync", folder))
    assert kinds[-1] == "fsync"
    assert all(store.has(cid) for cid, _ in items) and list(store.tmp.iterdir()) == []


def record_fsyncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record each fsync (with the path it was of) and each rename (with its destination)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def record_disk_events(monkeypatch: pytest.MonkeyPatch, fail_flush: bool = False) -> list[tuple[str, str]]:
    """Record each filesystem flush, fsync and rename (the flushes made to fail if ``fail_flush``)."""
    real_flush = atomic._SYNCFS
    if real_flush is None:
        pytest.skip("no trusted syncfs here (Linux 5.8 or later): every group is fsynced chunk by chunk")
    events = record_fsyncs_and_renames(monkeypatch)

    def syncfs(fd: int) -> int:
        events.append(("flush", ""))
        if fail_flush:
            ctypes.set_errno(errno.EIO)
            return -1
        return real_flush(fd)

    monkeypatch.setattr(atomic, "_SYNCFS", syncfs)
    return events


def test_a_big_group_is_made_durable_by_two_flushes_data_before_any_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = chunk_store.ChunkStore(tmp_path / "ServerFiles")
    items = chunks(chunk_store.FLUSH_FROM + 2)
    assert store.group_flush(chunk_store.FLUSH_FROM - 1) is None  # too few: a fsync each
    events = record_disk_events(monkeypatch)
    flush = store.group_flush(len(items))  # opened before the first byte is written
    assert flush is not None
    try:
        writers = []
        for cid, data in items:
            writer = store.writer(cid, len(data))
            writer.write(data)
            writers.append(writer)
        assert store.commit_all(writers, flush) == [None] * len(items)
    finally:
        flush.close()
    made = ("fsync", str(store.root))  # a fan-out folder made for the first time: the root fsynced
    kinds = [kind for kind, path in events if (kind, path) != made]
    assert kinds == ["flush"] + ["rename"] * len(items) + ["flush"]  # no fsync of a chunk or a folder
    assert all(store.has(cid) for cid, _ in items) and list(store.tmp.iterdir()) == []


def test_a_flush_that_fails_falls_back_to_fsyncs_and_a_disk_fault_still_fails_its_chunk_alone(
    start: Callable[[int], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    head, replica = start(1), start(2)
    items = chunks(chunk_store.FLUSH_FROM + 2)
    victim = items[3][0]
    events = record_disk_events(monkeypatch, fail_flush=True)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if victim in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)  # over record_disk_events' own
    with head.connect() as conn:
        results = put(conn, [head, replica], items)
    flushes = [kind for kind, _ in events].count("flush")
    assert flushes == 2  # one try on each server, then chunk by chunk
    assert [isinstance(r, list) for r in results] == [i != 3 for i in range(len(items))]
    assert not isinstance(results[3], list) and results[3].code == "io_error"
    assert not head.store.has(victim) and head.temp_files() == [] and replica.temp_files() == []
    assert head.store.count == len(items) - 1
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.add(os.readlink(f"/proc/self/fd/{fd}"))
    assert not held & {str(head.store.tmp), str(replica.store.tmp)}  # each flush's descriptor closed


def test_room_bounds_the_temp_files_held_open_and_a_request_that_finds_none_is_unavailable(
    start: Callable[[int], Node],
) -> None:
    room = Room(capacity=4, wait=0.2)
    room.take(3)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        room.take(2)  # only 1 free: waits its 0.2 s, then gives up
    assert time.monotonic() - started >= 0.15
    with pytest.raises(Unavailable):
        room.take(5)  # more than there will ever be: at once
    threading.Timer(0.05, room.give_back, args=(3,)).start()
    room.take(4)  # woken when the others give theirs back
    room.give_back(4)

    head = start(1)
    head.server.handlers[MsgType.PUT_CHUNKS].__self__.room = Room(capacity=2, wait=0.05)  # type: ignore[attr-defined]
    items = chunks(3)
    with head.connect() as conn:
        with pytest.raises(Unavailable):
            put(conn, [head], items)
        assert head.store.count == 0 and head.temp_files() == []
        assert len(put(conn, [head], items[:2])) == 2  # within the bound, on the same connection


def test_the_client_groups_small_chunks_by_chain_within_every_bound() -> None:
    chains = [
        [{"id": a, "host": "127.0.0.1", "port": 7000 + a}, {"id": b, "host": "127.0.0.1", "port": 7000 + b}]
        for a, b in [(1, 2), (2, 1), (1, 3)]
    ]
    parts: list[Part[int]] = []
    for i in range(300):
        size = GROUP_CHUNK_SIZE + 1 if i % 50 == 7 else 1000 + i
        item = {"id": f"{i:064x}", "size": size, "servers": chains[i % 3], "ticket": {"mac": "x" * 22}}
        parts.append(Part(i, item, io.BytesIO(), 0))
    parts.append(Part(300, {**parts[0].item, "servers": chains[0][:1]}, io.BytesIO(), 0))  # its chain alone
    groups, alone = group(parts, max_bytes=40_000)
    assert sorted([p.owner for g in groups for p in g] + [p.owner for p in alone]) == list(range(301))
    for members in groups:
        assert 2 <= len(members) <= GROUP_CHUNKS
        assert sum(p.size for p in members) <= 40_000
        assert len({tuple(s["id"] for s in p.item["servers"]) for p in members}) == 1
    assert {p.owner for p in alone} >= {i for i in range(300) if i % 50 == 7} | {300}
    assert all(p.size > GROUP_CHUNK_SIZE or p.owner == 300 for p in alone)


def test_a_sender_that_vanishes_mid_payload_leaves_no_temp_file_anywhere(
    start: Callable[[int], Node],
) -> None:
    head, replica = start(1), start(2)
    items = chunks(4)
    payload = b"".join(data for _, data in items)
    conn = head.connect()
    conn.send_head(MsgType.PUT_CHUNKS, {"chunks": entries([head, replica], items)}, len(payload))
    conn.send_piece(payload[: len(items[0][1]) + len(items[1][1]) + 100])  # two chunks and a bit
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(head.temp_files()) < 3:  # the third chunk is begun
        time.sleep(0.01)
    conn.close()
    while time.monotonic() < deadline and (head.server._live or replica.server._live):
        time.sleep(0.01)  # the head has seen the sender go, and the replica the head cut it short
    assert head.temp_files() == [] and replica.temp_files() == []
    assert head.store.count == 0 and replica.store.count == 0
